"""Measurements of features that arrived after the core: sessions, tenant fairness, Redis mode.

Each one first detects its feature in this build of sandboxd and raises NotAvailable when it is
absent, so the report says "not available yet" instead of showing a number nobody measured.
``run`` collects them under ``extensions`` in results.json; a hook that fails is reported as
failed with its error, and the rest of the run goes on.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import shutil
import time
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks import load, stats, workloads
from benchmarks.plan import Plan
from benchmarks.systems import Sample, SandboxdSystem
from sandbox_client import SandboxError
from sandbox_client.v1 import sandbox_pb2

# The flood needs a moment to fill the daemon before the quiet tenant's numbers mean anything.
_FLOOD_RAMP_S = 0.5
# The paced quiet tenant: 10 executions a second, well below its half of the ~36 jails a second
# a 2-core host starts (a closed-loop one asks for ~100 a second: more than the host starts).
PACE_S = 0.1


class NotAvailable(Exception):
    """The feature a measurement needs is not in this build (yet)."""


async def session_overhead(warm: SandboxdSystem, plan: Plan) -> dict[str, Any]:
    """Step-to-step time in a session: the trivial step sent again and again into one live jail
    (no jail start, no process start), as the caller sees each round trip."""
    _require(_has_rpc("Session"), "a Session RPC in sandboxd.v1")
    samples: list[Sample] = []
    async with warm.client.session(tenant_id=warm.tenant_id) as session:
        for index in range(plan.warmup + plan.latency_runs):
            started = time.perf_counter()
            try:
                result = await session.step("add", workloads.TRIVIAL_CODE, {"n": index})
                error = None if result == {"ok": True, "n": index + 1} else "wrong result"
            except SandboxError as failure:
                error = f"{failure.kind.name}: {failure.message}"
            if index >= plan.warmup:
                samples.append(Sample(time.perf_counter() - started, error))
    return stats.latency(samples)


async def tenant_fairness(warm: SandboxdSystem, plan: Plan) -> dict[str, Any]:
    """A quiet tenant alone and while another tenant floods the daemon with more concurrent
    streams than its quota (the rest wait in its queue), two ways: paced (one execution every
    PACE_S, far less than its share of the jails the host starts: the fairness figure) and
    closed loop (back to back: it wants more than its share, so it waits for its turn too)."""
    _require(_has_module("sandboxd.tenants"), "fair admission (sandboxd.tenants)")
    quiet, flood = warm.for_tenant("quiet"), warm.for_tenant("flood")
    trivial = workloads.trivial()
    paced_alone = await _paced(quiet, trivial, lambda done: done >= plan.fairness_runs)
    closed_loop_alone = (await load.sequential([quiet], trivial, plan.fairness_runs))[quiet.name]
    flooding = _flood(flood, plan)
    await asyncio.sleep(_FLOOD_RAMP_S)
    paced_flooded = await _paced(quiet, trivial, lambda _: flooding.done())
    flood_samples, flood_elapsed_s = await flooding
    await warm.settle()
    flooding = _flood(flood, plan)
    await asyncio.sleep(_FLOOD_RAMP_S)
    closed_loop_flooded: list[Sample] = []
    while not flooding.done():
        closed_loop_flooded.append(await quiet.execute(trivial))
    second_samples, second_elapsed_s = await flooding
    await warm.settle()
    return {
        "pace_ms": PACE_S * 1000,
        "paced_alone": stats.latency(paced_alone),
        "paced_flooded": stats.latency(paced_flooded),
        "flood": stats.throughput(plan.flood_streams, flood_samples, flood_elapsed_s),
        "flood_refused": _refused(flood_samples),
        "closed_loop_alone": stats.latency(closed_loop_alone),
        "closed_loop_flooded": stats.latency(closed_loop_flooded),
        "flood_beside_closed_loop": stats.throughput(
            plan.flood_streams, second_samples, second_elapsed_s
        ),
        "flood_beside_closed_loop_refused": _refused(second_samples),
    }


def _flood(flood: SandboxdSystem, plan: Plan) -> asyncio.Task[tuple[list[Sample], float]]:
    return asyncio.create_task(
        load.closed_loop(flood, workloads.trivial(), plan.flood_streams, plan.flood_s)
    )


async def _paced(
    system: SandboxdSystem, workload: workloads.Workload, over: Callable[[int], bool]
) -> list[Sample]:
    """One execution every PACE_S until ``over(executions done)``; after a late one the next
    starts at once, with no burst to catch up (the tenant stays as quiet as it was)."""
    samples: list[Sample] = []
    due = time.perf_counter()
    while True:
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        if over(len(samples)):
            return samples
        samples.append(await system.execute(workload))
        due = max(due + PACE_S, time.perf_counter())


def _refused(samples: list[Sample]) -> int:
    return sum("QUOTA_EXCEEDED" in (sample.error or "") for sample in samples)


async def redis_mode(warm: SandboxdSystem, plan: Plan) -> dict[str, Any]:
    """Executions through Redis Streams (benchmarks/queue_bench.py, with its own redis-server and
    workers): throughput with 1 and 3 workers, enqueue-to-first-event and -to-result latency."""
    _require(_has_module("sandboxd.queue"), "the Redis mode (sandboxd.queue)")
    _require(_has_module("benchmarks.queue_bench"), "benchmarks/queue_bench.py")
    _require(shutil.which("redis-server") is not None, "redis-server on PATH")
    # By name: the module and its helpers come with the Redis mode and may be absent.
    measure = importlib.import_module("benchmarks.queue_bench").measure
    figures: dict[str, Any] = await asyncio.to_thread(
        measure, plan.queue_executions, plan.queue_latency_samples
    )
    return figures


Hook = Callable[[SandboxdSystem, Plan], Awaitable[dict[str, Any]]]
HOOKS: dict[str, Hook] = {
    "session_overhead": session_overhead,
    "tenant_fairness": tenant_fairness,
    "redis_mode": redis_mode,
}


async def run(warm: SandboxdSystem, plan: Plan) -> dict[str, dict[str, Any]]:
    """Every hook against the warm daemon: its figures, or why there are none."""
    outcomes: dict[str, dict[str, Any]] = {}
    for name, hook in HOOKS.items():
        try:
            outcomes[name] = {"status": "measured", "figures": await hook(warm, plan)}
        except NotAvailable as reason:
            outcomes[name] = {"status": "not available yet", "note": str(reason)}
        except Exception as error:  # a feature still in the works; keep the rest of the run
            outcomes[name] = {"status": "failed", "note": f"{type(error).__name__}: {error}"}
    return outcomes


def _require(present: bool, feature: str) -> None:
    if not present:
        raise NotAvailable(f"this build has no {feature}")


def _has_rpc(word: str) -> bool:
    """Whether any service or method in the generated sandboxd.v1 descriptor is named ``word``."""
    for service in sandbox_pb2.DESCRIPTOR.services_by_name.values():
        if word in service.name or any(word in method.name for method in service.methods):
            return True
    return False


def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None
