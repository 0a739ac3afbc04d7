"""The ratios a run is judged by, computed from its results.json.

Every claim is a ratio of two numbers measured in the same run on the same machine, so machines
and days can be compared: an absolute millisecond figure moves with the host, a ratio to the floor
(bare node) or to a peer (bubblewrap) much less. The first four are the headline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from benchmarks.phases import phase_p50_ms

Better = Literal["lower", "higher"]


@dataclass(frozen=True)
class Ratio:
    key: str
    label: str
    better: Better
    value: float | None  # None when either side was not measured
    numerator: float | None
    denominator: float | None
    unit: str  # of numerator and denominator

    def as_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "better": self.better,
            "value": self.value,
            "numerator": self.numerator,
            "denominator": self.denominator,
            "unit": self.unit,
        }


def dig(results: dict[str, Any], *path: str | int) -> Any:
    """``results[path[0]][path[1]]...``, or None where anything on the way is missing."""
    value: Any = results
    for key in path:
        try:
            value = value[key]
        except (KeyError, IndexError, TypeError):
            return None
    return value


def peak_throughput(results: dict[str, Any], system: str) -> float | None:
    """The highest point of a system's throughput curve (executions per second)."""
    points = [point.get("per_s") for point in dig(results, "throughput", system) or []]
    values = [value for value in points if value is not None]
    return max(values, default=None)


def _payload_p50(results: dict[str, Any], direction: str, system: str, size: int) -> Any:
    for point in dig(results, "payloads", direction, system) or []:
        if point.get("size_bytes") == size:
            return point.get("p50_ms")
    return None


Getter = Callable[[dict[str, Any]], Any]
_REDIS = ("extensions", "redis_mode", "figures")
_FAIRNESS = ("extensions", "tenant_fairness", "figures")
_MiB16 = 16 * 1024 * 1024

# key, label, better, unit, numerator, denominator
_DEFINITIONS: tuple[tuple[str, str, Better, str, Getter, Getter], ...] = (
    (
        "warm_vs_bare_node_p50",
        "sandboxd warm vs bare node: p50 latency, trivial step",
        "lower",
        "ms",
        lambda r: dig(r, "latency", "sandboxd_warm", "p50_ms"),
        lambda r: dig(r, "latency", "bare_node", "p50_ms"),
    ),
    (
        "cold_vs_bubblewrap_p50",
        "sandboxd cold vs bubblewrap: p50 latency, trivial step",
        "lower",
        "ms",
        lambda r: dig(r, "latency", "sandboxd_cold", "p50_ms"),
        lambda r: dig(r, "latency", "bubblewrap", "p50_ms"),
    ),
    (
        "jail_start_vs_node_start_p50",
        "jail start (warm daemon's pool, p50) vs `node -e 0` p50",
        "lower",
        "ms",
        lambda r: dig(r, "jail_start", "sandboxd_warm", "p50_ms"),
        lambda r: dig(r, "node_start", "p50_ms"),
    ),
    (
        "warm_saturation_vs_bare_node",
        "sandboxd warm vs bare node: throughput at saturation",
        "higher",
        "exec/s",
        lambda r: peak_throughput(r, "sandboxd_warm"),
        lambda r: peak_throughput(r, "bare_node"),
    ),
    (
        "warm_vs_bare_node_p99",
        "sandboxd warm vs bare node: p99 latency, trivial step",
        "lower",
        "ms",
        lambda r: dig(r, "latency", "sandboxd_warm", "p99_ms"),
        lambda r: dig(r, "latency", "bare_node", "p99_ms"),
    ),
    (
        "cold_jail_wait_vs_node_start_p50",
        "a cold execution's wait for its jail vs `node -e 0`: p50",
        "lower",
        "ms",
        lambda r: dig(r, "latency", "sandboxd_cold", "jail_wait_p50_ms"),
        lambda r: dig(r, "node_start", "p50_ms"),
    ),
    (
        "cold_saturation_vs_bubblewrap",
        "sandboxd cold vs bubblewrap: throughput at saturation",
        "higher",
        "exec/s",
        lambda r: peak_throughput(r, "sandboxd_cold"),
        lambda r: peak_throughput(r, "bubblewrap"),
    ),
    (
        "demo_warm_vs_bare_node_p50",
        "demo integration (6 steps), sandboxd warm vs bare node: p50",
        "lower",
        "ms",
        lambda r: dig(r, "demo", "sandboxd_warm", "p50_ms"),
        lambda r: dig(r, "demo", "bare_node", "p50_ms"),
    ),
    (
        "payload_16mib_between_warm_vs_bare_node",
        "16 MiB from step 1 to step 2, sandboxd warm vs bare node: p50",
        "lower",
        "ms",
        lambda r: _payload_p50(r, "between", "sandboxd_warm", _MiB16),
        lambda r: _payload_p50(r, "between", "bare_node", _MiB16),
    ),
    (
        "payload_16mib_in_warm_vs_bare_node",
        "16 MiB input, sandboxd warm vs bare node: p50",
        "lower",
        "ms",
        lambda r: _payload_p50(r, "in", "sandboxd_warm", _MiB16),
        lambda r: _payload_p50(r, "in", "bare_node", _MiB16),
    ),
    (
        "host_cpu_warm_vs_bare_node",
        "host CPU per execution, sandboxd warm vs bare node",
        "lower",
        "ms",
        lambda r: dig(r, "resources", "sandboxd_warm", "host_cpu_ms"),
        lambda r: dig(r, "resources", "bare_node", "host_cpu_ms"),
    ),
    (
        "session_step_vs_warm_execution_p50",
        "session step vs a whole warm execution: p50",
        "lower",
        "ms",
        lambda r: dig(r, "extensions", "session_overhead", "figures", "p50_ms"),
        lambda r: dig(r, "latency", "sandboxd_warm", "p50_ms"),
    ),
    (
        "fairness_quiet_flooded_vs_alone_p50",
        "quiet tenant (paced, 10/s) during another tenant's flood vs alone: p50",
        "lower",
        "ms",
        lambda r: dig(r, *_FAIRNESS, "paced_flooded", "p50_ms"),
        lambda r: dig(r, *_FAIRNESS, "paced_alone", "p50_ms"),
    ),
    (
        "fairness_second_closed_loop_vs_alone_p50",
        "second tenant (closed loop) during another tenant's flood vs alone: p50",
        "lower",
        "ms",
        lambda r: _closed_loop_p50(r, "flooded"),
        lambda r: _closed_loop_p50(r, "alone"),
    ),
    (
        "redis_result_vs_warm_execution_p50",
        "Redis mode, enqueue to result vs a direct warm execution: p50",
        "lower",
        "ms",
        lambda r: dig(r, *_REDIS, "latency_1_worker", "enqueue_to_result_ms", "p50"),
        lambda r: dig(r, "latency", "sandboxd_warm", "p50_ms"),
    ),
    (
        "redis_3_vs_1_workers_throughput",
        "Redis mode, throughput with 3 workers vs 1",
        "higher",
        "exec/s",
        lambda r: dig(r, *_REDIS, "throughput_3_workers", "per_s"),
        lambda r: dig(r, *_REDIS, "throughput_1_workers", "per_s"),
    ),
    (
        "warm_own_cpu_vs_bare_node_cpu",
        "daemon + fork server CPU per warm execution vs bare node's CPU per execution",
        "lower",
        "ms",
        lambda r: dig(r, "cost", "sandboxd_warm", "own_cpu_ms"),
        lambda r: dig(r, "latency", "bare_node", "cpu_ms"),
    ),
    (
        "fork_server_cpu_per_jail_vs_node_start_cpu",
        "fork server CPU per jail started vs `node -e 0` CPU",
        "lower",
        "ms",
        lambda r: dig(r, "cost", "sandboxd_warm", "fork_server_cpu_ms_per_jail"),
        lambda r: dig(r, "node_start", "cpu_ms"),
    ),
    (
        "warm_syscalls_vs_bare_node",
        "daemon + fork server syscalls per warm execution vs a bare node execution's",
        "lower",
        "calls",
        lambda r: dig(r, "syscalls", "sandboxd_warm", "per_execution"),
        lambda r: dig(r, "syscalls", "bare_node", "per_execution"),
    ),
    (
        "warm_rpc_tail_vs_warm_p50",
        "warm: ExecutionFinished to the RPC's end (p50) vs the whole execution (p50)",
        "lower",
        "ms",
        lambda r: phase_p50_ms(dig(r, "phases", "sandboxd_warm"), "rpc_end"),
        lambda r: dig(r, "latency", "sandboxd_warm", "p50_ms"),
    ),
    (
        "warm_daemon_rss_after_vs_before",
        "sandboxd warm daemon RSS after the run vs before",
        "lower",
        "MiB",
        lambda r: _mib(dig(r, "daemon_memory", "after", "sandboxd_warm", "daemon_rss_bytes")),
        lambda r: _mib(dig(r, "daemon_memory", "before", "sandboxd_warm", "daemon_rss_bytes")),
    ),
)
HEADLINE = 4  # the first four definitions


def _closed_loop_p50(results: dict[str, Any], phase: str) -> Any:
    """The closed-loop quiet tenant's p50 (``phase``: alone or flooded). Results from before the
    paced tenant was measured name the same measurement ``quiet_<phase>``."""
    figures = dig(results, *_FAIRNESS)
    measured = dig(figures, f"closed_loop_{phase}", "p50_ms")
    return measured if measured is not None else dig(figures, f"quiet_{phase}", "p50_ms")


def _mib(value: Any) -> float | None:
    return value / 2**20 if isinstance(value, int | float) else None


def compute(results: dict[str, Any]) -> list[Ratio]:
    """Every ratio of ``results``; value None where a side is missing or zero."""
    ratios = []
    for key, label, better, unit, numerator_of, denominator_of in _DEFINITIONS:
        numerator, denominator = numerator_of(results), denominator_of(results)
        value = numerator / denominator if numerator is not None and denominator else None
        ratios.append(Ratio(key, label, better, value, numerator, denominator, unit))
    return ratios
