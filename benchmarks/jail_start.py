"""What a jail adds to starting Node: `python -m benchmarks.jail_start [--runs N]`.

Four ways to run the same `node -e 0`, interleaved so machine drift hits all alike, each timed
from the request to the process's exit:

* bare:    a plain child process with a clean environment (the floor);
* jail:    sandboxd's jail with namespaces, pivot_root, ids, rlimits, no seccomp, no cgroups;
* seccomp: the same plus the seccomp filter;
* full:    the same plus a cgroup (what the daemon starts).

Prints medians and ratios as JSON. The jail's own runner (`runner.js`, which preloads modules
before saying ready) is not part of this: it would be paid by bare Node running it too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid

from sandboxd.jail import cgroups
from sandboxd.jail.handle import JailLauncher
from sandboxd.jail.spec import JailSpec

ROOTFS = os.environ.get("SANDBOXD_ROOTFS", "/var/lib/sandboxd/rootfs")
NODE_IN_JAIL = "/usr/local/bin/node"
UID = 299_000
CPU_QUOTA = float(os.environ.get("CPU_QUOTA", "1.0"))


def bare_start() -> float:
    began = time.perf_counter()
    subprocess.run(
        [f"{ROOTFS}{NODE_IN_JAIL}", "-e", "0"],
        env={"PATH": "/usr/bin:/bin"},
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return time.perf_counter() - began


async def jail_start(
    launcher: JailLauncher, driver: cgroups.CgroupDriver | None, uid: int
) -> float:
    jail_id = uuid.uuid4().hex[:12]
    began = time.perf_counter()
    cgroup = (
        driver.create(jail_id, cgroups.CgroupLimits(1 << 30, 64, CPU_QUOTA)) if driver else None
    )
    spec = JailSpec(
        jail_id=jail_id,
        rootfs=ROOTFS,
        host_uid=uid,
        host_gid=uid,
        cgroup_procs=cgroup.procs_files if cgroup else (),
        argv=(NODE_IN_JAIL, "-e", "0"),
    )
    jail = await launcher.spawn(spec)
    status = await jail.exit_status
    elapsed = time.perf_counter() - began
    jail.close_fds()
    if cgroup is not None:
        cgroup.remove()
    if status != 0:
        raise RuntimeError(f"node -e 0 in the jail exited with status {status}")
    return elapsed


async def measure(runs: int) -> dict[str, object]:
    plain = await JailLauncher.start(seccomp=False)
    filtered = await JailLauncher.start(seccomp=True)
    mode = cgroups.detect()
    driver = cgroups.open_driver(mode, f"sandboxd-bench-{os.getpid()}") if mode != "none" else None
    samples: dict[str, list[float]] = {"bare": [], "jail": [], "seccomp": [], "full": []}
    try:
        for _ in range(3):  # warm the page cache and the fork server
            bare_start()
            await jail_start(filtered, driver, UID)
        for _ in range(runs):
            samples["bare"].append(bare_start())
            samples["jail"].append(await jail_start(plain, None, UID))
            samples["seccomp"].append(await jail_start(filtered, None, UID))
            samples["full"].append(await jail_start(filtered, driver, UID))
    finally:
        await plain.close()
        await filtered.close()
        if driver is not None:
            driver.close()
    medians = {name: statistics.median(values) * 1000 for name, values in samples.items()}
    return {
        "runs": runs,
        "cgroups": mode,
        "median_ms": {name: round(value, 2) for name, value in medians.items()},
        "full_vs_bare": round(medians["full"] / medians["bare"], 3),
        "seccomp_and_cgroups_overhead_ms": round(medians["full"] - medians["jail"], 2),
        "jail_vs_bare": round(medians["jail"] / medians["bare"], 3),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.jail_start")
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args(argv)
    json.dump(asyncio.run(measure(args.runs)), sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
