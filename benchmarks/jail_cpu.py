"""Host CPU of a jail outside Node: `python -m benchmarks.jail_cpu [--jails N] [--rounds R]`.

Two ways to run `node -e 0`, in alternating batches of N so that drift hits both alike:

* bare: a plain child process with a clean environment;
* jail: a jail started through the fork server the way the daemon starts one (seccomp, a cgroup
  created before and removed after), waited for until it exited and its cgroup is gone.

With `--baseline DIR` (a directory holding another checkout's `sandboxd` package, e.g. from
`git archive COMMIT sandboxd | tar -x -C DIR`), a third system runs the same jails through a fork
server started from there: an A/B of two fork servers, interleaved.

`--saturation` measures instead how many jails per second the fork server starts when it is
asked for many at once (it starts one at a time: it waits for each init to reach exec), each
running `node --version` (Node exits before starting V8), against how many `node -e 0` processes
per second the host runs with one per core.

Each batch's cost is the CPU time of a cpuacct cgroup this benchmark moves itself into (v1 hosts:
the fork server, the keepers, the inits, the bare nodes and the jails' own cgroups nested below
are all charged to it, and other work on the shared host is not), minus this benchmark's own CPU
(getrusage), divided by N. Prints medians per item, kernel and user apart, as JSON. Kernel
workers (the network namespaces' cleanup runs in a kworker after the jail is gone) belong to no
cgroup: measure those with `perf record -a` (see benchmarks/README.md, "the fork server and the
kernel").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sandboxd.jail import cgroups
from sandboxd.jail.handle import JailLauncher
from sandboxd.jail.spec import JailSpec

ROOTFS = os.environ.get("SANDBOXD_ROOTFS", "/var/lib/sandboxd/rootfs")
NODE_IN_JAIL = "/usr/local/bin/node"
UID = 299_000
CPUACCT = "/sys/fs/cgroup/cpuacct"


@dataclass(frozen=True)
class Cpu:
    """CPU seconds, user and kernel apart."""

    user: float
    kernel: float

    def __sub__(self, other: Cpu) -> Cpu:
        return Cpu(self.user - other.user, self.kernel - other.kernel)

    def scaled(self, factor: float) -> Cpu:
        return Cpu(self.user * factor, self.kernel * factor)


def join_own_cpuacct() -> str:
    """Move this process into a fresh cpuacct cgroup; its directory."""
    directory = os.path.join(CPUACCT, f"sandboxd-jail-cpu-{os.getpid()}")
    os.mkdir(directory)
    with open(os.path.join(directory, "cgroup.procs"), "w") as procs:
        procs.write("0\n")
    return directory


def leave_cpuacct(directory: str) -> None:
    with open(os.path.join(CPUACCT, "cgroup.procs"), "w") as procs:
        procs.write("0\n")
    os.rmdir(directory)


def run_time_s(pid: int) -> float:
    """CPU time of one process (not its children) so far, to the nanosecond (schedstat)."""
    with open(f"/proc/{pid}/schedstat") as schedstat:
        return int(schedstat.read().split()[0]) / 1e9


def cgroup_cpu(directory: str) -> Cpu:
    def seconds(name: str) -> float:
        with open(os.path.join(directory, name)) as handle:
            return int(handle.read()) / 1e9

    return Cpu(seconds("cpuacct.usage_user"), seconds("cpuacct.usage_sys"))


def own_cpu() -> Cpu:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return Cpu(usage.ru_utime, usage.ru_stime)


async def bare_node() -> None:
    process = await asyncio.create_subprocess_exec(
        f"{ROOTFS}{NODE_IN_JAIL}", "-e", "0", env={"PATH": "/usr/bin:/bin"}
    )
    if await process.wait() != 0:
        raise RuntimeError("bare node -e 0 failed")


def jail_node(
    launcher: JailLauncher, driver: cgroups.CgroupDriver
) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        jail_id = uuid.uuid4().hex[:12]
        cgroup = driver.create(jail_id, cgroups.CgroupLimits(1 << 30, 64, 1.0))
        spec = JailSpec(
            jail_id=jail_id,
            rootfs=ROOTFS,
            host_uid=UID,
            host_gid=UID,
            cgroup_procs=cgroup.procs_files,
            argv=(NODE_IN_JAIL, "-e", "0"),
        )
        jail = await launcher.spawn(spec)
        status = await jail.exit_status
        jail.close_fds()
        cgroup.remove()
        if status != 0:
            raise RuntimeError(f"node -e 0 in the jail exited with status {status}")

    return run


async def batch_cost(run: Callable[[], Awaitable[None]], count: int, cgroup: str) -> Cpu:
    """CPU per item of `count` sequential runs, without this process's own."""
    charged, own = cgroup_cpu(cgroup), own_cpu()
    for _ in range(count):
        await run()
    spent = (cgroup_cpu(cgroup) - charged) - (own_cpu() - own)
    return spent.scaled(1 / count)


async def start_launcher(code_dir: str | None) -> JailLauncher:
    """A fork server of this checkout, or of the `sandboxd` package found in `code_dir`."""
    if code_dir is None:
        return await JailLauncher.start(seccomp=True)
    # `python -m` looks in the current directory first, then PYTHONPATH, which the fork server
    # keeps from our environment.
    saved, cwd = os.environ.get("PYTHONPATH"), os.getcwd()
    os.environ["PYTHONPATH"] = code_dir
    os.chdir(code_dir)
    try:
        return await JailLauncher.start(seccomp=True)
    finally:
        os.chdir(cwd)
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved


async def measure(jails: int, rounds: int, baseline: str | None) -> dict[str, object]:
    mode = cgroups.detect()
    if mode != "v1":
        raise SystemExit("jail_cpu measures through cpuacct: a cgroup v1 host only")
    cgroup = join_own_cpuacct()
    launchers = [await start_launcher(None)]
    if baseline is not None:
        launchers.append(await start_launcher(baseline))
    driver = cgroups.open_driver(mode, f"sandboxd-bench-{os.getpid()}")
    systems = {"bare": bare_node, "jail": jail_node(launchers[0], driver)}
    if baseline is not None:
        systems["baseline_jail"] = jail_node(launchers[1], driver)
    samples: dict[str, list[Cpu]] = {name: [] for name in systems}
    fork_servers = [launcher.fork_server_pid for launcher in launchers]
    try:
        for run in systems.values():  # warm the page cache and the fork server
            await batch_cost(run, 3, cgroup)
        fork_server_before = [run_time_s(pid) for pid in fork_servers]
        for _ in range(rounds):
            for name, run in systems.items():
                samples[name].append(await batch_cost(run, jails, cgroup))
        fork_server_ms = [
            (run_time_s(pid) - before) * 1000 / (jails * rounds)
            for pid, before in zip(fork_servers, fork_server_before, strict=True)
        ]
    finally:
        for launcher in launchers:
            await launcher.close()
        driver.close()
        leave_cpuacct(cgroup)
    result: dict[str, object] = {"jails_per_batch": jails, "rounds": rounds, "cgroups": mode}
    for name, per_jail in zip(("jail", "baseline_jail"), fork_server_ms, strict=False):
        result[f"{name}_fork_server_ms"] = round(per_jail, 2)
    medians = {
        name: Cpu(
            statistics.median(value.user for value in values) * 1000,
            statistics.median(value.kernel for value in values) * 1000,
        )
        for name, values in samples.items()
    }
    for name, median in medians.items():
        result[f"{name}_ms"] = _rounded(median)
    bare = medians["bare"]
    for name, median in medians.items():
        if name != "bare":
            result[f"{name}_minus_bare_ms"] = _rounded(median - bare)
            result[f"{name}_vs_bare"] = round(_total(median) / _total(bare), 3)
    return result


def _total(cpu: Cpu) -> float:
    return cpu.user + cpu.kernel


def _rounded(cpu: Cpu) -> dict[str, float]:
    return {
        "user": round(cpu.user, 2),
        "kernel": round(cpu.kernel, 2),
        "total": round(_total(cpu), 2),
    }


async def saturation(count: int) -> dict[str, object]:
    """Jails per second of the fork server alone, and bare `node -e 0` per second on every core."""
    launcher = await start_launcher(None)
    driver = cgroups.open_driver(cgroups.detect(), f"sandboxd-bench-{os.getpid()}")
    try:
        await asyncio.gather(*(_short_jail(launcher, driver) for _ in range(4)))  # warm
        began = time.monotonic()
        await asyncio.gather(*(_short_jail(launcher, driver) for _ in range(count)))
        jails_per_s = count / (time.monotonic() - began)
        began = time.monotonic()
        per_core = -(-count // (os.cpu_count() or 1))
        await asyncio.gather(*(_bare_series(per_core) for _ in range(os.cpu_count() or 1)))
        bare_per_s = per_core * (os.cpu_count() or 1) / (time.monotonic() - began)
    finally:
        await launcher.close()
        driver.close()
    return {
        "jails": count,
        "fork_server_jails_per_s": round(jails_per_s, 1),
        "bare_node_per_s": round(bare_per_s, 1),
        "ratio": round(jails_per_s / bare_per_s, 2),
    }


async def _short_jail(launcher: JailLauncher, driver: cgroups.CgroupDriver) -> None:
    jail_id = uuid.uuid4().hex[:12]
    cgroup = driver.create(jail_id, cgroups.CgroupLimits(1 << 30, 64, 1.0))
    spec = JailSpec(
        jail_id=jail_id,
        rootfs=ROOTFS,
        host_uid=UID + int(jail_id[:4], 16),  # concurrent jails: a uid each, as in the pool
        host_gid=UID + int(jail_id[:4], 16),
        cgroup_procs=cgroup.procs_files,
        argv=(NODE_IN_JAIL, "--version"),
    )
    jail = await launcher.spawn(spec)
    await jail.exit_status
    jail.close_fds()
    cgroup.remove()


async def _bare_series(count: int) -> None:
    for _ in range(count):
        await bare_node()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.jail_cpu")
    parser.add_argument("--jails", type=int, default=40, help="jails (and bare nodes) per batch")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--baseline", metavar="DIR", help="also jails of the sandboxd in DIR")
    parser.add_argument("--saturation", action="store_true", help="jails/s of the fork server")
    args = parser.parse_args(argv)
    if args.saturation:
        result = asyncio.run(saturation(args.jails * args.rounds))
    else:
        result = asyncio.run(measure(args.jails, args.rounds, args.baseline))
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
