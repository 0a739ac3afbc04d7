"""The benchmarks' arithmetic and reporting on small synthetic results (no daemon, no load).

Nothing here measures time: the samples are made up, and every figure is checked exactly.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import (
    __main__,
    charts,
    compare,
    load,
    phases,
    plan,
    provenance,
    ratios,
    report,
    run,
    stats,
    syscalls,
    workloads,
)
from benchmarks.systems import HARNESS, Sample, run_process
from sandbox_client import Step
from sandbox_client.v1 import sandbox_pb2 as pb

SYSTEMS = ["bare_node", "bubblewrap", "sandboxd_cold", "sandboxd_warm"]
MiB = 2**20


def summary(p50: float, p99: float | None = None, errors: int = 0) -> dict[str, Any]:
    return {
        "n": 10,
        "errors": errors,
        "error_examples": ["TIMEOUT: too slow"] if errors else [],
        "p50_ms": p50,
        "p90_ms": p50,
        "p99_ms": p99 if p99 is not None else p50,
        "mean_ms": p50,
        "min_ms": p50,
        "max_ms": p50,
    }


def curve(*rates: float) -> list[dict[str, Any]]:
    return [
        {**summary(10.0 * level), "concurrency": level, "per_s": rate, "elapsed_s": 1.0}
        for level, rate in zip((1, 8, 32), rates, strict=True)
    ]


def payload_points(p50_16mib: float) -> list[dict[str, Any]]:
    return [{"size_bytes": 1024, **summary(5.0)}, {"size_bytes": 16 * MiB, **summary(p50_16mib)}]


def boundaries(*phase_ms: float) -> dict[str, Any]:
    """A phases summary whose phases (send -> ExecutionStarted -> ... -> end) last ``phase_ms``."""
    rows, at = [], 0.0
    for boundary, length in zip(phases.BOUNDARIES, phase_ms, strict=True):
        at += length
        rows.append(
            {"boundary": boundary, "arrived_p50_ms": at, "made_p50_ms": at, "phase_p50_ms": length}
        )
    return {"n": 10, "boundaries": rows}


def traced(daemon: float, fork_server: float) -> dict[str, Any]:
    return {
        "executions": 10,
        "jails_started": 10,
        "errors": 0,
        "per_execution": daemon + fork_server,
        "daemon": {"per_execution": daemon, "top_per_execution": {"epoll_wait": 40.0}},
        "fork_server": {"per_execution": fork_server, "top_per_execution": {"close": 30.0}},
    }


def synthetic(scale: float = 1.0) -> dict[str, Any]:
    """A results.json as a quick run writes it; ``scale`` stretches sandboxd's latencies."""
    latency = {
        "bare_node": summary(40.0, 50.0) | {"cpu_ms": 50.0},
        "bubblewrap": summary(50.0),
        "sandboxd_cold": summary(75.0 * scale) | {"jail_wait_p50_ms": 44.0},
        "sandboxd_warm": summary(20.0 * scale, 40.0) | {"jail_wait_p50_ms": 0.1},
    }
    return {
        "schema": 1,
        "mode": "quick",
        "started_at": "2026-11-26T12:00:00+00:00",
        "duration_s": 200.0,
        "plan": {"latency_runs": 10, "batch_s": 1.0, "throughput_rounds": 2},
        "systems": SYSTEMS,
        "source": {"commit": "0123456789abcdef" * 2 + "01234567", "dirty": False},
        "machine": {
            "cpu_model": "AMD EPYC",
            "cpus": 2,
            "kernel": "6.1",
            "node": "v20",
            "cgroup_mode": "v1",
            "seccomp": True,
        },
        "latency": latency,
        "node_start": summary(25.0) | {"cpu_ms": 40.0},
        "phases": {
            "sandboxd_warm": boundaries(2.0, 4.0, 5.0, 1.0, 8.0 * scale),
            "sandboxd_cold": boundaries(60.0, 4.0, 5.0, 1.0, 5.0),
        },
        "cost": {
            "sandboxd_warm": {
                "executions": 10,
                "jails_started": 10,
                "daemon_cpu_ms": 10.0,
                "fork_server_cpu_ms": 2.5,
                "own_cpu_ms": 12.5,
                "fork_server_cpu_ms_per_jail": 3.0,
                "client_cpu_ms": 2.0,
            }
        },
        "syscalls": {
            "sandboxd_warm": traced(300.0, 100.0),
            "bare_node": {
                "executions": 3,
                "per_execution": 800,
                "totals": [790, 800, 810],
                "typical": {"per_execution": 800.0, "top_per_execution": {"mmap": 63.0}},
            },
        },
        "jail_start": {"sandboxd_warm": {"p50_ms": 30.0, "p99_ms": 45.0, "started": 50}},
        "throughput": {
            "bare_node": curve(25.0, 50.0, 48.0),
            "bubblewrap": curve(22.0, 40.0, 41.0),
            "sandboxd_cold": curve(12.0, 20.0, 20.0),
            "sandboxd_warm": curve(30.0, 36.0, 35.0),
        },
        "resources": {
            "bare_node": {"host_cpu_ms": 40.0, "rss_mib": 45.0},
            "bubblewrap": {"host_cpu_ms": None, "rss_mib": None},
            "sandboxd_cold": {"host_cpu_ms": 70.0, "daemon_cpu_ms": 9.0, "jail_cpu_ms": 2.0},
            "sandboxd_warm": {"host_cpu_ms": 60.0, "daemon_cpu_ms": 8.0, "rss_mib": 55.0},
        },
        "demo": {system: summary(100.0) for system in SYSTEMS},
        "payloads": {
            direction: {system: payload_points(80.0) for system in SYSTEMS}
            for direction in workloads.DIRECTIONS
        },
        "daemon_memory": {
            "before": {"sandboxd_warm": {"daemon_rss_bytes": 40 * MiB, "jails": 4}},
            "after": {"sandboxd_warm": {"daemon_rss_bytes": 60 * MiB, "jails": 4}},
        },
        "extensions": {
            "session_overhead": {"status": "measured", "figures": summary(2.0)},
            "tenant_fairness": {
                "status": "measured",
                "figures": {
                    "pace_ms": 100.0,
                    "paced_alone": summary(20.0),
                    "paced_flooded": summary(60.0),
                    "flood": {**summary(900.0), "concurrency": 32, "per_s": 30.0},
                    "flood_refused": 0,
                    "closed_loop_alone": summary(10.0),
                    "closed_loop_flooded": summary(200.0),
                    "flood_beside_closed_loop": {**summary(950.0), "per_s": 25.0},
                    "flood_beside_closed_loop_refused": 1,
                },
            },
            "redis_mode": {
                "status": "measured",
                "figures": {
                    "throughput_1_workers": {"executions": 60, "per_s": 10.0},
                    "throughput_3_workers": {"executions": 60, "per_s": 15.0},
                    "latency_1_worker": {
                        "enqueue_to_first_event_ms": {"p50": 4.0, "p90": 5.0, "p99": 6.0},
                        "enqueue_to_result_ms": {"p50": 30.0, "p90": 40.0, "p99": 50.0},
                    },
                },
            },
        },
        "daemon_outcomes": {"sandboxd_warm": {"executions_by_outcome": {"SUCCEEDED": 9}}},
    }


def test_percentile_interpolates_between_ranks() -> None:
    assert stats.percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert stats.percentile([1.0, 2.0, 3.0, 4.0], 0) == 1.0
    assert stats.percentile([1.0, 2.0, 3.0, 4.0], 100) == 4.0
    assert stats.percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        stats.percentile([], 50)


def test_latency_counts_failures_apart_from_the_figures() -> None:
    samples = [Sample(0.010), Sample(0.030), Sample(9.0, "TIMEOUT: x"), Sample(9.0, "TIMEOUT: x")]
    figures = stats.latency(samples)
    assert figures["n"] == 2
    assert figures["errors"] == 2
    assert figures["error_examples"] == ["TIMEOUT: x"]
    assert figures["p50_ms"] == pytest.approx(20.0)
    assert figures["max_ms"] == pytest.approx(30.0)
    assert "jail_wait_p50_ms" not in figures


def test_latency_of_only_failures_has_no_figures() -> None:
    figures = stats.latency([Sample(1.0, "CRASHED: gone")])
    assert figures["n"] == 0
    assert figures["p50_ms"] is None
    assert figures["max_ms"] is None


def test_throughput_counts_successes_per_second() -> None:
    samples = [Sample(0.1)] * 6 + [Sample(0.1, "UNAVAILABLE: draining")]
    point = stats.throughput(8, samples, elapsed_s=2.0)
    assert point["per_s"] == 3.0
    assert point["concurrency"] == 8
    assert point["errors"] == 1


def test_usage_and_jail_wait_of_samples() -> None:
    samples = [
        Sample(0.05, cpu_s=0.002, peak_memory_bytes=8 * MiB, jail_wait_s=0.040),
        Sample(0.05, cpu_s=0.004, peak_memory_bytes=10 * MiB, jail_wait_s=0.060),
    ]
    assert stats.usage(samples) == {"cpu_ms": pytest.approx(3.0), "peak_memory_mib": 9.0}
    assert stats.latency(samples)["jail_wait_p50_ms"] == pytest.approx(50.0)
    assert stats.usage([Sample(0.05)]) == {"cpu_ms": None, "peak_memory_mib": None}


def test_rotation_starts_each_round_with_the_next_system() -> None:
    systems: list[Any] = ["a", "b", "c"]
    orders: list[list[Any]] = [load.rotated(systems, index) for index in (0, 1, 5)]
    assert orders == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]


def test_headline_ratios_of_synthetic_results() -> None:
    computed = {ratio.key: ratio for ratio in ratios.compute(synthetic())}
    assert computed["warm_vs_bare_node_p50"].value == pytest.approx(0.5)
    assert computed["cold_vs_bubblewrap_p50"].value == pytest.approx(1.5)
    assert computed["jail_start_vs_node_start_p50"].value == pytest.approx(1.2)
    assert computed["warm_saturation_vs_bare_node"].value == pytest.approx(36.0 / 50.0)
    assert computed["cold_jail_wait_vs_node_start_p50"].value == pytest.approx(44.0 / 25.0)
    assert computed["payload_16mib_between_warm_vs_bare_node"].value == pytest.approx(1.0)
    assert computed["host_cpu_warm_vs_bare_node"].value == pytest.approx(1.5)
    assert computed["session_step_vs_warm_execution_p50"].value == pytest.approx(0.1)
    assert computed["fairness_quiet_flooded_vs_alone_p50"].value == pytest.approx(3.0)
    assert computed["fairness_second_closed_loop_vs_alone_p50"].value == pytest.approx(20.0)
    assert computed["redis_result_vs_warm_execution_p50"].value == pytest.approx(1.5)
    assert computed["redis_3_vs_1_workers_throughput"].value == pytest.approx(1.5)
    assert computed["warm_daemon_rss_after_vs_before"].value == pytest.approx(1.5)
    assert computed["warm_own_cpu_vs_bare_node_cpu"].value == pytest.approx(12.5 / 50.0)
    assert computed["fork_server_cpu_per_jail_vs_node_start_cpu"].value == pytest.approx(3 / 40)
    assert computed["warm_syscalls_vs_bare_node"].value == pytest.approx(400.0 / 800.0)
    assert computed["warm_rpc_tail_vs_warm_p50"].value == pytest.approx(8.0 / 20.0)
    assert [ratio.key for ratio in ratios.compute(synthetic())][: ratios.HEADLINE] == [
        "warm_vs_bare_node_p50",
        "cold_vs_bubblewrap_p50",
        "jail_start_vs_node_start_p50",
        "warm_saturation_vs_bare_node",
    ]


def test_fairness_of_results_from_before_the_paced_tenant() -> None:
    # Then the only quiet tenant ran back to back, named quiet_*: it is the closed-loop figure,
    # and the paced figure is missing (compare says so) rather than compared with another one.
    old = synthetic()
    old["extensions"]["tenant_fairness"]["figures"] = {
        "quiet_alone": summary(20.0),
        "quiet_flooded": summary(400.0),
    }
    computed = {ratio.key: ratio for ratio in ratios.compute(old)}
    assert computed["fairness_second_closed_loop_vs_alone_p50"].value == pytest.approx(20.0)
    assert computed["fairness_quiet_flooded_vs_alone_p50"].value is None
    table = compare.rows(synthetic(), old)
    paced = next(row for row in table if row.label.startswith("quiet tenant (paced"))
    assert (paced.reference, paced.today, paced.missing) == (None, 3.0, True)


def test_a_ratio_with_a_missing_side_has_no_value() -> None:
    results = synthetic()
    del results["latency"]["bubblewrap"]
    results["extensions"]["session_overhead"] = {"status": "not available yet"}
    del results["extensions"]["redis_mode"]
    computed = {ratio.key: ratio for ratio in ratios.compute(results)}
    assert computed["cold_vs_bubblewrap_p50"].value is None
    assert computed["session_step_vs_warm_execution_p50"].value is None
    assert computed["redis_3_vs_1_workers_throughput"].value is None


def test_compare_flags_only_changes_beyond_twenty_percent_the_bad_way() -> None:
    table = {row.label: row for row in compare.rows(synthetic(scale=1.3), synthetic())}
    warm = table["sandboxd warm vs bare node: p50 latency, trivial step"]
    assert warm.change == pytest.approx(0.3)
    assert warm.regressed
    cold = table["sandboxd cold vs bubblewrap: p50 latency, trivial step"]
    assert cold.regressed
    steady = table["sandboxd warm vs bare node: throughput at saturation"]
    assert steady.change == pytest.approx(0.0)
    assert not steady.regressed

    faster = {row.label: row for row in compare.rows(synthetic(scale=0.5), synthetic())}
    improved = faster["sandboxd warm vs bare node: p50 latency, trivial step"]
    assert improved.change == pytest.approx(-0.5)
    assert not improved.regressed


def test_compare_flags_a_throughput_drop() -> None:
    today = synthetic()
    today["throughput"]["sandboxd_warm"] = curve(20.0, 25.0, 24.0)  # peak 36 -> 25: -31%
    table = {row.label: row for row in compare.rows(today, synthetic())}
    assert table["sandboxd warm vs bare node: throughput at saturation"].regressed


def test_compare_renders_one_table_with_flags(tmp_path: Path) -> None:
    today, reference = synthetic(scale=1.3), synthetic()
    today["latency"].pop("bubblewrap")
    text = compare.render(compare.rows(today, reference), today, reference)
    assert "REGRESSION" in text
    assert "n/a" in text
    assert text.splitlines()[-1] == "1 regression(s) beyond 20%, 1 figure(s) missing"

    today_path, reference_path = tmp_path / "today.json", tmp_path / "reference.json"
    today_path.write_text(json.dumps(today))
    reference_path.write_text(json.dumps(reference))
    assert compare.main(today_path, reference_path) == 1


def test_compare_passes_when_every_figure_is_there_and_none_regressed(tmp_path: Path) -> None:
    today_path, reference_path = tmp_path / "today.json", tmp_path / "reference.json"
    today_path.write_text(json.dumps(synthetic(scale=1.1)))
    reference_path.write_text(json.dumps(synthetic()))
    assert compare.main(today_path, reference_path) == 0


def test_compare_fails_when_a_figure_is_missing_on_either_side(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    without_syscalls = synthetic()
    del without_syscalls["syscalls"]
    today_path, reference_path = tmp_path / "today.json", tmp_path / "reference.json"
    today_path.write_text(json.dumps(without_syscalls))
    reference_path.write_text(json.dumps(synthetic(scale=0.9)))
    assert compare.main(today_path, reference_path) == 1
    printed = capsys.readouterr().out
    assert "0 regression(s) beyond 20%, 1 figure(s) missing" in printed
    missing_line = next(line for line in printed.splitlines() if "syscalls per warm" in line)
    assert missing_line.endswith("MISSING")
    # An old reference without the figure fails just the same: it needs refreshing.
    assert compare.main(reference_path, today_path) == 1


def test_compare_refuses_a_file_with_itself_or_its_copy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reference_path, copy = tmp_path / "reference.json", tmp_path / "results.json"
    reference_path.write_text(json.dumps(synthetic()))
    copy.write_bytes(reference_path.read_bytes())
    assert compare.main(reference_path, reference_path) == 2
    assert compare.main(copy, reference_path) == 2
    assert "are the same results: nothing to compare" in capsys.readouterr().err


def test_compare_run_measures_first_then_compares_that_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``compare --run``: a quick run (its plan as asked; the measurement itself is replaced
    here, a real one takes minutes) lands in the results folder and is what gets compared."""
    planned: list[plan.Plan] = []

    def measured(run_plan: plan.Plan, out_dir: Path) -> dict[str, Any]:
        planned.append(run_plan)
        return synthetic(scale=1.3)

    monkeypatch.setattr(run, "run_sync", measured)
    monkeypatch.setattr(compare, "RESULTS_DIR", tmp_path / "results")
    reference_path = tmp_path / "reference.json"
    reference_path.write_text(json.dumps(synthetic()))
    argv = ["compare", "--run", "--runs", "3", "--reference", str(reference_path)]
    assert __main__.main(argv) == 1
    assert [p.mode for p in planned] == ["quick (--runs 3)"]
    assert planned[0].latency_runs == 3
    assert planned[0].throughput_rounds == plan.QUICK.throughput_rounds
    (written,) = (tmp_path / "results").glob("*/results.json")
    assert f"comparing {written} with {reference_path}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as refused:
        __main__.main(["compare", "--run", str(written)])
    assert refused.value.code == 2


def test_a_plan_with_fewer_runs_says_so() -> None:
    short = plan.with_runs(plan.QUICK, 2)
    assert short.mode == "quick (--runs 2)"
    assert (short.latency_runs, short.cost_runs, short.syscall_runs, short.warmup) == (2, 2, 2, 2)
    assert short.concurrency == plan.QUICK.concurrency
    with pytest.raises(ValueError, match="runs must be at least 1, not 0"):
        plan.with_runs(plan.QUICK, 0)


def test_phases_of_one_execution_from_its_events() -> None:
    clock = phases.Clock()
    for kind in ("execution_started", "step_started", "log", "step_started", "step_finished"):
        event = pb.ExecutionEvent()
        getattr(event, kind).SetInParent()
        event.time.GetCurrentTime()
        clock.saw(event)
    finished = pb.ExecutionEvent(execution_finished={})
    finished.time.GetCurrentTime()
    clock.saw(finished)
    seen = clock.ended()
    assert list(seen.arrived) == list(phases.BOUNDARIES)
    assert list(seen.made) == list(phases.BOUNDARIES[:-1])
    offsets = list(seen.arrived.values())
    assert offsets == sorted(offsets)
    assert all(0 <= value < 5.0 for value in seen.made.values())


def test_phase_summary_takes_the_median_of_each_phase() -> None:
    def run_of(*at_ms: float) -> phases.Phases:
        arrived = {b: ms / 1000 for b, ms in zip(phases.BOUNDARIES, at_ms, strict=True)}
        made = {b: arrived[b] - 0.0005 for b in phases.BOUNDARIES[:-1]}
        return phases.Phases(arrived, made)

    incomplete = phases.Phases({"execution_started": 0.001, "rpc_end": 0.002}, {})
    figures = phases.summary(
        [run_of(1, 5, 10, 11, 30), run_of(3, 6, 12, 13, 20), run_of(2, 4, 9, 10, 40), incomplete]
    )
    assert figures["n"] == 3
    rows = {row["boundary"]: row for row in figures["boundaries"]}
    assert rows["execution_started"]["phase_p50_ms"] == pytest.approx(2.0)
    assert rows["step_finished"]["phase_p50_ms"] == pytest.approx(5.0)
    assert rows["rpc_end"]["phase_p50_ms"] == pytest.approx(19.0)
    assert rows["rpc_end"]["arrived_p50_ms"] == pytest.approx(30.0)
    assert rows["rpc_end"]["made_p50_ms"] is None
    assert rows["step_started"]["made_p50_ms"] == pytest.approx(4.5)
    assert figures["samples_ms"][0] == [1.0, 5.0, 10.0, 11.0, 30.0]
    assert phases.phase_p50_ms(figures, "rpc_end") == pytest.approx(19.0)
    assert phases.summary([incomplete]) == {"n": 0}


def test_latency_keeps_the_raw_samples() -> None:
    figures = stats.latency([Sample(0.0105), Sample(9.0, "TIMEOUT: x"), Sample(0.0301234)])
    assert figures["samples_ms"] == [10.5, 30.123]


def test_source_names_the_checked_out_commit() -> None:
    head = subprocess.run(
        ["git", "-C", str(provenance.REPOSITORY), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    source = provenance.source()
    assert source["commit"] == head
    assert source["dirty"] == (source["changed_files"] > 0)
    assert provenance.source(Path("/")) == {"commit": None, "dirty": None, "changed_files": None}


def test_cpu_model_is_the_first_model_name(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC 7B13\n\nprocessor\t: 1\nmodel name\t: other\n"
    )
    assert provenance.cpu_model(cpuinfo) == "AMD EPYC 7B13"
    cpuinfo.write_text("processor\t: 0\nCPU implementer\t: 0x41\n")
    assert provenance.cpu_model(cpuinfo) is None


def test_strace_summaries_are_added_up() -> None:
    text = """syscall                calls    errors
------------------ --------- ---------
futex                     56         3
read                      79
------------------ --------- ---------
total                    135         3
syscall                calls    errors
------------------ --------- ---------
read                       1
openat                    17        17
------------------ --------- ---------
total                     18        17
"""
    counts = syscalls.parse(text)
    assert counts.calls == {"futex": 56, "read": 80, "openat": 17}
    assert counts.errors == 20
    assert counts.total == 153
    figures = counts.figures(per=2)
    assert figures["per_execution"] == 76.5
    assert list(figures["top_per_execution"].items()) == [
        ("read", 40.0),
        ("futex", 28.0),
        ("openat", 8.5),
    ]


needs_strace = pytest.mark.skipif(not syscalls.available(), reason="needs strace")


@needs_strace
def test_strace_counts_a_fresh_process(tmp_path: Path) -> None:
    counts = syscalls.count_process(
        [sys.executable, "-c", "import os\nfor _ in range(41): os.getppid()"],
        None,
        tmp_path / "summary.txt",
    )
    assert counts.calls["getppid"] == 41
    assert counts.calls["execve"] == 1
    with pytest.raises(syscalls.StraceError, match="exited with 3"):
        syscalls.count_process([sys.executable, "-c", "exit(3)"], None, tmp_path / "failed.txt")


@needs_strace
def test_strace_attached_counts_only_while_attached(tmp_path: Path) -> None:
    """A process calls getppid 5 times before strace attaches, 37 times while attached (on a
    line on stdin), then 11 times after the detach: only the 37 count."""
    script = (
        "import os, sys\n"
        "for _ in range(5): os.getppid()\n"
        "print('ready', flush=True)\n"
        "for line in sys.stdin:\n"
        "    for _ in range(int(line)): os.getppid()\n"
        "    print('done', flush=True)\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as child:
        assert child.stdin is not None and child.stdout is not None
        assert child.stdout.readline() == "ready\n"
        with syscalls.Attached(child.pid, tmp_path / "summary.txt", follow=True) as attached:
            child.stdin.write("37\n")
            child.stdin.flush()
            assert child.stdout.readline() == "done\n"
        child.stdin.write("11\n")
        child.stdin.flush()
        assert child.stdout.readline() == "done\n"
        child.stdin.close()
        assert child.wait(timeout=30) == 0
    assert attached.counts().calls["getppid"] == 37


def test_report_shows_the_cost_sections() -> None:
    text = report.render(synthetic(), {})
    assert "## Where a sandboxd execution's time goes" in text
    assert "| end of the RPC | 20.0 | n/a | 8.0 |" not in text  # the last row has no stamp
    assert "| end of the RPC | 20.0 | 20.0 | 8.0 |" in text
    assert "| sandboxd warm (pool) | 10.0 | 2.5 | 12.5 | 3.0 | 2.0 | 10 |" in text
    assert "bare node's CPU per execution 50.0 ms, `node -e 0`'s 40.0 ms" in text
    assert "| sandboxd warm (pool): daemon | 300 | epoll_wait 40 |" in text
    assert "| bare node (floor) | 800 | mmap 63 |" in text


def test_report_and_charts_from_synthetic_results(tmp_path: Path) -> None:
    results = synthetic()
    drawn = charts.draw_all(results, tmp_path)
    assert set(drawn) == {"latency", "startup", "throughput", "demo", "payloads", "resources"}
    for file_name in drawn.values():
        assert (tmp_path / file_name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = report.render(results, drawn)
    assert text.startswith("# sandboxd benchmarks: quick mode")
    assert text.index("## Headline ratios") < text.index("## Latency at low load")
    assert "| sandboxd warm vs bare node: p50 latency, trivial step | **0.50x** |" in text
    assert "![throughput and latency against concurrency](throughput.png)" in text
    assert (
        "- **tenant_fairness**: a quiet tenant's trivial executions, one every 100 ms: p50 "
        "20.0 ms alone, p50 60.0 / p99 60.0 ms while another tenant ran 32 streams"
    ) in text
    assert "Back to back (it then wants more jails than its share): p50 10.0 ms alone" in text
    assert "flooded (flood 25.0 exec/s, 1 refused)." in text
    assert "30.0 exec/s, p50 900 ms, 0 refused" in text
    assert "10.0 exec/s with 1 worker, 15.0 with 3" in text
    assert "No execution failed." in text


def test_report_says_what_is_not_available() -> None:
    results = synthetic()
    results["extensions"]["redis_mode"] = {
        "status": "not available yet",
        "note": "this build has no queue",
    }
    assert "- **redis_mode**: not available yet (this build has no queue)" in report.render(
        results, {}
    )


def test_report_lists_failed_executions() -> None:
    results = synthetic()
    results["latency"]["sandboxd_warm"] = summary(20.0, errors=3)
    text = report.render(results, {})
    assert "- latency sandboxd_warm: 3 failed (TIMEOUT: too slow)" in text


def test_harness_stdin_embeds_the_input_bytes_as_they_are() -> None:
    workload = workloads.payload("in", 1024)
    document = json.loads(workload.harness_stdin)
    assert document["input"] == {"data": "x" * 1024}
    assert document["steps"] == [{"name": "read", "code": workload.steps[0].code}]
    assert workload.check(1024)
    assert not workload.check(1023)


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node")
def test_harness_runs_the_steps_like_the_runner() -> None:
    node = shutil.which("node")
    assert node is not None
    workload = workloads.payload("between", 4096)
    done = run_process([node, str(HARNESS)], workload.harness_stdin)
    assert done.exit_code == 0
    assert json.loads(done.stdout.splitlines()[-1]) == 4096

    failing = workloads.Workload(
        "throws",
        (Step("boom", "module.exports = () => { throw new Error('no') }"),),
        b"null",
        lambda result: True,
    )
    done = run_process([node, str(HARNESS)], failing.harness_stdin)
    assert done.exit_code == 1
    assert json.loads(done.stdout.splitlines()[-1]) == {"error": "no"}
