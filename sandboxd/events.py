"""The events of one execution: numbered, timestamped, scrubbed of credentials, chunked."""

from __future__ import annotations

import time
from collections.abc import Iterator

from google.protobuf.timestamp_pb2 import Timestamp

from sandbox_client.v1 import sandbox_pb2 as pb
from sandboxd.frames import Result
from sandboxd.outcomes import StepFailure
from sandboxd.redaction import Redactor
from sandboxd.requests import StepPlan

# Results above this travel as ResultChunk events, so no gRPC message is huge.
RESULT_CHUNK_BYTES = 1024 * 1024

_LEVELS = {
    "debug": pb.LOG_LEVEL_DEBUG,
    "info": pb.LOG_LEVEL_INFO,
    "warn": pb.LOG_LEVEL_WARN,
    "error": pb.LOG_LEVEL_ERROR,
}


_NS_PER_S = 1_000_000_000


def _stamp(stamp: Timestamp) -> None:
    """Set `stamp` to now, in place: Timestamp.GetCurrentTime goes through a datetime, and a
    Timestamp given to a message's constructor is copied (a third of an event's cost)."""
    stamp.seconds, stamp.nanos = divmod(time.time_ns(), _NS_PER_S)


class EventStamper:
    """Makes the events of one execution, in order."""

    def __init__(self, execution_id: str, redact: Redactor):
        self.execution_id = execution_id
        self._redact = redact
        self._seq = 0

    def make(self, **event: object) -> pb.ExecutionEvent:
        message = pb.ExecutionEvent(
            execution_id=self.execution_id,
            seq=self._seq,
            **event,  # type: ignore[arg-type]
        )
        _stamp(message.time)
        self._seq += 1
        return message

    def step_started(self, step: StepPlan) -> pb.ExecutionEvent:
        return self.make(step_started=pb.StepStarted(step=step.name, index=step.index))

    async def log(
        self, step: StepPlan, level: str, text: str, ms: int | None = None
    ) -> pb.ExecutionEvent:
        """A log line; `ms` is the runner's own timestamp when it sent one (frames.Log has
        checked that it is within a Timestamp's range)."""
        log = pb.Log(
            step=step.name,
            level=_LEVELS.get(level, pb.LOG_LEVEL_INFO),
            text=await self._redact.scrub(text),
        )
        if ms is None:
            _stamp(log.time)
        else:
            log.time.FromMilliseconds(ms)
        return self.make(log=log)

    async def truncation(self, step: StepPlan, what: str) -> pb.ExecutionEvent:
        text = f"[log truncated: the step's limit of {what} was reached]"
        event = await self.log(step, "warn", text)
        event.log.truncated = True
        return event

    def step_result(
        self, step: StepPlan, header: Result, body: bytes, usage: pb.Usage
    ) -> Iterator[pb.ExecutionEvent]:
        """The StepFinished of a result frame, preceded by its chunks when it is large."""
        finished = pb.StepFinished(
            step=step.name,
            index=step.index,
            result_bytes=header.size,
            usage=usage,
            kept=header.kept,
        )
        binary = header.encoding == "binary"
        if len(body) > RESULT_CHUNK_BYTES:
            for offset in range(0, len(body), RESULT_CHUNK_BYTES):
                piece = body[offset : offset + RESULT_CHUNK_BYTES]
                chunk = pb.ResultChunk(step=step.name, index=step.index, data=piece, binary=binary)
                yield self.make(result_chunk=chunk)
                finished.result_chunks += 1
        elif not finished.kept:
            if binary:
                finished.binary = body
            else:
                finished.json = body
        yield self.make(step_finished=finished)

    async def step_failed(self, step: StepPlan, failure: StepFailure) -> pb.ExecutionEvent:
        failed = pb.StepFailed(
            step=step.name,
            index=step.index,
            kind=failure.kind,  # type: ignore[arg-type]
            message=await self._redact.scrub(failure.message),
            stack=await self._redact.scrub(failure.stack),
        )
        return self.make(step_failed=failed)

    async def finished(
        self,
        completed: int,
        failure: tuple[str, StepFailure] | None,
        usage: pb.Usage,
    ) -> pb.ExecutionEvent:
        finished = pb.ExecutionFinished(
            status=pb.EXECUTION_STATUS_FAILED if failure else pb.EXECUTION_STATUS_SUCCEEDED,
            steps_completed=completed,
            usage=usage,
        )
        if failure:
            step_name, error = failure
            finished.error_kind = error.kind  # type: ignore[assignment]
            finished.error_message = await self._redact.scrub(error.message)
            finished.failed_step = step_name
        return self.make(execution_finished=finished)
