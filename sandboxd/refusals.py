"""Refusals as standard gRPC errors, which clients in every language know how to read.

A request refused before its execution starts ends the RPC with a status code and, in the
`grpc-status-details-bin` trailer, a `google.rpc.Status` whose details are:

- `ErrorInfo`: `reason` is the error kind's name (`INVALID_REQUEST`), `domain` is "sandboxd";
- `RetryInfo`, where waiting and retrying can succeed (quota, draining, no capacity);
- `BadRequest`, naming the offending field, for INVALID_REQUEST.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from sandboxd.kinds import kind_name

DOMAIN = "sandboxd"


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is refused: the status code, the error kind and what the caller can do."""

    code: grpc.StatusCode
    kind: int
    message: str
    field: str = ""  # the request field at fault (INVALID_REQUEST), as a path: "steps[2].name"
    retry_after_s: float | None = None

    def status(self) -> grpc.Status:
        """The status to abort with, details in its trailing metadata."""
        details = [
            error_details_pb2.ErrorInfo(reason=kind_name(self.kind), domain=DOMAIN),
        ]
        if self.retry_after_s is not None:
            delay = duration_pb2.Duration()
            delay.FromMilliseconds(max(0, round(self.retry_after_s * 1000)))
            details.append(error_details_pb2.RetryInfo(retry_delay=delay))
        if self.field:
            violation = error_details_pb2.BadRequest.FieldViolation(
                field=self.field, description=self.message
            )
            details.append(error_details_pb2.BadRequest(field_violations=[violation]))
        packed = []
        for detail in details:
            holder = any_pb2.Any()
            holder.Pack(detail)
            packed.append(holder)
        status = status_pb2.Status(code=_CODES[self.code], message=self.message, details=packed)
        return rpc_status.to_status(status)


async def refuse(context: grpc.aio.ServicerContext, refusal: Refusal) -> None:
    """End the RPC with `refusal` (raises, as `context.abort` does)."""
    status = refusal.status()
    await context.abort(status.code, status.details, status.trailing_metadata)


_CODES = {code: getattr(code_pb2, code.name) for code in grpc.StatusCode}
