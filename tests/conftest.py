"""Shared fixtures: a real daemon process on a free loopback port, and clients of it."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import psutil
import pytest

from sandbox_client import SandboxClient

ROOTFS = os.environ.get("SANDBOXD_ROOTFS", "/var/lib/sandboxd/rootfs")
RUNNER = os.path.join(os.path.dirname(__file__), "..", "images", "node", "runner.js")
UID_BASE = 200_000
POOL_MAX = 32


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """tests/jail first, however the paths were named: its tests fork this process, and a child
    forked after other tests left gRPC's threads running hangs in gRPC's at-fork handlers."""
    items.sort(key=lambda item: "tests/jail/" not in item.nodeid)


@dataclass
class DaemonProcess:
    process: subprocess.Popen[str]
    target: str

    def stop(self) -> int:
        self.process.terminate()
        return self.process.wait(timeout=60)


def start_daemon(
    *extra: str, pool_size: int = 4, env: dict[str, str] | None = None
) -> DaemonProcess:
    """`sandboxd serve` as a child process; returns once it serves."""
    if not os.path.exists(f"{ROOTFS}/usr/local/bin/node"):
        pytest.fail(f"no jail image at {ROOTFS}: run scripts/setup first")
    if not filecmp.cmp(f"{ROOTFS}/sandboxd/runner.js", RUNNER, shallow=False):
        pytest.fail(f"the jail image at {ROOTFS} has an old runner.js: run scripts/setup")
    argv = [
        sys.executable,
        "-m",
        "sandboxd.cli",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--pool-size",
        str(pool_size),
        *extra,
    ]
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("sandboxd: serving on "):
        process.kill()
        pytest.fail(f"daemon did not start: {line!r} (exit {process.wait()})")
    return DaemonProcess(process, line.rsplit(" ", 1)[1].strip())


@pytest.fixture(scope="session")
def daemon() -> Iterator[DaemonProcess]:
    running = start_daemon()
    yield running
    assert running.stop() == 0


@pytest.fixture
async def client(daemon: DaemonProcess) -> AsyncIterator[SandboxClient]:
    async with SandboxClient(daemon.target) as connected:
        yield connected


def jail_processes() -> list[psutil.Process]:
    """Every process running as one of the jails' host uids."""
    found = []
    for process in psutil.process_iter(["uids"]):
        uids = process.info["uids"]
        if uids is not None and UID_BASE <= uids.real < UID_BASE + POOL_MAX:
            found.append(process)
    return found
