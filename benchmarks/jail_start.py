"""Where a jail's start goes: `python -m benchmarks.jail_start [--runs N]`.

Every variant runs in turn in each round (so machine drift hits all alike) and is timed from the
request to the end: a process's exit for `node -e 0`, the runner's `ready` frame for the runner.

* node -e 0, bare: a plain child process with a clean environment (the floor);
* runner, bare: `node runner.js` to `ready`, no jail (the runner's own load time);
* node -e 0 in a jail with namespaces, pivot_root, ids, rlimits, and nothing else;
* the same plus the seccomp filter;
* the same plus a cgroup (no seccomp) with no limit, then with each limit alone (memory, pids,
  cpu quota, the refills' low cpu weight), then with all of them;
* full: seccomp and a cgroup with every limit, for `node -e 0` and for the runner to `ready`
  (what the daemon starts, minus the daemon).

Also the wall time of one process writing itself into a fresh cgroup (what a jail's keeper does
first), after an idle pause as between two jail starts.

Prints medians (ms) and ratios to bare `node -e 0` as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sandboxd.jail import cgroups
from sandboxd.jail.handle import Jail, JailLauncher
from sandboxd.jail.spec import RUNNER_ARGV, RUNNER_ENV, JailSpec

ROOTFS = os.environ.get("SANDBOXD_ROOTFS", "/var/lib/sandboxd/rootfs")
NODE_IN_JAIL = RUNNER_ARGV[0]
NODE_E0 = (NODE_IN_JAIL, "-e", "0")
UID = 299_000
LIMITS = cgroups.CgroupLimits(memory_bytes=1 << 30, pids=64, cpu_quota=1.0)
REFILL_CPU_WEIGHT = 50  # sandboxd/pool.py starts refills at this weight
ALL_LIMITS = frozenset({"memory", "pids", "cpu_quota"})
_WORK_FD, _EVENTS_FD = 3, 4
_FIRST_FREE_FD = 10
_PREFIX_BYTES = 8
_JOIN_PAUSE_S = 0.06  # about one jail start between two joins, as in a pool's refill

Sample = Callable[[], Awaitable[float]]


@dataclass(frozen=True)
class CgroupSetup:
    """Which of the jail cgroup's limits stay in force (the others are lifted after creation)."""

    keep: frozenset[str]
    low_weight: bool = False


# --- timing one start -----------------------------------------------------------------------------


def read_ready(fd: int) -> None:
    """Block until the runner's first frame, which must be `ready`."""
    data = b""
    while len(data) < _PREFIX_BYTES or len(data) < _PREFIX_BYTES + _head_length(data):
        chunk = os.read(fd, 4096)
        if not chunk:
            raise RuntimeError("the runner closed fd 4 before ready")
        data += chunk
    header = json.loads(data[_PREFIX_BYTES : _PREFIX_BYTES + _head_length(data)])
    if header.get("t") != "ready":
        raise RuntimeError(f"the runner's first frame is {header!r}, not ready")


def _head_length(data: bytes) -> int:
    return int.from_bytes(data[:4], "big")


async def bare_node() -> float:
    began = time.perf_counter()
    subprocess.run(
        [f"{ROOTFS}{NODE_IN_JAIL}", "-e", "0"],
        env={"PATH": "/usr/bin:/bin"},
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return time.perf_counter() - began


async def bare_runner() -> float:
    """`node runner.js` with fd 3 and fd 4 on pipes, to its `ready` frame."""
    work_read, work_write = os.pipe()
    events_read, events_write = os.pipe()
    began = time.perf_counter()
    process = subprocess.Popen(
        [f"{ROOTFS}{RUNNER_ARGV[0]}", f"{ROOTFS}{RUNNER_ARGV[1]}"],
        env=dict(RUNNER_ENV),
        stdin=subprocess.DEVNULL,
        # 3 and 4 too: subprocess closes every other descriptor after preexec_fn.
        pass_fds=(work_read, events_write, _WORK_FD, _EVENTS_FD),
        preexec_fn=lambda: _onto_channel_fds(work_read, events_write),  # noqa: PLW1509
    )
    os.close(work_read)
    os.close(events_write)
    try:
        read_ready(events_read)
        elapsed = time.perf_counter() - began
    finally:
        os.close(work_write)  # EOF on fd 3: the runner exits
        process.wait()
        os.close(events_read)
    return elapsed


def _onto_channel_fds(work: int, events: int) -> None:
    # Through numbers above 4 first, so that neither dup2 overwrites the other's source.
    high_work = fcntl.fcntl(work, fcntl.F_DUPFD, _FIRST_FREE_FD)
    high_events = fcntl.fcntl(events, fcntl.F_DUPFD, _FIRST_FREE_FD)
    os.dup2(high_work, _WORK_FD)
    os.dup2(high_events, _EVENTS_FD)


async def in_jail(
    launcher: JailLauncher,
    driver: cgroups.CgroupDriver | None,
    setup: CgroupSetup | None,
    argv: tuple[str, ...],
) -> float:
    """One jail from its cgroup's creation to the end of `argv` (or to `ready` for the runner)."""
    jail_id = uuid.uuid4().hex[:12]
    began = time.perf_counter()
    cgroup = None
    if driver is not None and setup is not None:
        cgroup = driver.create(jail_id, LIMITS)
        _lift_limits(cgroup, setup)
    spec = JailSpec(
        jail_id=jail_id,
        rootfs=ROOTFS,
        host_uid=UID,
        host_gid=UID,
        cgroup_procs=cgroup.procs_files if cgroup else (),
        argv=argv,
    )
    jail = await launcher.spawn(spec)
    try:
        elapsed = await _until_done(jail, began, runner=argv == RUNNER_ARGV)
    finally:
        jail.close_fds()
        if cgroup is not None:
            cgroup.remove()
    return elapsed


async def _until_done(jail: Jail, began: float, *, runner: bool) -> float:
    if runner:
        await asyncio.to_thread(read_ready, jail.events_fd)
        elapsed = time.perf_counter() - began
        jail.kill()
        await jail.exit_status
        return elapsed
    status = await jail.exit_status
    elapsed = time.perf_counter() - began
    if status != 0:
        raise RuntimeError(f"node -e 0 in the jail exited with status {status}")
    return elapsed


def _lift_limits(cgroup: cgroups.JailCgroup, setup: CgroupSetup) -> None:
    """Lift the limits not in `setup.keep`; the jail still joins every hierarchy."""
    for limit in sorted(ALL_LIMITS - setup.keep):
        for path, value in _unlimited(cgroup, limit):
            _write(path, value)
    if setup.low_weight:
        cgroup.set_cpu_weight(REFILL_CPU_WEIGHT)


def _unlimited(cgroup: cgroups.JailCgroup, limit: str) -> list[tuple[str, str]]:
    if isinstance(cgroup, cgroups.V1Cgroup):
        dirs = cgroup.controller_dirs
        if limit == "memory":
            # memsw first: the kernel keeps memory.limit_in_bytes <= memsw.
            memsw = os.path.join(dirs["memory"], "memory.memsw.limit_in_bytes")
            first = [(memsw, "-1")] if os.path.exists(memsw) else []
            return [*first, (os.path.join(dirs["memory"], "memory.limit_in_bytes"), "-1")]
        if limit == "pids":
            return [(os.path.join(dirs["pids"], "pids.max"), "max")]
        return [(os.path.join(dirs["cpu"], "cpu.cfs_quota_us"), "-1")]
    directory = cgroup.dirs[0]
    name = {"memory": "memory.max", "pids": "pids.max", "cpu_quota": "cpu.max"}[limit]
    return [(os.path.join(directory, name), "max")]


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


# --- joining a cgroup -----------------------------------------------------------------------------


def join_times_ms(driver: cgroups.CgroupDriver, runs: int) -> list[float]:
    """Wall time of a fresh child writing itself into every hierarchy of a new jail cgroup."""
    times = []
    for _ in range(runs):
        time.sleep(_JOIN_PAUSE_S)
        cgroup = driver.create(uuid.uuid4().hex[:12], LIMITS)
        try:
            times.append(_child_join_ms(cgroup.procs_files))
        finally:
            cgroup.remove()
    return times


def _child_join_ms(procs_files: tuple[str, ...]) -> float:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child only times its own writes
        began = time.perf_counter()
        for path in procs_files:
            _write(path, "0")
        os.write(write_end, f"{(time.perf_counter() - began) * 1000:.3f}".encode())
        os._exit(0)
    os.close(write_end)
    try:
        reported = os.read(read_end, 64)
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    return float(reported)


# --- the run --------------------------------------------------------------------------------------


def _variants(
    plain: JailLauncher, filtered: JailLauncher, driver: cgroups.CgroupDriver | None
) -> dict[str, Sample]:
    def jail(launcher: JailLauncher, setup: CgroupSetup | None, argv: tuple[str, ...]) -> Sample:
        return lambda: in_jail(launcher, driver, setup, argv)

    variants: dict[str, Sample] = {
        "node -e 0": bare_node,
        "runner to ready, no jail": bare_runner,
        "jail: node -e 0": jail(plain, None, NODE_E0),
        "jail + seccomp: node -e 0": jail(filtered, None, NODE_E0),
    }
    if driver is None:
        return variants
    for name, setup in (
        ("jail + cgroup, no limits", CgroupSetup(frozenset())),
        ("jail + cgroup, memory limit", CgroupSetup(frozenset({"memory"}))),
        ("jail + cgroup, pids limit", CgroupSetup(frozenset({"pids"}))),
        ("jail + cgroup, cpu quota", CgroupSetup(frozenset({"cpu_quota"}))),
        ("jail + cgroup, refill cpu weight", CgroupSetup(frozenset(), low_weight=True)),
        ("jail + cgroup, all limits", CgroupSetup(ALL_LIMITS)),
    ):
        variants[f"{name}: node -e 0"] = jail(plain, setup, NODE_E0)
    full = CgroupSetup(ALL_LIMITS)
    variants["full (seccomp, all limits): node -e 0"] = jail(filtered, full, NODE_E0)
    variants["full: runner to ready"] = jail(filtered, full, RUNNER_ARGV)
    return variants


async def measure(runs: int) -> dict[str, object]:
    load_before = os.getloadavg()[0]
    plain = await JailLauncher.start(seccomp=False)
    filtered = await JailLauncher.start(seccomp=True)
    mode = cgroups.detect()
    driver = cgroups.open_driver(mode, f"sandboxd-bench-{os.getpid()}") if mode != "none" else None
    variants = _variants(plain, filtered, driver)
    samples: dict[str, list[float]] = {name: [] for name in variants}
    joins: list[float] = []
    try:
        for _ in range(2):  # warm the page cache and the fork servers
            for sample in variants.values():
                await sample()
        for _ in range(runs):
            for name, sample in variants.items():
                samples[name].append(await sample())
        if driver is not None:
            joins = join_times_ms(driver, runs)
    finally:
        await plain.close()
        await filtered.close()
        if driver is not None:
            driver.close()
    return _summary(runs, mode, load_before, samples, joins)


def _summary(
    runs: int, mode: str, load: float, samples: dict[str, list[float]], joins: list[float]
) -> dict[str, object]:
    medians = {name: statistics.median(values) * 1000 for name, values in samples.items()}
    floor = medians["node -e 0"]
    return {
        "runs": runs,
        "cgroups": mode,
        # Either one removes the cgroup join's grace period (README, "A jail's start").
        "cgroup_favordynmods": cgroups.favors_dynamic_moves() if mode != "none" else None,
        "rcu_expedited": _rcu_expedited(),
        "load_before": load,
        "median_ms": {name: round(value, 2) for name, value in medians.items()},
        "vs_node_e0": {name: round(value / floor, 3) for name, value in medians.items()},
        "cgroup_join_ms": (
            {"p50": round(statistics.median(joins), 2), "max": round(max(joins), 2)}
            if joins
            else None
        ),
    }


def _rcu_expedited() -> bool | None:
    try:
        with open("/sys/kernel/rcu_expedited") as setting:
            return setting.read().strip() != "0"
    except OSError:
        return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.jail_start")
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args(argv)
    json.dump(asyncio.run(measure(args.runs)), sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
