"""The one name of each outcome, everywhere: wire details, GetStatus, telemetry, logs, the queue.

The proto's enum values carry their enum's prefix (`ERROR_KIND_USER_ERROR`, a buf lint rule); the
name callers, operators and dashboards see is the part after it (`USER_ERROR`), and a finished
execution's outcome is `SUCCEEDED` or that name.
"""

from __future__ import annotations

from sandbox_client.v1 import sandbox_pb2 as pb

_PREFIX = "ERROR_KIND_"
SUCCEEDED = "SUCCEEDED"


def kind_name(kind: int) -> str:
    """`USER_ERROR` for pb.ERROR_KIND_USER_ERROR."""
    return pb.ErrorKind.Name(kind).removeprefix(_PREFIX)


def kind_value(name: str) -> int:
    """pb.ERROR_KIND_USER_ERROR for `USER_ERROR`; ValueError for an unknown name."""
    return pb.ErrorKind.Value(_PREFIX + name)


def outcome_name(finished: pb.ExecutionFinished) -> str:
    """`SUCCEEDED` or the kind's name: the label of an execution's outcome."""
    if finished.status == pb.EXECUTION_STATUS_SUCCEEDED:
        return SUCCEEDED
    return kind_name(finished.error_kind)
