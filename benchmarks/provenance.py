"""Where a run comes from: the commit it measured and the machine it ran on.

A figure is only worth comparing with another when both name their code and their host, so
results.json carries both (``source`` and ``machine``), and ``compare`` prints them side by side.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

REPOSITORY = Path(__file__).resolve().parent.parent
_CPUINFO = Path("/proc/cpuinfo")
_CGROUP_V2_MARKER = Path("/sys/fs/cgroup/cgroup.controllers")


def source(repository: Path = REPOSITORY) -> dict[str, Any]:
    """The commit checked out in ``repository``, and whether tracked files differ from it (a
    dirty tree measures code no commit holds: the run says so). None fields without git."""
    commit = _git(repository, ["rev-parse", "HEAD"])
    changed = _git(repository, ["status", "--porcelain", "--untracked-files=no"])
    changed_files = None if changed is None else len(changed.splitlines())
    return {
        "commit": commit,
        "dirty": None if changed_files is None else changed_files > 0,
        "changed_files": changed_files,
    }


def machine(node: str, bwrap: str | None, env: dict[str, str]) -> dict[str, Any]:
    """The host: CPU model and cores, memory, kernel, cgroup mode, and the versions of the
    programs measured (``node``, ``bwrap``, run with ``env``)."""
    return {
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_bytes": psutil.virtual_memory().total,
        # Others' work on the host skews every system; the load before the run says how quiet
        # the host was (afterwards it mostly shows the benchmark's own load).
        "load_1m_at_start": os.getloadavg()[0],
        "kernel": platform.release(),
        "host_cgroup_mode": "v2" if _CGROUP_V2_MARKER.exists() else "v1",
        "python": platform.python_version(),
        "node": version([node, "--version"], env),
        "bwrap": version([bwrap, "--version"], env) if bwrap else None,
        "strace": _first_line(version(["strace", "-V"], env)) if shutil.which("strace") else None,
    }


def cpu_model(cpuinfo: Path = _CPUINFO) -> str | None:
    """The first "model name" of /proc/cpuinfo (x86), or None where the kernel gives none."""
    for line in cpuinfo.read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return None


def version(argv: Sequence[str], env: dict[str, str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    return done.stdout.strip()


def _first_line(text: str) -> str:
    return text.partition("\n")[0]


def _git(repository: Path, args: list[str]) -> str | None:
    """git's output, or None when git or the repository is missing."""
    try:
        done = subprocess.run(
            ["git", "-C", str(repository), *args], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.strip()
