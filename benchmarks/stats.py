"""Samples into the figures results.json holds: percentiles, throughput, CPU and memory."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # systems imports phases, which imports this module
    from benchmarks.systems import Sample

_ERRORS_KEPT = 3


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation between closest ranks."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency(samples: Sequence[Sample]) -> dict[str, Any]:
    """Count, errors and wall-time percentiles (ms) of the successful samples, and the samples
    themselves (ms, in the order they were taken) so that any figure can be recomputed."""
    ok_ms = [sample.wall_s * 1000 for sample in samples if sample.error is None]
    summary: dict[str, Any] = {
        "n": len(ok_ms),
        "errors": len(samples) - len(ok_ms),
        "error_examples": error_examples(samples),
        "samples_ms": [round(value, 3) for value in ok_ms],
    }
    waits_ms = [
        s.jail_wait_s * 1000 for s in samples if s.error is None and s.jail_wait_s is not None
    ]
    if waits_ms:
        summary["jail_wait_p50_ms"] = percentile(waits_ms, 50)
    figures = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "max_ms")
    if not ok_ms:
        return summary | dict.fromkeys(figures)
    return summary | {
        "p50_ms": percentile(ok_ms, 50),
        "p90_ms": percentile(ok_ms, 90),
        "p99_ms": percentile(ok_ms, 99),
        "mean_ms": sum(ok_ms) / len(ok_ms),
        "min_ms": min(ok_ms),
        "max_ms": max(ok_ms),
    }


def throughput(concurrency: int, samples: Sequence[Sample], elapsed_s: float) -> dict[str, Any]:
    """One point of the throughput curve: successful executions per second and their latency."""
    point = latency(samples)
    point["concurrency"] = concurrency
    point["elapsed_s"] = elapsed_s
    point["per_s"] = point["n"] / elapsed_s
    return point


def usage(samples: Sequence[Sample]) -> dict[str, float | None]:
    """Mean CPU (ms) and median peak memory (MiB) per execution, as the system reported them."""
    cpu = [s.cpu_s * 1000 for s in samples if s.error is None and s.cpu_s is not None]
    memory = [s.peak_memory_bytes for s in samples if s.error is None and s.peak_memory_bytes]
    return {
        "cpu_ms": sum(cpu) / len(cpu) if cpu else None,
        "peak_memory_mib": percentile(memory, 50) / 2**20 if memory else None,
    }


def error_examples(samples: Sequence[Sample]) -> list[str]:
    """The first few distinct error messages, for the report."""
    seen: list[str] = []
    for sample in samples:
        if sample.error is not None and sample.error not in seen:
            seen.append(sample.error)
            if len(seen) == _ERRORS_KEPT:
                break
    return seen
