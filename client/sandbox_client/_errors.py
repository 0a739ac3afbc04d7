"""ErrorKind, SandboxError, and the translation of gRPC failures into them.

A failure reaches a caller in one of two ways, and both end as a :class:`SandboxError`:

- after ``ExecutionStarted``, as ``StepFailed`` / ``ExecutionFinished(FAILED)`` events
  (see :mod:`sandbox_client._events`);
- before it (or when the connection or deadline fails), as a gRPC status whose
  ``google.rpc.Status`` details name the kind (``ErrorInfo.reason``), when to retry
  (``RetryInfo``) and the field at fault (``BadRequest``) (:func:`error_from_rpc`).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

import grpc
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2

from sandbox_client.v1 import sandbox_pb2

# The domain of the daemon's google.rpc.ErrorInfo; its reason is the ErrorKind's name.
ERROR_DOMAIN = "sandboxd"
_STATUS_DETAILS_KEY = "grpc-status-details-bin"


class ErrorKind(enum.Enum):
    """The kind of a failure: the proto enum ``ErrorKind`` named without its ``ERROR_KIND_`` prefix.

    ``ERROR_KIND_UNSPECIFIED`` is not a member: a failure always has a kind, and an unspecified
    or unknown one received from a daemon becomes ``INTERNAL``.
    """

    USER_ERROR = sandbox_pb2.ERROR_KIND_USER_ERROR
    TIMEOUT = sandbox_pb2.ERROR_KIND_TIMEOUT
    MEMORY_LIMIT = sandbox_pb2.ERROR_KIND_MEMORY_LIMIT
    RESOURCE_LIMIT = sandbox_pb2.ERROR_KIND_RESOURCE_LIMIT
    OUTPUT_LIMIT = sandbox_pb2.ERROR_KIND_OUTPUT_LIMIT
    RESULT_TOO_LARGE = sandbox_pb2.ERROR_KIND_RESULT_TOO_LARGE
    CRASHED = sandbox_pb2.ERROR_KIND_CRASHED
    POLICY_DENIED = sandbox_pb2.ERROR_KIND_POLICY_DENIED
    CANCELLED = sandbox_pb2.ERROR_KIND_CANCELLED
    QUOTA_EXCEEDED = sandbox_pb2.ERROR_KIND_QUOTA_EXCEEDED
    INVALID_REQUEST = sandbox_pb2.ERROR_KIND_INVALID_REQUEST
    UNAVAILABLE = sandbox_pb2.ERROR_KIND_UNAVAILABLE
    INTERNAL = sandbox_pb2.ERROR_KIND_INTERNAL
    DEADLINE_EXCEEDED = sandbox_pb2.ERROR_KIND_DEADLINE_EXCEEDED

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
    ours = {f"ERROR_KIND_{kind.name}": kind.value for kind in ErrorKind}
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
        field: the request field at fault of an INVALID_REQUEST ("steps[0].name"), or None.
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
        field: str | None = None,
    ) -> None:
        super().__init__(kind, message)
        self.kind = kind
        self.message = message
        self.step = step
        self.stack = stack
        self.execution_id = execution_id
        self.retry_after = retry_after
        self.field = field

    def __str__(self) -> str:
        where = f" in step {self.step!r}" if self.step else ""
        return f"{self.kind.name}{where}: {self.message}"


_KIND_BY_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: ErrorKind.INVALID_REQUEST,
    # The daemon names its own quota refusals (ErrorInfo); a bare RESOURCE_EXHAUSTED is gRPC's
    # message size limit, on either side of the call: the request is too large to be read.
    grpc.StatusCode.RESOURCE_EXHAUSTED: ErrorKind.INVALID_REQUEST,
    grpc.StatusCode.UNAVAILABLE: ErrorKind.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: ErrorKind.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED: ErrorKind.CANCELLED,
}


def error_from_rpc(error: grpc.aio.AioRpcError, execution_id: str | None = None) -> SandboxError:
    """Translate a failed RPC: the kind and hints from its google.rpc.Status details, else from
    the status code alone (a failure that never reached the daemon: connection, deadline)."""
    details = _status_details(error.trailing_metadata() or ())
    info = details.get(error_details_pb2.ErrorInfo.DESCRIPTOR.full_name)
    named = None
    if isinstance(info, error_details_pb2.ErrorInfo) and info.domain == ERROR_DOMAIN:
        named = ErrorKind.from_name(info.reason)
    kind = named or _KIND_BY_STATUS.get(error.code(), ErrorKind.INTERNAL)
    message = error.details() or f"gRPC status {error.code().name}"
    retry = details.get(error_details_pb2.RetryInfo.DESCRIPTOR.full_name)
    bad_request = details.get(error_details_pb2.BadRequest.DESCRIPTOR.full_name)
    return SandboxError(
        kind,
        message,
        execution_id=execution_id,
        retry_after=(
            retry.retry_delay.ToMilliseconds() / 1000
            if isinstance(retry, error_details_pb2.RetryInfo)
            else None
        ),
        field=(
            bad_request.field_violations[0].field
            if isinstance(bad_request, error_details_pb2.BadRequest)
            and bad_request.field_violations
            else None
        ),
    )


_DETAIL_TYPES: tuple[type[Message], ...] = (
    error_details_pb2.ErrorInfo,
    error_details_pb2.RetryInfo,
    error_details_pb2.BadRequest,
)


def _status_details(metadata: Iterable[tuple[str, str | bytes]]) -> dict[str, Message]:
    """The known details of the google.rpc.Status in `metadata`, by message type name."""
    raw = next((v for k, v in metadata if k == _STATUS_DETAILS_KEY), None)
    if not isinstance(raw, bytes):
        return {}
    status = status_pb2.Status()
    try:
        status.ParseFromString(raw)
    except DecodeError:
        return {}
    found: dict[str, Message] = {}
    for packed in status.details:
        for detail_type in _DETAIL_TYPES:
            if packed.Is(detail_type.DESCRIPTOR):
                detail = detail_type()
                packed.Unpack(detail)
                found[detail_type.DESCRIPTOR.full_name] = detail
    return found
