"""Today's ratios against the stored reference, in one table; regressions flagged.

A ratio regressed when it moved more than 20% in its bad direction: a lower-is-better ratio rose
above 1.2x its reference value, a higher-is-better one fell below 0.8x. Ratios are recomputed
from both results files with today's definitions (benchmarks/ratios.py), so a ratio added later
also shows for an old reference that holds its inputs.
"""

from __future__ import annotations

import json
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
        flag = "  REGRESSION" if row.regressed else ""
        lines.append(
            f"{row.label:<{width}}  {row.better:>6}  {_value(row.reference):>9}  "
            f"{_value(row.today):>7}  {change:>7}{flag}"
        )
    regressions = sum(row.regressed for row in table)
    lines += ["", f"{regressions} regression(s) beyond {TOLERANCE:.0%}"]
    return "\n".join(lines)


def latest_results(directory: Path = RESULTS_DIR) -> Path:
    """The newest results.json under ``directory`` (run folders are named by timestamp)."""
    found = sorted(directory.glob("*/results.json"))
    if not found:
        raise FileNotFoundError(f"no results under {directory}: run `python -m benchmarks` first")
    return found[-1]


def main(results: Path | None, reference: Path) -> int:
    """Print the comparison; exit status 1 when anything regressed."""
    today_path = results or latest_results()
    today = json.loads(today_path.read_text())
    old = json.loads(reference.read_text())
    table = rows(today, old)
    print(f"comparing {today_path} with {reference}\n")
    print(render(table, today, old))
    return 1 if any(row.regressed for row in table) else 0


def _origin(results: dict[str, Any]) -> str:
    machine = results.get("machine", {})
    load = machine.get("load_1m_at_start")
    return (
        f"{results.get('started_at', '?')}, {results.get('mode', '?')} mode, "
        f"{machine.get('cpus', '?')} CPUs, kernel {machine.get('kernel', '?')}, "
        f"node {machine.get('node', '?')}, load {_value(load)} at start"
    )


def _value(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"
