"""sandboxd daemons as child processes: start, watch (CPU and memory of the tree), stop.

Each daemon is started in a cgroup of its own (cgroup v1: a child of ours in every hierarchy the
daemon uses), so that cpuacct counts everything it costs: the daemon, its fork server and every
jail it ever started, the jails' cgroups sitting below. On cgroup v2 the daemons share ours and
CPU falls back to psutil (a lower bound, see Daemon.cpu).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import psutil

ROOTFS = os.environ.get("SANDBOXD_ROOTFS", "/var/lib/sandboxd/rootfs")
_CGROUP_ROOT = Path("/sys/fs/cgroup")
_V1_CONTROLLERS = frozenset({"memory", "pids", "cpu", "cpuacct", "freezer"})
_READY_PREFIX = "sandboxd: serving on "
_STOP_TIMEOUT_S = 60.0
_FORK_SERVER_MODULE = "sandboxd.jail.forkserver"


class DaemonError(RuntimeError):
    """A daemon could not be started."""


class CpuTime(NamedTuple):
    """CPU seconds a daemon used so far: in all (its jails included) and in its own processes."""

    total_s: float
    daemon_s: float

    def since(self, earlier: CpuTime) -> CpuTime:
        return CpuTime(self.total_s - earlier.total_s, self.daemon_s - earlier.daemon_s)

    def plus(self, other: CpuTime) -> CpuTime:
        return CpuTime(self.total_s + other.total_s, self.daemon_s + other.daemon_s)


class OwnCpu(NamedTuple):
    """CPU seconds so far of the daemon's own process and of its fork server."""

    daemon_s: float
    fork_server_s: float

    def since(self, earlier: OwnCpu) -> OwnCpu:
        return OwnCpu(self.daemon_s - earlier.daemon_s, self.fork_server_s - earlier.fork_server_s)


@dataclass
class Daemon:
    """A ``sandboxd serve`` child process on a loopback port."""

    name: str
    process: subprocess.Popen[str]
    target: str
    cgroups: dict[str, Path]  # hierarchy ("memory", "cpu,cpuacct", ...) -> our cgroup in it

    def tree(self) -> list[psutil.Process]:
        """The daemon, its fork server and every jail process alive now."""
        root = psutil.Process(self.process.pid)
        return [root, *root.children(recursive=True)]

    def cpu(self) -> CpuTime:
        """CPU time so far: in all from the daemon's cgroup (cpuacct counts every process ever in
        it or below, the jails too), and of the daemon and its fork server from psutil.

        psutil cannot see the jails' CPU: a jail's keeper is killed together with its node
        process, so node is reaped by the host's init and its times never reach the daemon's
        tree. Without a cgroup of its own (cgroup v2), the total is that lower bound.
        """
        root = psutil.Process(self.process.pid)
        own = _own_cpu([root, *root.children()])
        for names, directory in self.cgroups.items():
            if "cpuacct" in names.split(","):
                return CpuTime(int((directory / "cpuacct.usage").read_text()) / 1e9, own)
        return CpuTime(_own_cpu(self.tree(), children=True), own)

    def own_cpu(self) -> OwnCpu:
        """CPU time so far of the daemon's process (all its threads) and of its fork server."""
        root = psutil.Process(self.process.pid)
        return OwnCpu(_own_cpu([root]), _own_cpu([self.fork_server()]))

    def fork_server(self) -> psutil.Process:
        """The daemon's fork server (``python -m sandboxd.jail.forkserver``)."""
        for helper in psutil.Process(self.process.pid).children():
            if _FORK_SERVER_MODULE in helper.cmdline():
                return helper
        raise DaemonError(f"{self.name}: no fork server among the daemon's children")

    def memory(self) -> dict[str, int]:
        """RSS of the daemon, its helpers (the fork server) and the jails alive now (a jail: a
        keeper forked by the fork server, and the processes under it)."""
        root = psutil.Process(self.process.pid)
        helpers = root.children()
        keepers = [keeper for helper in helpers for keeper in _children(helper, recursive=False)]
        jail_processes = keepers + [p for keeper in keepers for p in _children(keeper)]
        return {
            "daemon_rss_bytes": root.memory_info().rss,
            "helpers_rss_bytes": _rss(helpers),
            "jails": len(keepers),
            "jails_rss_bytes": _rss(jail_processes),
        }

    def stop(self) -> int:
        """SIGTERM (the daemon drains), wait, and remove the cgroups made for it."""
        self.process.terminate()
        try:
            code = self.process.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        _remove_cgroups(self.cgroups)
        return code


def start(
    name: str, *, pool_size: int | None, uid_base: int, env: Mapping[str, str], log: Path
) -> Daemon:
    """``python -m sandboxd.cli serve`` on a free loopback port; returns once it serves.

    ``uid_base`` keeps the host uids of this daemon's jails apart from any other daemon's.
    ``pool_size`` None keeps the daemon's default pool. The daemon's log goes to ``log``.
    """
    if not Path(ROOTFS, "usr/local/bin/node").exists():
        raise DaemonError(f"no jail image at {ROOTFS}: run scripts/setup first")
    argv = [sys.executable, "-m", "sandboxd.cli", "serve", "--listen", "127.0.0.1:0"]
    if pool_size is not None:
        argv += ["--pool-size", str(pool_size)]
    cgroups = _make_cgroups(f"sandboxd-bench-{name}-{os.getpid()}")
    with log.open("ab") as log_file:
        process = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
            env={**os.environ, "SANDBOXD_UID_BASE": str(uid_base), **env},
            # Before exec, so the daemon and everything it starts are born in its own cgroup.
            # Runs while the benchmark has no threads yet (daemons start first).
            preexec_fn=lambda: _join(cgroups),  # noqa: PLW1509
        )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith(_READY_PREFIX):
        process.kill()
        code = process.wait()
        _remove_cgroups(cgroups)
        raise DaemonError(f"{name}: daemon did not start (exit {code}, {line!r}); see {log}")
    return Daemon(name, process, line[len(_READY_PREFIX) :].strip(), cgroups)


def _children(process: psutil.Process, recursive: bool = True) -> list[psutil.Process]:
    with contextlib.suppress(psutil.NoSuchProcess):
        return process.children(recursive=recursive)
    return []


def _own_cpu(processes: list[psutil.Process], children: bool = False) -> float:
    """User + system CPU seconds of ``processes`` (and of their reaped children)."""
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system
            if children:
                total += times.children_user + times.children_system
    return total


def _rss(processes: list[psutil.Process]) -> int:
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += process.memory_info().rss
    return total


def _make_cgroups(leaf: str) -> dict[str, Path]:
    """A new child of our cgroup in each v1 hierarchy the daemon uses; none on cgroup v2 (the
    daemon then shares our cgroup)."""
    made: dict[str, Path] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        parent = _CGROUP_ROOT / names / path.lstrip("/")
        if _V1_CONTROLLERS.isdisjoint(names.split(",")) or not parent.is_dir():
            continue
        made[names] = parent / leaf
        made[names].mkdir()
    return made


def _join(cgroups: dict[str, Path]) -> None:
    for directory in cgroups.values():
        (directory / "cgroup.procs").write_text("0")


def _remove_cgroups(cgroups: dict[str, Path]) -> None:
    """Remove our cgroups and any (empty) jail parent the daemon left in them."""
    for directory in cgroups.values():
        leftovers = [child for child in directory.iterdir() if child.is_dir()]
        for path in [*leftovers, directory]:
            try:
                path.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:  # jails left behind: worth a look, not worth failing the run
                print(f"warning: cannot remove {path}: {exc}", file=sys.stderr)
