"""From a stream of ExecutionEvents to its outcome: the last step's result, or a SandboxError."""

from __future__ import annotations

import json
from collections.abc import AsyncIterable
from typing import Any

from sandbox_client._errors import ErrorKind, SandboxError
from sandbox_client.v1 import sandbox_pb2


def decode_result(finished: sandbox_pb2.StepFinished) -> Any:
    """A step's result: the decoded JSON value, bytes for a binary result, None when kept.

    A result is "kept" (left in the jail for later steps, not sent) when the daemon was not asked
    to return it; only then is neither ``json`` nor ``binary`` set.
    """
    match finished.WhichOneof("result"):
        case "json":
            try:
                return json.loads(finished.json)
            except ValueError as exc:  # only a step that forged its own result frame
                message = f"the result of step {finished.step!r} is not JSON: {exc}"
                raise SandboxError(ErrorKind.USER_ERROR, message, step=finished.step) from exc
        case "binary":
            return finished.binary
        case _:
            return None


async def result_of(events: AsyncIterable[sandbox_pb2.ExecutionEvent]) -> Any:
    """Consume an execution's events; return its last step's result or raise SandboxError.

    Useful to watch the events and still get :meth:`SandboxClient.run`'s outcome::

        result = await result_of(printed(client.execute(...)))
    """
    outcome = _Outcome()
    async for event in events:
        outcome.observe(event)
    return outcome.result()


class _Outcome:
    """What the events of one execution said so far."""

    def __init__(self) -> None:
        self._execution_id: str | None = None
        self._last_step: sandbox_pb2.StepFinished | None = None
        self._failed_step: sandbox_pb2.StepFailed | None = None
        self._finished: sandbox_pb2.ExecutionFinished | None = None

    def observe(self, event: sandbox_pb2.ExecutionEvent) -> None:
        self._execution_id = event.execution_id or self._execution_id
        match event.WhichOneof("event"):
            case "step_finished":
                self._last_step = event.step_finished
            case "step_failed":
                self._failed_step = event.step_failed
            case "execution_finished":
                self._finished = event.execution_finished

    def result(self) -> Any:
        """The last step's result; SandboxError when the execution failed or never finished."""
        finished, failed = self._finished, self._failed_step
        if finished is None:
            if failed is not None:
                raise self._step_error(failed)
            raise SandboxError(
                ErrorKind.INTERNAL,
                "the event stream ended before ExecutionFinished",
                execution_id=self._execution_id,
            )
        if finished.status != sandbox_pb2.EXECUTION_STATUS_SUCCEEDED:
            raise self._execution_error(finished, failed)
        return decode_result(self._last_step) if self._last_step else None

    def _step_error(self, failed: sandbox_pb2.StepFailed) -> SandboxError:
        return SandboxError(
            ErrorKind.from_proto(failed.kind),
            failed.message,
            step=failed.step or None,
            stack=failed.stack or None,
            execution_id=self._execution_id,
        )

    def _execution_error(
        self, finished: sandbox_pb2.ExecutionFinished, failed: sandbox_pb2.StepFailed | None
    ) -> SandboxError:
        """The error of a failed execution; the StepFailed (if any) fills what it leaves out."""
        step_failed = failed or sandbox_pb2.StepFailed()
        kind = finished.error_kind or step_failed.kind
        return SandboxError(
            ErrorKind.from_proto(kind),
            finished.error_message or step_failed.message or "the execution failed",
            step=finished.failed_step or step_failed.step or None,
            stack=step_failed.stack or None,
            execution_id=self._execution_id,
        )
