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
    """A quiet tenant's sequential executions, alone and while another tenant floods the daemon
    with more concurrent streams than its quota (the rest wait in its queue)."""
    _require(_has_module("sandboxd.tenants"), "fair admission (sandboxd.tenants)")
    quiet, flood = warm.for_tenant("quiet"), warm.for_tenant("flood")
    trivial = workloads.trivial()
    alone = (await load.sequential([quiet], trivial, plan.fairness_runs))[quiet.name]
    flooding = asyncio.create_task(
        load.closed_loop(flood, trivial, plan.flood_streams, plan.flood_s)
    )
    await asyncio.sleep(_FLOOD_RAMP_S)
    flooded: list[Sample] = []
    while not flooding.done():
        flooded.append(await quiet.execute(trivial))
    flood_samples, flood_elapsed_s = await flooding
    await warm.settle()
    return {
        "quiet_alone": stats.latency(alone),
        "quiet_flooded": stats.latency(flooded),
        "flood": stats.throughput(plan.flood_streams, flood_samples, flood_elapsed_s),
        "flood_refused": sum("QUOTA_EXCEEDED" in (s.error or "") for s in flood_samples),
    }


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
