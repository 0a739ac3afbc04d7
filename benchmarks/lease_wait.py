"""Does the pool hide cold starts? `python -m benchmarks.lease_wait [--rate R] [--seconds S]`.

Sends trivial executions to a fresh daemon at a steady rate (Poisson arrivals, below capacity)
and reports the lease wait each execution saw (ExecutionStarted.lease_wait_us): the time between
asking for a jail and having a warm one. With the pool doing its job this stays near zero while a
jail start costs tens of milliseconds. Prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks import daemons
from sandbox_client import SandboxClient, Step

_UID_BASE = 600_000
TRIVIAL = Step("trivial", "module.exports = async (ctx) => ctx.input.n + 1")


async def one(client: SandboxClient, n: int) -> float:
    """The lease wait of one execution, in milliseconds."""
    wait_us = 0
    async for event in client.execute(tenant_id="steady", steps=[TRIVIAL], input={"n": n}):
        if event.HasField("execution_started"):
            wait_us = event.execution_started.lease_wait_us
    return wait_us / 1000


async def steady(target: str, rate: float, seconds: float) -> list[float]:
    waits: list[asyncio.Task[float]] = []
    async with SandboxClient(target) as client:
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        n = 0
        while loop.time() < end:
            waits.append(asyncio.create_task(one(client, n)))
            n += 1
            await asyncio.sleep(random.expovariate(rate))
        return list(await asyncio.gather(*waits))


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def measure(rate: float, seconds: float, pool_size: int) -> dict[str, object]:
    log = Path(tempfile.gettempdir(), "sandboxd-lease-wait.log")
    daemon = daemons.start("lease", pool_size=pool_size, uid_base=_UID_BASE, env={}, log=log)
    try:
        waits = await steady(daemon.target, rate, seconds)
        async with SandboxClient(daemon.target) as client:
            pool = (await client.status()).pool
    finally:
        daemon.stop()
    return {
        "rate_per_s": rate,
        "executions": len(waits),
        "pool_size": pool_size,
        "lease_wait_ms": {
            "p50": round(statistics.median(waits), 3),
            "p99": round(percentile(waits, 0.99), 3),
            "max": round(max(waits), 3),
        },
        "jail_start_ms": {"p50": round(pool.start_ms_p50, 1), "p99": round(pool.start_ms_p99, 1)},
        "pool_target_at_end": pool.target,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lease_wait")
    parser.add_argument("--rate", type=float, default=10.0, help="executions per second")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--pool-size", type=int, default=4)
    args = parser.parse_args(argv)
    result = asyncio.run(measure(args.rate, args.seconds, args.pool_size))
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
