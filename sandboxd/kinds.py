"""The one name of each outcome, everywhere: wire details, GetStatus, telemetry, logs, the queue.

The proto's enum values carry their enum's prefix (`ERROR_KIND_USER_ERROR`, a buf lint rule); the
name callers, operators and dashboards see is the part after it (`USER_ERROR`), and a finished
execution's outcome is `SUCCEEDED` or that name.
"""

from __future__ import annotations

import asyncio

from sandbox_client.v1 import sandbox_pb2 as pb
from sandboxd.jail.errors import JailError
from sandboxd.pool import PoolClosed
from sandboxd.tenants import AdmissionClosed, QuotaExceeded

_PREFIX = "ERROR_KIND_"


class CancelledBeforeStart(Exception):
    """Cancel named an execution still waiting for admission or a jail: it ends CANCELLED
    without having started (the RPC ends with that status, distributed mode lets it go)."""


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


def ending_outcome(error: BaseException | None, past_deadline: bool = False) -> str:
    """The outcome of an execution that ended without an ExecutionFinished, by `error`.

    No error and no ExecutionFinished, or a cancellation: the consumer stopped reading (the
    caller went away, or its deadline cut the call short: `past_deadline`).
    """
    return kind_name(_ending_kind(error, past_deadline))


def _ending_kind(error: BaseException | None, past_deadline: bool) -> int:
    if isinstance(error, QuotaExceeded):
        return pb.ERROR_KIND_QUOTA_EXCEEDED
    if isinstance(error, AdmissionClosed | PoolClosed | JailError):
        return pb.ERROR_KIND_UNAVAILABLE
    if isinstance(error, CancelledBeforeStart):
        return pb.ERROR_KIND_CANCELLED
    if error is None or isinstance(error, asyncio.CancelledError | GeneratorExit):
        return pb.ERROR_KIND_DEADLINE_EXCEEDED if past_deadline else pb.ERROR_KIND_CANCELLED
    return pb.ERROR_KIND_INTERNAL


# Failures of the platform, not of what the step did: the jail could not be had or started,
# or the daemon could not take the execution (draining). A step can cause every other kind on
# purpose (docs/security.md), and retrying those would let one tenant make the fleet run its
# code again and again. A worker that died is not a kind: its claim is taken over instead.
_RETRYABLE = frozenset({pb.ERROR_KIND_UNAVAILABLE})


def retryable(kind: int) -> bool:
    """Whether distributed mode runs an execution that failed with `kind` again."""
    return kind in _RETRYABLE
