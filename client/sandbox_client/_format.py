"""One human-readable line per event, for terminals (the CLI and the demo).

Text that comes from a jail (log lines, error messages) is customer-controlled, so every
character that is not printable (newlines, terminal escape sequences, bidi controls) is shown
escaped: an event is always exactly one line and cannot drive the terminal.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from sandbox_client._errors import ErrorKind
from sandbox_client.v1 import sandbox_pb2

_SUBJECT_WIDTH = 14
_EXECUTION = "execution"
_LEVELS = {
    sandbox_pb2.LOG_LEVEL_DEBUG: "debug",
    sandbox_pb2.LOG_LEVEL_INFO: "info",
    sandbox_pb2.LOG_LEVEL_WARN: "warn",
    sandbox_pb2.LOG_LEVEL_ERROR: "error",
}


def format_event(event: sandbox_pb2.ExecutionEvent) -> str:
    """Render ``event`` as one line: local time, the step (or "execution"), what happened.

    For example::

        12:00:01.204  parse           info  parsed 200 orders
        12:00:01.207  parse           finished in 21.3 ms, cpu 19.0 ms, result 96.1 KiB (json)
    """
    which = event.WhichOneof("event")
    subject, text = _describe(getattr(event, which)) if which else (_EXECUTION, "(empty event)")
    return f"{_clock(event.time)}  {subject:<{_SUBJECT_WIDTH}}  {text}"


def _printable(text: str) -> str:
    """``text`` with every non-printable character escaped (``\\n``, ``\\x1b``, ``\\u202e``)."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def _ms(microseconds: int) -> str:
    """A duration in µs as milliseconds: ``"12.3 ms"``."""
    return f"{microseconds / 1000:.1f} ms"


def _size(count: int) -> str:
    """A byte count for humans: ``"512 B"``, ``"48.2 KiB"``, ``"1.5 MiB"``."""
    if count < 1024:
        return f"{count} B"
    if count < 1024 * 1024:
        return f"{count / 1024:.1f} KiB"
    return f"{count / (1024 * 1024):.1f} MiB"


def _clock(time: Timestamp) -> str:
    """The event's time of day (local, ms precision); blank when the daemon left it unset."""
    if not time.seconds and not time.nanos:
        return " " * 12
    moment = datetime.fromtimestamp(time.seconds + time.nanos / 1e9, tz=UTC).astimezone()
    return moment.strftime("%H:%M:%S.%f")[:-3]


def _usage(usage: sandbox_pb2.Usage) -> str:
    """Duration, then cpu time and peak memory when the daemon measured them."""
    parts = [f"in {_ms(usage.duration_us)}"]
    if usage.cpu_time_us:
        parts.append(f"cpu {_ms(usage.cpu_time_us)}")
    if usage.peak_memory_bytes:
        parts.append(f"peak memory {_size(usage.peak_memory_bytes)}")
    return ", ".join(parts)


@functools.singledispatch
def _describe(message: Message) -> tuple[str, str]:
    """(subject, text) of one event payload."""
    return _EXECUTION, f"unknown event {type(message).__name__}"


@_describe.register
def _(started: sandbox_pb2.ExecutionStarted) -> tuple[str, str]:
    return _EXECUTION, (
        f"started for tenant {_printable(started.tenant_id)}: {started.step_count} steps, "
        f"attempt {started.attempt}, waited {_ms(started.lease_wait_us)} for a jail"
    )


@_describe.register
def _(started: sandbox_pb2.StepStarted) -> tuple[str, str]:
    return started.step, f"started (step {started.index + 1})"


@_describe.register
def _(log: sandbox_pb2.Log) -> tuple[str, str]:
    if log.truncated:
        return log.step, "[log limit reached: later output of this step is dropped]"
    return log.step, f"{_LEVELS.get(log.level, 'log'):<5} {_printable(log.text)}"


@_describe.register
def _(finished: sandbox_pb2.StepFinished) -> tuple[str, str]:
    encoding = finished.WhichOneof("result") or "kept in the jail"
    result = f"{_size(finished.result_bytes)} ({encoding})"
    return finished.step, f"finished {_usage(finished.usage)}, result {result}"


@_describe.register
def _(failed: sandbox_pb2.StepFailed) -> tuple[str, str]:
    kind = ErrorKind.from_proto(failed.kind)
    return failed.step, f"FAILED {kind}: {_printable(failed.message)}"


@_describe.register
def _(finished: sandbox_pb2.ExecutionFinished) -> tuple[str, str]:
    steps = f"{finished.steps_completed} steps completed {_usage(finished.usage)}"
    if finished.status == sandbox_pb2.EXECUTION_STATUS_SUCCEEDED:
        return _EXECUTION, f"SUCCEEDED: {steps}"
    kind = ErrorKind.from_proto(finished.error_kind)
    where = f" in step {_printable(finished.failed_step)}" if finished.failed_step else ""
    return _EXECUTION, f"FAILED {kind}{where}: {_printable(finished.error_message)}; {steps}"
