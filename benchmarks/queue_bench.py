"""Distributed mode: throughput with 1 and 3 workers, and enqueue -> first event latency.

    python -m benchmarks.queue_bench [--executions 300] [--latency-samples 100]

Starts its own redis-server (loopback, no persistence) and worker processes
(``sandboxd worker``), each a daemon with its own pool of real jails, and prints JSON.
Throughput: executions of a trivial step from 4 tenants, all enqueued at once, divided by the time
from the first enqueue to the last result. Latency: one execution at a time on an idle worker,
from the call to enqueue until its first event (ExecutionStarted) can be read, and until its
result. The queue's own ceiling, without jails: benchmarks/queue_ceiling.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.stats import percentile
from sandbox_client import Step
from sandbox_client._queue import QueueClient
from sandboxd.queue.worker import QueueOptions
from tests.redis_server import RedisServer
from tests.workers import start_worker_process

STEP = Step("double", "module.exports = async (ctx) => ctx.input.i * 2")
TENANTS = 4
POOL_SIZE = 2
POOL_MAX = 4
UID_BASE = 760_000  # jails of worker n run as UID_BASE + 100 n ...


@contextmanager
def workers(redis_url: str, count: int) -> Iterator[None]:
    """`count` worker processes, ready to take work; stopped (SIGTERM) on exit."""
    processes = []
    try:
        for n in range(count):
            process, _target = start_worker_process(
                redis_url,
                f"bench{n}",
                pool_size=POOL_SIZE,
                pool_max=POOL_MAX,
                uid_base=UID_BASE + 100 * n,
                options=QueueOptions(),
            )
            processes.append(process)
        yield
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=60)


async def throughput(redis_url: str, executions: int) -> dict[str, Any]:
    async with QueueClient(redis_url) as queue:
        began = time.perf_counter()
        ids = await asyncio.gather(
            *(
                queue.enqueue(tenant_id=f"tenant{n % TENANTS}", steps=[STEP], input={"i": n})
                for n in range(executions)
            )
        )
        results = await asyncio.gather(*(queue.wait(i, timeout=600) for i in ids))
        elapsed = time.perf_counter() - began
    assert results == [2 * n for n in range(executions)], "a result is wrong"
    return {"executions": executions, "elapsed_s": elapsed, "per_s": executions / elapsed}


async def latency(redis_url: str, samples: int) -> dict[str, Any]:
    first_event_ms, result_ms = [], []
    async with QueueClient(redis_url) as queue:
        for n in range(samples + 5):  # the first few warm up connections and scripts
            began = time.perf_counter()
            execution_id = await queue.enqueue(tenant_id="latency", steps=[STEP], input={"i": n})
            events = queue.events(execution_id)
            await anext(events)
            first_event = time.perf_counter()
            async for _event in events:
                pass
            if n >= 5:
                first_event_ms.append((first_event - began) * 1000)
                result_ms.append((time.perf_counter() - began) * 1000)
            await asyncio.sleep(0.05)  # low load: the pool refills between executions
    return {
        "samples": samples,
        "enqueue_to_first_event_ms": _percentiles(first_event_ms),
        "enqueue_to_result_ms": _percentiles(result_ms),
    }


def _percentiles(values: list[float]) -> dict[str, float]:
    return {f"p{q}": round(percentile(values, q), 2) for q in (50, 90, 99)}


def measure(executions: int, latency_samples: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as directory:
        server = RedisServer(Path(directory))
        server.start()
        try:
            results: dict[str, Any] = {
                "machine": {"cpus": os.cpu_count()},
                "worker": {"pool_size": POOL_SIZE, "pool_max": POOL_MAX},
            }
            for count in (1, 3):
                with workers(server.url, count):
                    results[f"throughput_{count}_workers"] = asyncio.run(
                        throughput(server.url, executions)
                    )
                    if count == 1:
                        results["latency_1_worker"] = asyncio.run(
                            latency(server.url, latency_samples)
                        )
            return results
        finally:
            server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.queue_bench", description=__doc__)
    parser.add_argument("--executions", type=int, default=300)
    parser.add_argument("--latency-samples", type=int, default=100)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.executions, args.latency_samples), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
