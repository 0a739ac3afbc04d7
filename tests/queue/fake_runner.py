"""A runner without jails, at the boundary the queue's tests and benchmark do not test.

It answers a plan with the events a real execution of one step sends (started, step started,
step finished with the input as the result, finished), after `run_s` of sleep: the queue's own
cost is what remains.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp

from sandbox_client.v1 import sandbox_pb2 as pb
from sandboxd.requests import ExecutionPlan


@dataclass
class FakePool:
    maximum: int
    leased: int = 0


class FakeRunner:
    """Runs every plan's first step as "return the input", or fails it with `fail_kind`."""

    def __init__(self, slots: int, run_s: float = 0.0, fail_kind: int | None = None):
        self.pool = FakePool(slots)
        self._run_s = run_s
        self._fail_kind = fail_kind
        self.cancelled: list[tuple[str, str]] = []

    async def run(self, plan: ExecutionPlan) -> AsyncGenerator[pb.ExecutionEvent, None]:
        self.pool.leased += 1
        try:
            step = plan.steps[0].name
            yield _event(plan, 0, execution_started=pb.ExecutionStarted(
                tenant_id=plan.tenant_id, step_count=1, attempt=plan.attempt
            ))  # fmt: skip
            yield _event(plan, 1, step_started=pb.StepStarted(step=step, index=0))
            if self._run_s:
                await asyncio.sleep(self._run_s)
            if self._fail_kind is None:
                finished = pb.StepFinished(step=step, index=0, json=plan.input)
                yield _event(plan, 2, step_finished=finished)
                yield _event(plan, 3, execution_finished=pb.ExecutionFinished(
                    status=pb.EXECUTION_STATUS_SUCCEEDED, steps_completed=1
                ))  # fmt: skip
            else:
                yield _event(plan, 2, execution_finished=pb.ExecutionFinished(
                    status=pb.EXECUTION_STATUS_FAILED,
                    error_kind=self._fail_kind,  # type: ignore[arg-type]
                    error_message=f"attempt {plan.attempt} failed",
                ))  # fmt: skip
        finally:
            self.pool.leased -= 1

    def cancel(self, tenant_id: str, execution_id: str) -> bool:
        self.cancelled.append((tenant_id, execution_id))
        return False


def _event(plan: ExecutionPlan, seq: int, **event: object) -> pb.ExecutionEvent:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return pb.ExecutionEvent(execution_id=plan.execution_id, seq=seq, time=stamp, **event)  # type: ignore[arg-type]
