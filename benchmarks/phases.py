"""Where a sandboxd execution's time goes, as the caller sees it: when each event arrived.

An execution runs through fixed boundaries: the request is sent, ExecutionStarted arrives (the
execution has a jail), the first StepStarted, the last StepFinished, ExecutionFinished, and the
RPC's end (the stream closed). ``Clock`` stamps each boundary on arrival (client side) and keeps
the daemon's own stamp of the event (``ExecutionEvent.time``, same host clock), so a gap can be
told apart: made late by the daemon, or delivered late.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.stats import percentile
from sandbox_client.v1 import sandbox_pb2 as pb

# In order; "rpc_end" has no event (and no daemon stamp).
BOUNDARIES = (
    "execution_started",
    "step_started",
    "step_finished",
    "execution_finished",
    "rpc_end",
)
_FIRST_ONLY = frozenset({"step_started"})  # later StepStarted events do not move the boundary


@dataclass(frozen=True, slots=True)
class Phases:
    """Seconds from sending the request to each boundary reached: on arrival at the caller, and
    as stamped by the daemon."""

    arrived: dict[str, float]
    made: dict[str, float]


class Clock:
    """Stamps the boundaries of one execution; start it right before sending the request."""

    def __init__(self) -> None:
        self._started = time.perf_counter()
        self._started_wall_ns = time.time_ns()
        self._arrived: dict[str, float] = {}
        self._made: dict[str, float] = {}

    def saw(self, event: pb.ExecutionEvent) -> None:
        name = event.WhichOneof("event")
        if name not in BOUNDARIES or (name in _FIRST_ONLY and name in self._arrived):
            return
        self._arrived[name] = time.perf_counter() - self._started
        self._made[name] = (event.time.ToNanoseconds() - self._started_wall_ns) / 1e9

    def ended(self) -> Phases:
        """The stream closed: the last boundary."""
        self._arrived["rpc_end"] = time.perf_counter() - self._started
        return Phases(dict(self._arrived), dict(self._made))


def summary(runs: Sequence[Phases]) -> dict[str, Any]:
    """Per boundary, p50 ms since sending (on arrival, and the daemon's stamp), and p50 ms of the
    phase that ends there (from the boundary before, per execution); plus the raw offsets.

    Only executions that reached every boundary count (a failed one has no StepFinished).
    """
    complete = [run for run in runs if all(b in run.arrived for b in BOUNDARIES)]
    if not complete:
        return {"n": 0}
    rows = []
    for index, boundary in enumerate(BOUNDARIES):
        previous = BOUNDARIES[index - 1] if index else None
        arrived = [run.arrived[boundary] * 1000 for run in complete]
        made = [run.made[boundary] * 1000 for run in complete if boundary in run.made]
        phase = [_phase_ms(run, previous, boundary) for run in complete]
        rows.append(
            {
                "boundary": boundary,
                "arrived_p50_ms": percentile(arrived, 50),
                "made_p50_ms": percentile(made, 50) if made else None,
                "phase_p50_ms": percentile(phase, 50),
            }
        )
    return {
        "n": len(complete),
        "boundaries": rows,
        "samples_ms": [
            [round(run.arrived[boundary] * 1000, 3) for boundary in BOUNDARIES] for run in complete
        ],
    }


def phase_p50_ms(figures: dict[str, Any] | None, boundary: str) -> float | None:
    """The p50 of the phase that ends at ``boundary`` in a ``summary``, or None."""
    for row in (figures or {}).get("boundaries", []):
        if row["boundary"] == boundary:
            value: float | None = row["phase_p50_ms"]
            return value
    return None


def _phase_ms(run: Phases, previous: str | None, boundary: str) -> float:
    start = run.arrived[previous] if previous else 0.0
    return (run.arrived[boundary] - start) * 1000
