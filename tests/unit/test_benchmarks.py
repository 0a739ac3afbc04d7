"""The benchmarks' arithmetic and reporting on small synthetic results (no daemon, no load).

Nothing here measures time: the samples are made up, and every figure is checked exactly.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from benchmarks import charts, compare, load, ratios, report, stats, workloads
from benchmarks.systems import HARNESS, Sample, run_process
from sandbox_client import Step

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


def synthetic(scale: float = 1.0) -> dict[str, Any]:
    """A results.json as a quick run writes it; ``scale`` stretches sandboxd's latencies."""
    latency = {
        "bare_node": summary(40.0, 50.0),
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
        "machine": {"cpus": 2, "kernel": "6.1", "node": "v20", "seccomp": True},
        "latency": latency,
        "node_start": summary(25.0),
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
                    "quiet_alone": summary(20.0),
                    "quiet_flooded": summary(60.0),
                    "flood": {**summary(900.0), "concurrency": 32, "per_s": 30.0},
                    "flood_refused": 0,
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
    assert load.rotated(systems, 0) == ["a", "b", "c"]
    assert load.rotated(systems, 1) == ["b", "c", "a"]
    assert load.rotated(systems, 5) == ["c", "a", "b"]


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
    assert computed["redis_result_vs_warm_execution_p50"].value == pytest.approx(1.5)
    assert computed["redis_3_vs_1_workers_throughput"].value == pytest.approx(1.5)
    assert computed["warm_daemon_rss_after_vs_before"].value == pytest.approx(1.5)
    assert [ratio.key for ratio in ratios.compute(synthetic())][: ratios.HEADLINE] == [
        "warm_vs_bare_node_p50",
        "cold_vs_bubblewrap_p50",
        "jail_start_vs_node_start_p50",
        "warm_saturation_vs_bare_node",
    ]


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
    assert text.splitlines()[-1].endswith("regression(s) beyond 20%")

    today_path, reference_path = tmp_path / "today.json", tmp_path / "reference.json"
    today_path.write_text(json.dumps(today))
    reference_path.write_text(json.dumps(reference))
    assert compare.main(today_path, reference_path) == 1
    assert compare.main(reference_path, reference_path) == 0


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
    assert "- **tenant_fairness**: a quiet tenant's trivial executions, p50 20.0 ms alone" in text
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
