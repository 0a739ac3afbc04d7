"""A real daemon for the client's own tests, which import nothing of the daemon.

These tests also run in a virtual environment that has only the client installed (see
scripts/test): the daemon is then the `sandboxd` program of the project's .venv, named by
SANDBOX_DAEMON_PROGRAM, and runs in its own process, as it would for any orchestrator.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sandbox_client import SandboxClient

REPO = Path(__file__).resolve().parents[2]
# Jails of this daemon run as host uids from here on (other test daemons use other ranges).
_JAIL_SETTINGS = {"SANDBOXD_UID_BASE": "520000", "SANDBOXD_POOL_MAX": "8"}
# A tenant allowed one execution at a time and none waiting: the second one is refused.
NARROW_TENANT = "narrow"
_SETTINGS = f"""
[tenants.{NARROW_TENANT}]
max_concurrent = 1
max_queued = 0
"""


def _daemon_program() -> list[str]:
    """`sandboxd`: SANDBOX_DAEMON_PROGRAM, else the project's .venv, else the one on PATH."""
    named = os.environ.get("SANDBOX_DAEMON_PROGRAM") or str(REPO / ".venv" / "bin" / "sandboxd")
    if os.access(named, os.X_OK):
        return [named]
    found = shutil.which("sandboxd")
    if found is None:
        pytest.fail("no sandboxd program: set SANDBOX_DAEMON_PROGRAM or run scripts/setup")
    return [found]


@pytest.fixture(scope="session")
def daemon_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`sandboxd serve` on a free loopback port, for the whole session; its address."""
    settings = tmp_path_factory.mktemp("daemon") / "sandboxd.toml"
    settings.write_text(_SETTINGS)
    argv = [*_daemon_program(), "serve", "--listen", "127.0.0.1:0", "--pool-size", "2"]
    process = subprocess.Popen(
        [*argv, "--config", str(settings)],
        stdout=subprocess.PIPE,
        stderr=sys.stderr,
        text=True,
        env={**os.environ, **_JAIL_SETTINGS},
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("sandboxd: serving on "):
        process.kill()
        pytest.fail(f"the daemon did not start: {line!r} (exit {process.wait()})")
    yield line.rsplit(" ", 1)[1].strip()
    process.terminate()
    assert process.wait(timeout=60) == 0


@pytest.fixture
def narrow_tenant() -> str:
    """A tenant the daemon lets run one execution at a time, with none waiting."""
    return NARROW_TENANT


@pytest.fixture
async def client(daemon_target: str) -> AsyncIterator[SandboxClient]:
    async with SandboxClient(daemon_target) as connected:
        yield connected
