"""The queue's own ceiling: workers take and finish executions without jails.

    python -m benchmarks.queue_ceiling [--tenants 10,1000,10000,100000] [--workers 1,2,4,8]
                                       [--executions 20000] [--slots 16] [--aof] [--out DIR]

Each point: a fresh loopback redis-server; `executions` (at least one per tenant) queued round
robin over T tenants while the W worker processes (tests/queue/fake_worker.py: the real
QueueWorker, a FakeRunner in place of the jails) are stopped; then the workers run, and the clock
and Redis's own CPU (INFO cpu) run from their SIGCONT until the queue is empty. Meanwhile an
unrelated client PINGs every 5 ms, and SLOWLOG counts calls over 1 ms. Every point uses every
tenant count with 4 workers, and every worker count with 1,000 tenants. Writes queue.json,
queue.png and queue.md in --out (default benchmarks/results/queue-<time>).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt
import psutil
import redis.asyncio as redis

from benchmarks.stats import percentile
from sandbox_client import Step
from sandbox_client._request import execute_request
from sandbox_client.redisqueue import lua
from sandbox_client.redisqueue.store import QueueStore
from tests.queue import fake_worker
from tests.redis_server import RedisServer

STEP = Step("echo", "module.exports = async (ctx) => ctx.input")
RETENTION_MS = 3_600_000
_FILL_BATCH = 2000
_PING_EVERY_S = 0.005
TARGET_PER_S = 5000
TARGET_CPU_MS = 0.2


async def fill(raw: redis.Redis, tenants: int, executions: int) -> None:
    """`executions` real requests, round robin over `tenants`, pipelined."""
    enqueue = raw.register_script(lua.script(lua.ENQUEUE))
    for first in range(0, executions, _FILL_BATCH):
        async with raw.pipeline(transaction=False) as pipe:
            for n in range(first, min(executions, first + _FILL_BATCH)):
                tenant, execution_id = f"tenant-{n % tenants}", f"x{n}"
                request = execute_request(
                    tenant_id=tenant,
                    steps=[STEP],
                    input={"n": n},
                    input_json=None,
                    execution_id=execution_id,
                    config_vars=None,
                    credentials=None,
                    limits=None,
                ).SerializeToString()
                await enqueue(args=[execution_id, tenant, request, 0, RETENTION_MS], client=pipe)
            await pipe.execute()


async def redis_cpu_s(raw: redis.Redis) -> float:
    cpu = await raw.info("cpu")
    return float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])


async def script_calls(raw: redis.Redis) -> tuple[int, int]:
    """EVALSHA calls and their microseconds so far."""
    stats = (await raw.info("commandstats")).get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0)), int(stats.get("usec", 0))


async def ping_until(raw: redis.Redis, done: asyncio.Event) -> list[float]:
    """Round trips (ms) of PINGs from an unrelated client until `done`."""
    times = []
    while not done.is_set():
        began = time.perf_counter()
        await raw.ping()
        times.append((time.perf_counter() - began) * 1000)
        await asyncio.sleep(_PING_EVERY_S)
    return times


async def drained(store: QueueStore) -> None:
    while True:
        depth = await store.depth(0)
        if depth.waiting == 0 and depth.running == 0:
            return
        await asyncio.sleep(0.02)


def _cpu_s(processes: Sequence[subprocess.Popen[str]]) -> float:
    total = 0.0
    for process in processes:
        times = psutil.Process(process.pid).cpu_times()
        total += times.user + times.system
    return total


@asynccontextmanager
async def fleet(url: str, workers: int, slots: int) -> Any:
    processes = [fake_worker.start(url, f"bench{n}", slots=slots) for n in range(workers)]
    try:
        yield processes
    finally:
        for process in processes:
            fake_worker.stop(process)


async def point(
    tenants: int, workers: int, executions: int, slots: int, aof: bool
) -> dict[str, Any]:
    executions = max(executions, tenants)
    with tempfile.TemporaryDirectory() as directory:
        server = RedisServer(Path(directory))
        server.start()
        raw = redis.Redis.from_url(server.url)
        store = QueueStore(server.url, max_connections=4)
        try:
            if aof:
                await raw.config_set("appendonly", "yes")
                await raw.config_set("appendfsync", "everysec")
            await raw.config_set("slowlog-log-slower-than", 1000)
            await raw.config_set("slowlog-max-len", 1_000_000)
            async with fleet(server.url, workers, slots) as processes:
                for process in processes:
                    os.kill(process.pid, signal.SIGSTOP)
                cpu_before_fill = await redis_cpu_s(raw)
                fill_began = time.perf_counter()
                await fill(raw, tenants, executions)
                fill_s = time.perf_counter() - fill_began
                cpu_before = await redis_cpu_s(raw)
                calls_before = await script_calls(raw)
                await raw.slowlog_reset()
                workers_cpu_before = _cpu_s(processes)
                done = asyncio.Event()
                pinger = asyncio.create_task(ping_until(raw, done))
                began = time.perf_counter()
                for process in processes:
                    os.kill(process.pid, signal.SIGCONT)
                await drained(store)
                elapsed = time.perf_counter() - began
                done.set()
                pings = await pinger
                cpu_after = await redis_cpu_s(raw)
                calls_after = await script_calls(raw)
                workers_cpu = _cpu_s(processes) - workers_cpu_before
                slow = await raw.slowlog_len()
        finally:
            await store.close()
            await raw.aclose()
            server.stop()
    calls = calls_after[0] - calls_before[0]
    return {
        "tenants": tenants,
        "workers": workers,
        "slots_per_worker": slots,
        "aof_everysec": aof,
        "executions": executions,
        "elapsed_s": round(elapsed, 3),
        "per_s": round(executions / elapsed, 1),
        "redis_cpu_ms_per_execution": round((cpu_after - cpu_before) * 1000 / executions, 4),
        "workers_cpu_ms_per_execution": round(workers_cpu * 1000 / executions, 3),
        "script_calls_per_execution": round(calls / executions, 2),
        "script_us_per_call": round((calls_after[1] - calls_before[1]) / max(1, calls), 1),
        "calls_over_1ms": slow,
        "ping_ms": {f"p{q}": round(percentile(pings, q), 2) for q in (50, 99)}
        | {"max": round(max(pings), 2)},
        "fill": {
            "per_s": round(executions / fill_s, 1),
            "redis_cpu_ms_per_execution": round(
                (cpu_before - cpu_before_fill) * 1000 / executions, 4
            ),
        },
    }


def measure(
    tenant_counts: Sequence[int],
    worker_counts: Sequence[int],
    executions: int,
    slots: int,
    aof: bool,
) -> dict[str, Any]:
    plan = [(t, 4) for t in tenant_counts] + [(1000, w) for w in worker_counts if w != 4]
    points = []
    for tenants, workers in plan:
        print(f"queue ceiling: {tenants} tenants, {workers} workers", file=sys.stderr)
        points.append(asyncio.run(point(tenants, workers, executions, slots, aof)))
    return {
        "machine": {"cpus": os.cpu_count(), "load_1m_before": os.getloadavg()[0]},
        "redis": subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, check=True
        ).stdout.strip(),
        "targets": {"per_s": TARGET_PER_S, "redis_cpu_ms_per_execution": TARGET_CPU_MS},
        "points": points,
    }


def draw(results: dict[str, Any], path: Path) -> None:
    points = results["points"]
    by_tenants = sorted((p for p in points if p["workers"] == 4), key=lambda p: p["tenants"])
    by_workers = sorted((p for p in points if p["tenants"] == 1000), key=lambda p: p["workers"])
    figure, (rate, cpu, scale) = plt.subplots(1, 3, figsize=(15, 4.2))
    tenants = [p["tenants"] for p in by_tenants]
    rate.plot(tenants, [p["per_s"] for p in by_tenants], "o-", color="#1f4e96")
    rate.axhline(TARGET_PER_S, color="#c0392b", linestyle=":", label="target")
    rate.set(xscale="log", xlabel="active tenants", ylabel="executions / s",
             title="Throughput, 4 workers")  # fmt: skip
    cpu.plot(tenants, [p["redis_cpu_ms_per_execution"] for p in by_tenants], "o-",
             color="#1f4e96", label="take + run + finish")  # fmt: skip
    cpu.plot(tenants, [p["fill"]["redis_cpu_ms_per_execution"] for p in by_tenants], "s--",
             color="#86aee0", label="enqueue (pipelined)")  # fmt: skip
    cpu.axhline(TARGET_CPU_MS, color="#c0392b", linestyle=":", label="target")
    cpu.set(xscale="log", xlabel="active tenants", ylabel="Redis CPU ms / execution",
            title="Redis CPU per execution", ylim=(0, None))  # fmt: skip
    workers = [p["workers"] for p in by_workers]
    scale.plot(workers, [p["per_s"] for p in by_workers], "o-", color="#1f4e96")
    scale.axhline(TARGET_PER_S, color="#c0392b", linestyle=":", label="target")
    scale.set(xlabel="worker processes", ylabel="executions / s",
              title="Throughput, 1,000 tenants")  # fmt: skip
    for axes in (rate, cpu, scale):
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def report(results: dict[str, Any]) -> str:
    lines = [
        "# Queue ceiling (no jails)",
        "",
        f"{results['redis']}; {results['machine']['cpus']} cores, load average "
        f"{results['machine']['load_1m_before']:.1f} before the run (the workers, Redis and the "
        "load share them). Targets: "
        f"{TARGET_PER_S} executions/s at 1,000 tenants with 4 workers, Redis CPU at most "
        f"{TARGET_CPU_MS} ms per execution.",
        "",
        "![queue](queue.png)",
        "",
        "| tenants | workers | executions | exec/s | Redis CPU ms/exec | worker CPU ms/exec "
        "| scripts/exec | us/script | calls > 1 ms | PING p50/p99/max ms | enqueue CPU ms/exec |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in results["points"]:
        ping = p["ping_ms"]
        lines.append(
            f"| {p['tenants']:,} | {p['workers']} | {p['executions']:,} | {p['per_s']:,.0f} "
            f"| {p['redis_cpu_ms_per_execution']:.3f} | {p['workers_cpu_ms_per_execution']:.2f} "
            f"| {p['script_calls_per_execution']} | {p['script_us_per_call']} "
            f"| {p['calls_over_1ms']} | {ping['p50']}/{ping['p99']}/{ping['max']} "
            f"| {p['fill']['redis_cpu_ms_per_execution']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.queue_ceiling", description=__doc__)
    parser.add_argument("--tenants", default="10,1000,10000,100000")
    parser.add_argument("--workers", default="1,2,4,8")
    parser.add_argument("--executions", type=int, default=20_000)
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--aof", action="store_true", help="appendonly yes, appendfsync everysec")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    out = args.out or Path("benchmarks/results") / time.strftime("queue-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    results = measure(
        [int(t) for t in args.tenants.split(",")],
        [int(w) for w in args.workers.split(",")],
        args.executions,
        args.slots,
        args.aof,
    )
    (out / "queue.json").write_text(json.dumps(results, indent=2))
    draw(results, out / "queue.png")
    (out / "queue.md").write_text(report(results))
    print(report(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
