"""How much of each phase a run does: the quick mode (default, < 5 minutes on 2 cores) and the
full mode (``--full``: more samples, longer batches, and 64 MiB payloads)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from benchmarks.workloads import KiB, MiB

LARGE_PAYLOAD = 64 * MiB


@dataclass(frozen=True)
class Plan:
    mode: str
    warmup: int  # trivial executions per system before anything is measured
    latency_runs: int  # sequential trivial executions per system (and session steps)
    concurrency: tuple[int, ...]  # points of the throughput curve
    throughput_rounds: int  # closed-loop batches per system and point
    batch_s: float  # length of one batch
    demo_runs: int
    payload_sizes: tuple[int, ...]
    payload_runs: int  # per system, size and direction
    fairness_runs: int  # the quiet tenant's executions without a flood
    flood_streams: int  # the flooding tenant's concurrent streams (above its quota of 16)
    flood_s: float
    queue_executions: int  # Redis mode: executions enqueued at once, per worker count
    queue_latency_samples: int  # Redis mode: one execution at a time
    cost_runs: int  # sequential trivial executions per daemon around its CPU time
    syscall_runs: int  # sequential trivial executions per daemon under strace
    baseline_syscall_runs: int  # bare node executions under strace


QUICK = Plan(
    mode="quick",
    warmup=3,
    latency_runs=50,
    concurrency=(1, 2, 4, 8, 16, 32),
    throughput_rounds=3,
    batch_s=1.0,
    demo_runs=10,
    payload_sizes=(KiB, MiB, 16 * MiB),
    payload_runs=5,
    fairness_runs=10,
    flood_streams=32,
    flood_s=4.0,
    queue_executions=60,
    queue_latency_samples=20,
    cost_runs=50,
    syscall_runs=20,
    baseline_syscall_runs=5,
)
FULL = Plan(
    mode="full",
    warmup=10,
    latency_runs=300,
    concurrency=(1, 2, 4, 8, 16, 32),
    throughput_rounds=3,
    batch_s=4.0,
    demo_runs=50,
    payload_sizes=(KiB, MiB, 16 * MiB, LARGE_PAYLOAD),
    payload_runs=10,
    fairness_runs=50,
    flood_streams=32,
    flood_s=15.0,
    queue_executions=300,
    queue_latency_samples=100,
    cost_runs=200,
    syscall_runs=50,
    baseline_syscall_runs=10,
)


def with_runs(plan: Plan, runs: int) -> Plan:
    """``plan`` with ``runs`` samples wherever it takes a count of samples (warm-up at most
    that); its mode says so, so no one mistakes it for the mode's own figures."""
    if runs < 1:
        raise ValueError(f"runs must be at least 1, not {runs}")
    return dataclasses.replace(
        plan,
        mode=f"{plan.mode} (--runs {runs})",
        warmup=min(plan.warmup, runs),
        latency_runs=runs,
        demo_runs=runs,
        payload_runs=runs,
        fairness_runs=runs,
        queue_latency_samples=runs,
        cost_runs=runs,
        syscall_runs=runs,
        baseline_syscall_runs=runs,
    )
