"""PNG charts of a results.json: every system on the same axes, in the same colour everywhere,
with the floor (bare node) in grey."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, ScalarFormatter

from benchmarks.ratios import dig
from benchmarks.workloads import size_label

LABELS = {
    "bare_node": "bare node (floor)",
    "bubblewrap": "bubblewrap + node",
    "sandboxd_cold": "sandboxd cold (jail per execution)",
    "sandboxd_warm": "sandboxd warm (pool)",
}
COLORS = {
    "bare_node": "#6b6b6b",
    "bubblewrap": "#e08a1e",
    "sandboxd_cold": "#86aee0",
    "sandboxd_warm": "#1f4e96",
}
_PERCENTILES = ("p50_ms", "p90_ms", "p99_ms")
_DPI = 110


def draw_all(results: dict[str, Any], out_dir: Path) -> dict[str, str]:
    """Every chart the results have data for; figure name -> file name in ``out_dir``."""
    systems: list[str] = results.get("systems", [])
    drawn = {}
    for name, draw in (
        ("latency", _latency),
        ("startup", _startup),
        ("throughput", _throughput),
        ("demo", _demo),
        ("payloads", _payloads),
        ("resources", _resources),
    ):
        figure = draw(results, systems)
        figure.savefig(out_dir / f"{name}.png", dpi=_DPI, bbox_inches="tight")
        plt.close(figure)
        drawn[name] = f"{name}.png"
    return drawn


def _grouped_bars(
    axes: Axes, groups: Sequence[str], series: Mapping[str, Sequence[float | None]]
) -> None:
    """One group of bars per entry of ``groups``, one bar per series (a system) in each."""
    width = 0.8 / max(1, len(series))
    for index, (system, values) in enumerate(series.items()):
        positions = [
            group + (index - (len(series) - 1) / 2) * width for group in range(len(groups))
        ]
        heights = [value or 0.0 for value in values]
        bars = axes.bar(
            positions, heights, width, label=LABELS.get(system, system), color=_color(system)
        )
        axes.bar_label(bars, [_short(value) for value in values], fontsize=7, padding=1)
    axes.set_xticks(range(len(groups)), groups)


def _latency(results: dict[str, Any], systems: list[str]) -> Figure:
    figure, axes = plt.subplots(figsize=(8, 4.5))
    series = {s: [dig(results, "latency", s, p) for p in _PERCENTILES] for s in systems}
    _grouped_bars(axes, ["p50", "p90", "p99"], series)
    node = dig(results, "node_start", "p50_ms")
    if node is not None:
        axes.axhline(node, color="black", linestyle=":", linewidth=1, label="node -e 0 (p50)")
    axes.set_ylabel("ms per execution")
    axes.set_title("Trivial step at low load (sequential): latency percentiles")
    axes.legend(fontsize=8)
    return figure


def _startup(results: dict[str, Any], systems: list[str]) -> Figure:
    figure, axes = plt.subplots(figsize=(7, 4))
    series = {
        "node -e 0": [dig(results, "node_start", p) for p in ("p50_ms", "p99_ms")],
        "jail start (warm daemon's pool)": [
            dig(results, "jail_start", "sandboxd_warm", p) for p in ("p50_ms", "p99_ms")
        ],
        "jail wait of a cold execution": [
            dig(results, "latency", "sandboxd_cold", "jail_wait_p50_ms"),
            None,
        ],
    }
    _grouped_bars(axes, ["p50", "p99"], series)
    axes.set_ylabel("ms")
    axes.set_title("Starting a jail (runner ready) vs starting node")
    axes.legend(fontsize=8)
    return figure


def _throughput(results: dict[str, Any], systems: list[str]) -> Figure:
    figure, (rate, delay) = plt.subplots(1, 2, figsize=(12, 4.5))
    for system in systems:
        points = dig(results, "throughput", system) or []
        levels = [point["concurrency"] for point in points]
        style = {"color": _color(system), "marker": "o", "label": LABELS.get(system, system)}
        rate.plot(levels, [point["per_s"] for point in points], **style)
        delay.plot(levels, [point["p50_ms"] for point in points], **style)
        delay.plot(
            levels, [point["p99_ms"] for point in points], color=_color(system), linestyle="--"
        )
    for axes in (rate, delay):
        axes.set_xscale("log", base=2)
        axes.set_xlabel("concurrent streams")
        axes.grid(alpha=0.3)
    rate.set_ylabel("successful executions / s")
    rate.set_title("Throughput (closed loop, trivial step)")
    delay.set_ylabel("ms per execution (solid p50, dashed p99)")
    delay.set_yscale("log")
    delay.set_title("Latency under that load")
    rate.legend(fontsize=8)
    return figure


def _demo(results: dict[str, Any], systems: list[str]) -> Figure:
    figure, axes = plt.subplots(figsize=(7, 4))
    series = {s: [dig(results, "demo", s, p) for p in ("p50_ms", "p90_ms")] for s in systems}
    _grouped_bars(axes, ["p50", "p90"], series)
    axes.set_ylabel("ms end to end")
    axes.set_title("Demo integration: 6 steps, 200 orders of XML")
    axes.legend(fontsize=8)
    return figure


def _payloads(results: dict[str, Any], systems: list[str]) -> Figure:
    directions = list((results.get("payloads") or {}).keys())
    figure, grid = plt.subplots(
        1, max(1, len(directions)), figsize=(15, 4.2), squeeze=False, layout="constrained"
    )
    titles = {"in": "input", "out": "result", "between": "step 1 to step 2"}
    for axes, direction in zip(grid[0], directions, strict=False):
        sizes: list[int] = []
        for system in systems:
            points = dig(results, "payloads", direction, system) or []
            sizes = [point["size_bytes"] for point in points] or sizes
            axes.plot(
                sizes,
                [point["p50_ms"] for point in points],
                marker="o",
                color=_color(system),
                label=LABELS.get(system, system),
            )
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xticks(sizes, [size_label(size) for size in sizes])
        axes.minorticks_off()
        axes.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        axes.yaxis.set_major_formatter(ScalarFormatter())
        axes.set_xlabel("payload")
        axes.set_title(f"Payload as {titles.get(direction, direction)}")
        axes.grid(alpha=0.3)
    grid[0][0].set_ylabel("p50 ms per execution")
    grid[0][0].legend(fontsize=8)
    return figure


def _resources(results: dict[str, Any], systems: list[str]) -> Figure:
    figure, (cpu, memory) = plt.subplots(1, 2, figsize=(12, 4))
    names = [LABELS.get(s, s).replace(" (", "\n(") for s in systems]
    colors = [_color(s) for s in systems]
    host = [dig(results, "resources", s, "host_cpu_ms") for s in systems]
    bars = cpu.bar(names, [value or 0.0 for value in host], color=colors)
    cpu.bar_label(bars, [_short(value) for value in host], fontsize=8)
    daemon = [dig(results, "resources", s, "daemon_cpu_ms") or 0.0 for s in systems]
    cpu.bar(
        names,
        daemon,
        color="none",
        edgecolor="#222222",
        linewidth=0,
        hatch="//",
        label="daemon's own share",
    )
    cpu.set_ylabel("host CPU ms per execution")
    cpu.set_title("CPU per execution (n/a: not attributable)")
    cpu.legend(fontsize=8)
    peak = [dig(results, "resources", s, "rss_mib") for s in systems]
    bars = memory.bar(names, [value or 0.0 for value in peak], color=colors)
    memory.bar_label(bars, [_short(value) for value in peak], fontsize=8)
    memory.set_ylabel("MiB")
    memory.set_title("RSS of one execution's processes (sandboxd: an idle warm jail)")
    for axes in (cpu, memory):
        axes.tick_params(axis="x", labelsize=8)
    return figure


def _color(system: str) -> str | None:
    return COLORS.get(system)


def _short(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"
