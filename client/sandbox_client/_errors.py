"""ErrorKind, SandboxError, and the translation of gRPC failures into them.

A failure reaches a caller in one of two ways, and both end as a :class:`SandboxError`:

- after ``ExecutionStarted``, as ``StepFailed`` / ``ExecutionFinished(FAILED)`` events
  (see :mod:`sandbox_client._events`);
- before it (or when the connection or deadline fails), as a gRPC status whose trailing
  metadata names the kind (:func:`error_from_rpc`).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

import grpc

from sandboxd.v1 import sandbox_pb2

KIND_METADATA_KEY = "sandboxd-error-kind"
RETRY_AFTER_METADATA_KEY = "sandboxd-retry-after-ms"


class ErrorKind(enum.Enum):
    """The kind of a failure; members and values are those of the proto enum ``ErrorKind``.

    ``ERROR_KIND_UNSPECIFIED`` is not a member: a failure always has a kind, and an unspecified
    or unknown one received from a daemon becomes ``INTERNAL``.
    """

    USER_ERROR = sandbox_pb2.USER_ERROR
    TIMEOUT = sandbox_pb2.TIMEOUT
    MEMORY_LIMIT = sandbox_pb2.MEMORY_LIMIT
    RESOURCE_LIMIT = sandbox_pb2.RESOURCE_LIMIT
    OUTPUT_LIMIT = sandbox_pb2.OUTPUT_LIMIT
    RESULT_TOO_LARGE = sandbox_pb2.RESULT_TOO_LARGE
    CRASHED = sandbox_pb2.CRASHED
    POLICY_DENIED = sandbox_pb2.POLICY_DENIED
    CANCELLED = sandbox_pb2.CANCELLED
    QUOTA_EXCEEDED = sandbox_pb2.QUOTA_EXCEEDED
    INVALID_REQUEST = sandbox_pb2.INVALID_REQUEST
    UNAVAILABLE = sandbox_pb2.UNAVAILABLE
    INTERNAL = sandbox_pb2.INTERNAL

    def __str__(self) -> str:
        return self.name

    @classmethod
    def from_proto(cls, value: int) -> ErrorKind:
        """The member for a proto enum value; INTERNAL for unspecified or unknown values."""
        try:
            return cls(value)
        except ValueError:
            return cls.INTERNAL

    @classmethod
    def from_name(cls, name: str) -> ErrorKind | None:
        """The member named ``name``, or None when there is none."""
        return cls.__members__.get(name)


def _check_matches_proto() -> None:
    """Refuse to load when the enum and the generated proto enum disagree (names or values)."""
    ours = {kind.name: kind.value for kind in ErrorKind}
    theirs = {name: value for name, value in sandbox_pb2.ErrorKind.items() if value != 0}
    if ours != theirs:
        raise ImportError(f"sandbox_client.ErrorKind {ours} differs from the proto's {theirs}")


_check_matches_proto()


class SandboxError(Exception):
    """A failed execution or RPC; the only exception the client raises on purpose.

    Attributes:
        kind: what failed, an :class:`ErrorKind`.
        message: a human-readable description (for USER_ERROR, the thrown error's message).
        step: the name of the step that failed, or None when no step was running.
        stack: the JavaScript stack of a USER_ERROR, or None.
        execution_id: the execution's id when known.
        retry_after: seconds the daemon asks to wait before retrying (QUOTA_EXCEEDED,
            UNAVAILABLE), or None.
    """

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        step: str | None = None,
        stack: str | None = None,
        execution_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(kind, message)
        self.kind = kind
        self.message = message
        self.step = step
        self.stack = stack
        self.execution_id = execution_id
        self.retry_after = retry_after

    def __str__(self) -> str:
        where = f" in step {self.step!r}" if self.step else ""
        return f"{self.kind.name}{where}: {self.message}"


_KIND_BY_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: ErrorKind.INVALID_REQUEST,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ErrorKind.QUOTA_EXCEEDED,
    grpc.StatusCode.UNAVAILABLE: ErrorKind.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: ErrorKind.TIMEOUT,
    grpc.StatusCode.CANCELLED: ErrorKind.CANCELLED,
}


def error_from_rpc(error: grpc.aio.AioRpcError, execution_id: str | None = None) -> SandboxError:
    """Translate a failed RPC: the kind from trailing metadata, else from the status code."""
    trailers = _metadata_dict(error.trailing_metadata() or ())
    named = ErrorKind.from_name(trailers.get(KIND_METADATA_KEY, ""))
    kind = named or _KIND_BY_STATUS.get(error.code(), ErrorKind.INTERNAL)
    message = error.details() or f"gRPC status {error.code().name}"
    return SandboxError(
        kind,
        message,
        execution_id=execution_id,
        retry_after=_retry_after_seconds(trailers.get(RETRY_AFTER_METADATA_KEY)),
    )


def _metadata_dict(metadata: Iterable[tuple[str, str | bytes]]) -> dict[str, str]:
    """Text metadata as a dict (binary ``-bin`` values are skipped)."""
    return {key: value for key, value in metadata if isinstance(value, str)}


def _retry_after_seconds(milliseconds: str | None) -> float | None:
    if milliseconds is None:
        return None
    try:
        return max(0, int(milliseconds)) / 1000
    except ValueError:
        return None
