"""report.md from a results.json: the headline ratios first, then one section per measurement
with its table and chart, then what was not measured and what failed."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from benchmarks import ratios
from benchmarks.charts import LABELS
from benchmarks.ratios import dig
from benchmarks.workloads import size_label

_SUMMARY_HEADER = [
    "system",
    "n",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "mean ms",
    "max ms",
    "jail wait p50",
]
_RESOURCE_KEYS = ("host_cpu_ms", "daemon_cpu_ms", "jail_cpu_ms", "rss_mib", "jail_peak_mib")
_COST_KEYS = (
    "daemon_cpu_ms",
    "fork_server_cpu_ms",
    "own_cpu_ms",
    "fork_server_cpu_ms_per_jail",
    "client_cpu_ms",
)
_COST_HEADER = [
    "daemon",
    "daemon ms",
    "fork server ms",
    "together ms",
    "fork server ms/jail",
    "client ms",
    "jails started",
]
_BOUNDARY_LABELS = {
    "execution_started": "ExecutionStarted",
    "step_started": "StepStarted (first)",
    "step_finished": "StepFinished (last)",
    "execution_finished": "ExecutionFinished",
    "rpc_end": "end of the RPC",
}
_BETTER = {"lower": "lower is better", "higher": "higher is better"}


def render(results: dict[str, Any], charts: dict[str, str]) -> str:
    """The whole report as Markdown; ``charts`` maps figure names to PNG file names."""
    systems: list[str] = results.get("systems", [])
    sections = [
        _title(results),
        _headline(ratios.compute(results)),
        _latency(results, systems, charts),
        _startup(results, charts),
        _throughput(results, systems, charts),
        _demo(results, systems, charts),
        _payloads(results, systems, charts),
        _resources(results, systems, charts),
        _phases(results),
        _own_cost(results),
        _daemon_memory(results),
        _extensions(results),
        _problems(results, systems),
    ]
    return "\n\n".join(section for section in sections if section) + "\n"


def _title(results: dict[str, Any]) -> str:
    machine = results.get("machine", {})
    plan = results.get("plan", {})
    return "\n".join(
        [
            f"# sandboxd benchmarks: {results.get('mode')} mode, {results.get('started_at')}",
            "",
            f"{machine.get('cpus')} CPUs, kernel {machine.get('kernel')}, node "
            f"{machine.get('node')}, {machine.get('bwrap') or 'no bubblewrap'}, sandboxd "
            f"{machine.get('sandboxd')} (cgroups {machine.get('cgroup_mode')}, seccomp "
            f"{'on' if machine.get('seccomp') else 'OFF'}, warm pool "
            f"{machine.get('warm_pool_size')}). Load average before the run "
            f"{_n(machine.get('load_1m_at_start'))}. "
            f"Run took {results.get('duration_s', 0):.0f} s; "
            f"{plan.get('latency_runs')} sequential runs per system, throughput batches of "
            f"{plan.get('batch_s')} s x {plan.get('throughput_rounds')} rounds.",
            "",
            "Systems run the same step code on the same input bytes, interleaved round-robin. "
            "The baselines run `node` with an empty environment. See benchmarks/README.md for "
            "what each figure means.",
        ]
    )


def _headline(computed: list[ratios.Ratio]) -> str:
    lines = [
        "## Headline ratios",
        "",
        "| ratio | value | from | |",
        "|---|---:|---|---|",
    ]
    for index, ratio in enumerate(computed):
        if index == ratios.HEADLINE:
            lines += ["", "More ratios:", "", "| ratio | value | from | |", "|---|---:|---|---|"]
        lines.append(
            f"| {ratio.label} | **{_x(ratio.value)}** | {_n(ratio.numerator)} / "
            f"{_n(ratio.denominator)} {ratio.unit} | {_BETTER[ratio.better]} |"
        )
    return "\n".join(lines)


def _latency(results: dict[str, Any], systems: list[str], charts: dict[str, str]) -> str:
    rows = [[LABELS.get(s, s), *_summary_cells(dig(results, "latency", s))] for s in systems] + [
        ["`node -e 0` (start only)", *_summary_cells(results.get("node_start"))]
    ]
    return "\n".join(
        [
            "## Latency at low load",
            "",
            "A trivial step (`{n: input.n + 1}`), one execution at a time, each system in turn. "
            "Time from sending the request to holding the result with the execution over. "
            "Jail wait: how long sandboxd's execution waited for its jail (ExecutionStarted).",
            "",
            _table(_SUMMARY_HEADER, rows),
            "",
            _image(charts, "latency", "latency percentiles"),
        ]
    )


def _summary_cells(summary: dict[str, Any] | None) -> list[str]:
    summary = summary or {}
    keys = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "max_ms", "jail_wait_p50_ms")
    return [str(summary.get("n", 0)), *(_n(summary.get(key)) for key in keys)]


def _startup(results: dict[str, Any], charts: dict[str, str]) -> str:
    node = results.get("node_start") or {}
    pool = dig(results, "jail_start", "sandboxd_warm") or {}
    cold = dig(results, "latency", "sandboxd_cold") or {}
    rows = [
        ["`node -e 0`", _n(node.get("p50_ms")), _n(node.get("p99_ms")), str(node.get("n"))],
        [
            "jail start, warm daemon's pool (GetStatus)",
            _n(pool.get("p50_ms")),
            _n(pool.get("p99_ms")),
            str(pool.get("started")),
        ],
        [
            "jail wait of a cold execution (ExecutionStarted)",
            _n(cold.get("jail_wait_p50_ms")),
            "-",
            str(cold.get("n")),
        ],
    ]
    return "\n".join(
        [
            "## Jail start vs node start",
            "",
            "Jail start is the daemon's own figure (GetStatus `pool.start_ms_p50/p99` after the "
            "latency phase): from asking the fork server for a jail to the runner saying "
            "`ready`; the refills ran one at a time on a quiet machine, except the first fill of "
            "the pool at start-up. A cold execution's jail wait is the same start, as the "
            "execution saw it.",
            "",
            _table(["what", "p50 ms", "p99 ms", "samples"], rows),
            "",
            _image(charts, "startup", "jail start vs node start"),
        ]
    )


def _throughput(results: dict[str, Any], systems: list[str], charts: dict[str, str]) -> str:
    curves = {s: dig(results, "throughput", s) or [] for s in systems}
    levels = [point["concurrency"] for point in next(iter(curves.values()), [])]
    rows = []
    for index, level in enumerate(levels):
        cells = [str(level)]
        for system in systems:
            point = curves[system][index] if index < len(curves[system]) else {}
            cells.append(f"{_n(point.get('per_s'))} / {_n(point.get('p50_ms'))}")
        rows.append(cells)
    header = ["streams", *(f"{LABELS.get(s, s)}: exec/s / p50 ms" for s in systems)]
    return "\n".join(
        [
            "## Throughput against concurrency",
            "",
            "Closed loop: each stream starts its next execution when the last one ends. "
            "Successful executions per second, and their p50 latency.",
            "",
            _table(header, rows),
            "",
            _image(charts, "throughput", "throughput and latency against concurrency"),
        ]
    )


def _demo(results: dict[str, Any], systems: list[str], charts: dict[str, str]) -> str:
    rows = [[LABELS.get(s, s), *_summary_cells(dig(results, "demo", s))] for s in systems]
    return "\n".join(
        [
            "## Demo integration (6 steps)",
            "",
            "`sandboxd.demo`: fetch, parse, transform, validate, send_orders (prepared, not "
            "sent), summarise over a 200-order XML export; results pass between steps in the "
            "process.",
            "",
            _table(_SUMMARY_HEADER, rows),
            "",
            _image(charts, "demo", "demo integration"),
        ]
    )


def _payloads(results: dict[str, Any], systems: list[str], charts: dict[str, str]) -> str:
    lines = [
        "## Payloads",
        "",
        "p50 ms per execution. in: the input carries the bytes; out: the result does; between: "
        "step 1 returns them and step 2 reads `context.steps`.",
    ]
    for direction, curves in (results.get("payloads") or {}).items():
        sizes = [point["size_bytes"] for point in next(iter(curves.values()), [])]
        rows = [
            [size_label(size), *(_n(_point(curves, s, size).get("p50_ms")) for s in systems)]
            for size in sizes
        ]
        lines += [
            "",
            f"**{direction}**",
            "",
            _table(["size", *(LABELS.get(s, s) for s in systems)], rows),
        ]
    lines += ["", _image(charts, "payloads", "payload scaling")]
    return "\n".join(lines)


def _point(curves: dict[str, Any], system: str, size: int) -> dict[str, Any]:
    return next((p for p in curves.get(system, []) if p["size_bytes"] == size), {})


def _resources(results: dict[str, Any], systems: list[str], charts: dict[str, str]) -> str:
    rows = []
    for system in systems:
        figures = dig(results, "resources", system) or {}
        rows.append([LABELS.get(system, system), *(_n(figures.get(k)) for k in _RESOURCE_KEYS)])
    header = ["system", "host CPU ms", "daemon CPU ms", "jail CPU ms", "RSS MiB", "jail peak MiB"]
    return "\n".join(
        [
            "## CPU and memory per execution",
            "",
            "Over the throughput phase. host CPU: everything an execution cost the host (a "
            "baseline's process by wait4; a daemon's whole cgroup, jail starts included). "
            "daemon: the daemon's and fork server's own processes (psutil). jail CPU and jail "
            "peak: StepFinished.usage (the jail's cgroup; the peak is memory charged to it, "
            "which leaves out node's shared binary pages). RSS: a baseline's peak RSS; for "
            "sandboxd one idle warm jail (keeper + node), shared pages counted in both. "
            "bubblewrap shows n/a: bwrap exits without reaping its pid-1 helper, so wait4 "
            "cannot see node's CPU and memory.",
            "",
            _table(header, rows),
            "",
            _image(charts, "resources", "cpu and memory per execution"),
        ]
    )


def _phases(results: dict[str, Any]) -> str:
    lines = [
        "## Where a sandboxd execution's time goes",
        "",
        "The latency phase's trivial executions, boundary by boundary: p50 ms from sending the "
        "request until the event arrived at the caller, until the daemon stamped it "
        "(`ExecutionEvent.time`), and p50 of the phase ending there (from the boundary before, "
        "per execution).",
    ]
    for daemon, figures in (results.get("phases") or {}).items():
        rows = [
            [
                _BOUNDARY_LABELS.get(row["boundary"], row["boundary"]),
                _n(row.get("arrived_p50_ms")),
                _n(row.get("made_p50_ms")),
                _n(row.get("phase_p50_ms")),
            ]
            for row in figures.get("boundaries", [])
        ]
        lines += [
            "",
            f"**{LABELS.get(daemon, daemon)}** ({figures.get('n')} executions)",
            "",
            _table(["boundary", "arrived p50 ms", "stamped p50 ms", "phase p50 ms"], rows),
        ]
    return "\n".join(lines)


def _own_cost(results: dict[str, Any]) -> str:
    cost = results.get("cost") or {}
    cpu_rows = [
        [
            LABELS.get(daemon, daemon),
            *(_n(figures.get(key)) for key in _COST_KEYS),
            str(figures.get("jails_started")),
        ]
        for daemon, figures in cost.items()
    ]
    bare = dig(results, "latency", "bare_node", "cpu_ms")
    node = dig(results, "node_start", "cpu_ms")
    lines = [
        "## sandboxd's own cost per execution",
        "",
        "CPU of the daemon's process and of its fork server (psutil) around sequential trivial "
        "executions and the refill of the jails they used, per execution; the fork server's "
        "also per jail it started. client: the benchmark process's own CPU per execution. "
        f"Beside them, in the same run: bare node's CPU per execution {_n(bare)} ms, "
        f"`node -e 0`'s {_n(node)} ms (wait4).",
        "",
        _table(_COST_HEADER, cpu_rows),
        "",
        _syscalls(results.get("syscalls") or {}),
    ]
    return "\n".join(lines)


def _syscalls(figures: dict[str, Any]) -> str:
    if "status" in figures:
        return f"Syscalls: {figures['status']} ({figures.get('note')})."
    rows = [
        [process, _n(numbers.get("per_execution")), _top(numbers.get("top_per_execution") or {})]
        for system, counted in figures.items()
        for process, numbers in _traced_processes(LABELS.get(system, system), counted)
    ]
    return "\n".join(
        [
            "Syscalls per execution (`strace -c`): a daemon with every thread (`-f`) and its fork "
            "server (its own calls, not the jails it forks) around sequential trivial executions "
            "and their refills; a bare node execution with its children, the median of a few. "
            "The strace summaries are in the run's folder.",
            "",
            _table(["process", "syscalls per execution", "most frequent (per execution)"], rows),
        ]
    )


def _traced_processes(label: str, counted: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """A daemon's two processes, or a baseline's typical execution (at the median count)."""
    if "daemon" in counted:
        return [
            (f"{label}: daemon", counted["daemon"]),
            (f"{label}: fork server", counted["fork_server"]),
        ]
    return [
        (label, (counted.get("typical") or {}) | {"per_execution": counted.get("per_execution")})
    ]


def _top(calls: dict[str, float]) -> str:
    return ", ".join(f"{name} {count:.0f}" for name, count in calls.items())


def _daemon_memory(results: dict[str, Any]) -> str:
    rows = []
    for moment in ("before", "after"):
        for daemon, figures in (dig(results, "daemon_memory", moment) or {}).items():
            rows.append(
                [
                    f"{LABELS.get(daemon, daemon)}, {moment}",
                    _mib(figures.get("daemon_rss_bytes")),
                    _mib(figures.get("helpers_rss_bytes")),
                    str(figures.get("jails")),
                    _mib(figures.get("jails_rss_bytes")),
                ]
            )
    return "\n".join(
        [
            "## Daemon memory",
            "",
            "RSS (MiB) right after start and after every phase: the daemon, its fork server, "
            "and the idle jails alive then (the warm pool; shared pages counted in every "
            "process).",
            "",
            _table(["daemon", "daemon", "fork server", "jails", "jails' RSS"], rows),
        ]
    )


def _extensions(results: dict[str, Any]) -> str:
    lines = ["## Sessions, tenant fairness, Redis mode", ""]
    for name, outcome in (results.get("extensions") or {}).items():
        if outcome.get("status") != "measured":
            lines.append(f"- **{name}**: {outcome.get('status')} ({outcome.get('note')})")
            continue
        figures = outcome["figures"]
        if name == "session_overhead":
            lines.append(
                f"- **{name}**: one trivial step in an open session, p50 "
                f"{_n(figures.get('p50_ms'))} ms, p99 {_n(figures.get('p99_ms'))} ms over "
                f"{figures.get('n')} steps."
            )
        elif name == "tenant_fairness":
            lines.append(_fairness_line(figures))
        elif name == "redis_mode":
            lines.append(_redis_line(figures))
        else:
            lines.append(f"- **{name}**: {figures}")
    return "\n".join(lines)


def _fairness_line(figures: dict[str, Any]) -> str:
    paced, flooded, flood = (
        figures.get(k) or {} for k in ("paced_alone", "paced_flooded", "flood")
    )
    closed, closed_flooded, second_flood = (
        figures.get(k) or {}
        for k in ("closed_loop_alone", "closed_loop_flooded", "flood_beside_closed_loop")
    )
    return (
        f"- **tenant_fairness**: a quiet tenant's trivial executions, one every "
        f"{_n(figures.get('pace_ms'))} ms: p50 {_n(paced.get('p50_ms'))} ms alone, p50 "
        f"{_n(flooded.get('p50_ms'))} / p99 {_n(flooded.get('p99_ms'))} ms while another tenant "
        f"ran {flood.get('concurrency')} streams ({_n(flood.get('per_s'))} exec/s, p50 "
        f"{_n(flood.get('p50_ms'))} ms, {figures.get('flood_refused')} refused). Back to back "
        f"(it then wants more jails than its share): p50 {_n(closed.get('p50_ms'))} ms alone, "
        f"p50 {_n(closed_flooded.get('p50_ms'))} / p99 {_n(closed_flooded.get('p99_ms'))} ms "
        f"flooded (flood {_n(second_flood.get('per_s'))} exec/s, "
        f"{figures.get('flood_beside_closed_loop_refused')} refused)."
    )


def _redis_line(figures: dict[str, Any]) -> str:
    one, three = (figures.get(f"throughput_{n}_workers") or {} for n in (1, 3))
    latency = figures.get("latency_1_worker") or {}
    first, result = (
        latency.get(k) or {} for k in ("enqueue_to_first_event_ms", "enqueue_to_result_ms")
    )
    return (
        f"- **redis_mode** (benchmarks/queue_bench.py): {_n(one.get('per_s'))} exec/s with 1 "
        f"worker, {_n(three.get('per_s'))} with 3 ({one.get('executions')} executions each); one "
        f"at a time, enqueue to first event p50 {_n(first.get('p50'))} ms, to result p50 "
        f"{_n(result.get('p50'))} / p99 {_n(result.get('p99'))} ms."
    )


def _problems(results: dict[str, Any], systems: list[str]) -> str:
    found = list(_errors(results, systems))
    outcomes = results.get("daemon_outcomes") or {}
    lines = ["## Errors", ""]
    lines += found or ["No execution failed."]
    for daemon, figures in outcomes.items():
        lines.append(
            f"- {LABELS.get(daemon, daemon)} counted {figures.get('executions_by_outcome')}; "
            f"jails started {figures.get('pool_started')}, failed {figures.get('pool_failed')}."
        )
    return "\n".join(lines)


def _errors(results: dict[str, Any], systems: list[str]) -> Iterable[str]:
    """One line per summary with failed executions: where, how many, and the first messages."""
    places: list[tuple[str, Any]] = [(f"latency {s}", dig(results, "latency", s)) for s in systems]
    places += [(f"demo {s}", dig(results, "demo", s)) for s in systems]
    for s in systems:
        places += [
            (f"throughput {s} x{p['concurrency']}", p) for p in dig(results, "throughput", s) or []
        ]
        for direction, curves in (results.get("payloads") or {}).items():
            places += [
                (f"payload {direction} {size_label(p['size_bytes'])} {s}", p)
                for p in curves.get(s, [])
            ]
    for name, outcome in (results.get("extensions") or {}).items():
        for part, summary in (outcome.get("figures") or {}).items():
            if isinstance(summary, dict):
                places.append((f"{name} {part}", summary))
    for where, summary in places:
        if summary and summary.get("errors"):
            examples = "; ".join(summary.get("error_examples", []))
            yield f"- {where}: {summary['errors']} failed ({examples})"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _image(charts: dict[str, str], name: str, alt: str) -> str:
    return f"![{alt}]({charts[name]})" if name in charts else ""


def _n(value: Any) -> str:
    if not isinstance(value, int | float):
        return "n/a"
    return f"{value:.1f}" if abs(value) < 100 else f"{value:.0f}"


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _mib(value: Any) -> str:
    return f"{value / 2**20:.1f}" if isinstance(value, int | float) else "n/a"


def write(results: dict[str, Any], out_dir: Path, charts: dict[str, str]) -> Path:
    path = out_dir / "report.md"
    path.write_text(render(results, charts))
    return path
