"""python -m benchmarks [--full] [--runs N] [--out DIR]
| compare [RESULTS.json | --run [--runs N]] [--reference FILE] | report RESULTS.json"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks import charts, compare, ratios, report, run
from benchmarks.plan import FULL, QUICK, Plan, with_runs


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "compare":
        if args.run and args.results is not None:
            parser.error("compare: either a RESULTS.json or --run, not both")
        fresh = _run(_plan(False, args.runs), None) if args.run else None
        return compare.main(fresh or args.results, args.reference)
    if args.command == "report":
        results = json.loads(args.results.read_text())
        _write(results, args.results.parent)
        return 0
    _run(_plan(args.full, args.runs), args.out)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Measure sandboxd against bare node and bubblewrap on this machine.",
    )
    parser.add_argument("--full", action="store_true", help="the full mode (quick by default)")
    _add_runs(parser)
    parser.add_argument(
        "--out", type=Path, help="results folder (default benchmarks/results/<timestamp>/)"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    compared = commands.add_parser("compare", help="today's ratios against the reference")
    compared.add_argument(
        "results", type=Path, nargs="?", help="a results.json (default: the newest run)"
    )
    compared.add_argument("--reference", type=Path, default=compare.REFERENCE)
    compared.add_argument(
        "--run", action="store_true", help="first a fresh quick run, then compare that run"
    )
    _add_runs(compared)
    rendered = commands.add_parser("report", help="redraw report.md and charts of a results.json")
    rendered.add_argument("results", type=Path)
    return parser


def _add_runs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--runs",
        type=int,
        metavar="N",
        help="N samples per system wherever the mode takes a count (for a short trial; its "
        "figures are noisier than the mode's)",
    )


def _plan(full: bool, runs: int | None) -> Plan:
    plan = FULL if full else QUICK
    return plan if runs is None else with_runs(plan, runs)


def _run(plan: Plan, out: Path | None) -> Path:
    """One run of ``plan``; returns its results.json."""
    out_dir = out or compare.RESULTS_DIR / datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    results = run.run_sync(plan, out_dir)
    path = _write(results, out_dir)
    print(f"\nreport: {path}\n")
    for ratio in ratios.compute(results)[: ratios.HEADLINE]:
        value = "n/a" if ratio.value is None else f"{ratio.value:.2f}x"
        print(f"  {ratio.label}: {value}")
    return out_dir / "results.json"


def _write(results: dict[str, Any], out_dir: Path) -> Path:
    """results.json (with its ratios), the charts and report.md into ``out_dir``."""
    results["ratios"] = {ratio.key: ratio.as_json() for ratio in ratios.compute(results)}
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, allow_nan=False) + "\n")
    return report.write(results, out_dir, charts.draw_all(results, out_dir))


if __name__ == "__main__":
    sys.exit(main())
