"""Host CPU of a jail outside Node: `python -m benchmarks.jail_cpu [--jails N] [--rounds R]`.

Two ways to run `node -e 0`, in alternating batches of N so that drift hits both alike:

* bare: a plain child process with a clean environment;
* jail: a jail started through the fork server the way the daemon starts one (seccomp, a cgroup
  created before and removed after), waited for until it exited and its cgroup is gone.

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


async def measure(jails: int, rounds: int) -> dict[str, object]:
    mode = cgroups.detect()
    if mode != "v1":
        raise SystemExit("jail_cpu measures through cpuacct: a cgroup v1 host only")
    cgroup = join_own_cpuacct()
    launcher = await JailLauncher.start(seccomp=True)
    driver = cgroups.open_driver(mode, f"sandboxd-bench-{os.getpid()}")
    systems = {"bare": bare_node, "jail": jail_node(launcher, driver)}
    samples: dict[str, list[Cpu]] = {name: [] for name in systems}
    try:
        for run in systems.values():  # warm the page cache and the fork server
            await batch_cost(run, 3, cgroup)
        for _ in range(rounds):
            for name, run in systems.items():
                samples[name].append(await batch_cost(run, jails, cgroup))
    finally:
        await launcher.close()
        driver.close()
        leave_cpuacct(cgroup)
    result: dict[str, object] = {"jails_per_batch": jails, "rounds": rounds, "cgroups": mode}
    medians = {}
    for name, values in samples.items():
        user = statistics.median(value.user for value in values) * 1000
        kernel = statistics.median(value.kernel for value in values) * 1000
        medians[name] = (user, kernel)
        result[f"{name}_ms"] = {"user": round(user, 2), "kernel": round(kernel, 2)}
    extra_user = medians["jail"][0] - medians["bare"][0]
    extra_kernel = medians["jail"][1] - medians["bare"][1]
    result["jail_minus_bare_ms"] = {"user": round(extra_user, 2), "kernel": round(extra_kernel, 2)}
    result["jail_vs_bare"] = round(sum(medians["jail"]) / sum(medians["bare"]), 3)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.jail_cpu")
    parser.add_argument("--jails", type=int, default=40, help="jails (and bare nodes) per batch")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    json.dump(asyncio.run(measure(args.jails, args.rounds)), sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
