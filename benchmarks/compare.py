"""Today's ratios against the stored reference, in one table; regressions flagged.

A ratio regressed when it moved more than 20% in its bad direction: a lower-is-better ratio rose
above 1.2x its reference value, a higher-is-better one fell below 0.8x. Ratios are recomputed
from both results files with today's definitions (benchmarks/ratios.py), so a ratio added later
also shows for an old reference that holds its inputs.

A comparison fails (exit status 1) when anything regressed or when a figure is missing on either
side: a ratio nobody measured is not a ratio that held. A file is never compared with itself (the
same path, or the same bytes, e.g. a run just copied to the reference): exit status 2.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import ratios

REFERENCE = Path(__file__).with_name("reference.json")
RESULTS_DIR = Path(__file__).with_name("results")
TOLERANCE = 0.20


@dataclass(frozen=True)
class Row:
    label: str
    better: ratios.Better
    reference: float | None
    today: float | None

    @property
    def change(self) -> float | None:
        """today / reference - 1, or None when either is missing."""
        if self.reference is None or self.today is None or not self.reference:
            return None
        return self.today / self.reference - 1

    @property
    def missing(self) -> bool:
        """Either side has no value: the figure was not measured (or is zero)."""
        return self.reference is None or self.today is None

    @property
    def regressed(self) -> bool:
        change = self.change
        if change is None:
            return False
        return change > TOLERANCE if self.better == "lower" else change < -TOLERANCE


def rows(today: dict[str, Any], reference: dict[str, Any]) -> list[Row]:
    """One row per ratio, today's value beside the reference's."""
    old = {ratio.key: ratio for ratio in ratios.compute(reference)}
    return [
        Row(ratio.label, ratio.better, old[ratio.key].value, ratio.value)
        for ratio in ratios.compute(today)
    ]


class Refused(ValueError):
    """The two files cannot be compared."""


def render(table: list[Row], today: dict[str, Any], reference: dict[str, Any]) -> str:
    """The table as text, with where both runs come from and a closing verdict."""
    width = max(len(row.label) for row in table)
    lines = [
        f"reference: {_origin(reference)}",
        f"today:     {_origin(today)}",
        "",
        f"{'ratio':<{width}}  {'better':>6}  {'reference':>9}  {'today':>7}  {'change':>7}",
    ]
    for row in table:
        change = "n/a" if row.change is None else f"{row.change:+.0%}"
        flag = "  REGRESSION" if row.regressed else "  MISSING" if row.missing else ""
        lines.append(
            f"{row.label:<{width}}  {row.better:>6}  {_value(row.reference):>9}  "
            f"{_value(row.today):>7}  {change:>7}{flag}"
        )
    regressions = sum(row.regressed for row in table)
    missing = sum(row.missing for row in table)
    verdict = f"{regressions} regression(s) beyond {TOLERANCE:.0%}, {missing} figure(s) missing"
    lines += ["", verdict]
    return "\n".join(lines)


def latest_results(directory: Path = RESULTS_DIR) -> Path:
    """The newest results.json under ``directory`` (run folders are named by timestamp)."""
    found = sorted(directory.glob("*/results.json"))
    if not found:
        raise FileNotFoundError(f"no results under {directory}: run `python -m benchmarks` first")
    return found[-1]


def check_distinct(today: Path, reference: Path) -> None:
    """Raise Refused when ``today`` and ``reference`` are one file, or copies of each other."""
    if today.resolve() == reference.resolve() or today.read_bytes() == reference.read_bytes():
        raise Refused(f"{today} and {reference} are the same results: nothing to compare")


def main(results: Path | None, reference: Path) -> int:
    """Print the comparison; exit status 1 when anything regressed or a figure is missing, 2
    when the two files are the same results."""
    today_path = results or latest_results()
    try:
        check_distinct(today_path, reference)
    except Refused as refused:
        print(f"compare: {refused}", file=sys.stderr)
        return 2
    today = json.loads(today_path.read_text())
    old = json.loads(reference.read_text())
    table = rows(today, old)
    print(f"comparing {today_path} with {reference}\n")
    print(render(table, today, old))
    return 1 if any(row.regressed or row.missing for row in table) else 0


def _origin(results: dict[str, Any]) -> str:
    machine = results.get("machine", {})
    source = results.get("source", {})
    load = machine.get("load_1m_at_start")
    commit = (source.get("commit") or "unknown commit")[:12]
    return (
        f"{results.get('started_at', '?')}, {results.get('mode', '?')} mode, commit {commit}"
        f"{' (dirty)' if source.get('dirty') else ''}, {machine.get('cpu_model', '?')} x "
        f"{machine.get('cpus', '?')}, kernel {machine.get('kernel', '?')}, cgroup "
        f"{machine.get('cgroup_mode', '?')}, node {machine.get('node', '?')}, load "
        f"{_value(load)} at start"
    )


def _value(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"
