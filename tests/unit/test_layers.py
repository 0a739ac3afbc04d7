"""Layers point one way: the settings and the jail's daemon-side handle load nothing above them.

Each check imports one module in a fresh interpreter and lists what came along.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

PARENT_PATH = re.compile(r"(?<!\.)\.\./")  # "../x", not the "..." of "HOST:PORT,.../SERVICE"


def loaded_by(module: str) -> set[str]:
    """Every module a fresh interpreter has loaded after `import module`."""
    program = f"import sys, json; import {module}; print(json.dumps(sorted(sys.modules)))"
    ran = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True
    )
    return set(json.loads(ran.stdout))


def test_loading_the_settings_loads_no_telemetry_grpc_redis_or_jail_launch() -> None:
    loaded = loaded_by("sandboxd.config")
    heavy = ("opentelemetry", "grpc", "redis", "google.protobuf", "sandbox_client", "prctl")
    assert sorted(m for m in loaded if m.startswith(heavy)) == []
    ours = {m for m in loaded if m.startswith("sandboxd")}
    assert ours <= {
        "sandboxd",
        "sandboxd.config",
        "sandboxd.egress",
        "sandboxd.egress.addresses",
        "sandboxd.egress.hosts",
        "sandboxd.egress.policy",
        "sandboxd.egress.records",
        "sandboxd.exporters",
        "sandboxd.jail",
        "sandboxd.jail.spec",
        "sandboxd.limits",
        "sandboxd.listen",
        "sandboxd.tenants",
        "sandboxd.turns",
    }


@pytest.mark.parametrize("child", ["sandboxd.jail.forkserver", "sandboxd.jail.launch", "prctl"])
def test_the_jail_handle_does_not_load_the_fork_servers_child_code(child: str) -> None:
    assert child not in loaded_by("sandboxd.jail.handle")


def test_readme_and_docs_point_nowhere_outside_the_repository() -> None:
    root = Path(__file__).resolve().parents[2]
    pages = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    outside = [f"{page.name}: {line}" for page in pages for line in page.read_text().splitlines()
               if PARENT_PATH.search(line)]  # fmt: skip
    assert outside == []
