"""Server spans and the `rpc.server.duration` metric of every RPC, by OpenTelemetry's gRPC
conventions, as a grpc.aio server interceptor.

Names and attributes are those of the conventions: the span is `sandboxd.v1.SandboxService/Execute`
(kind SERVER, continuing the caller's W3C trace context) with `rpc.system`, `rpc.service`,
`rpc.method`, `rpc.grpc.status_code`, `server.address` and `server.port`; the histogram
`rpc.server.duration` (ms) carries the same attributes. A refused request is recorded like any
other: its status code, and `error.type` set to the error kind the daemon named in the
`google.rpc.ErrorInfo` it sent (`INVALID_REQUEST`, `QUOTA_EXCEEDED`, ...), so refusals can be
counted by kind. Per the conventions, only server-side failures (INTERNAL, UNAVAILABLE, ...) mark
the span as an error; a caller's mistake (INVALID_ARGUMENT) does not.

Why not opentelemetry-instrumentation-grpc's aio interceptor: it names spans with the leading
slash (`/sandboxd.v1.SandboxService/Execute`), sets the retired `net.peer.*` attributes instead of
`server.address`, records no `rpc.server.duration`, and takes its tracer from the global provider
only when instrumenting globally; the daemon keeps its providers to itself.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.semconv._incubating.attributes.rpc_attributes import (
    RPC_GRPC_STATUS_CODE,
    RPC_METHOD,
    RPC_SERVICE,
    RPC_SYSTEM,
)
from opentelemetry.semconv._incubating.metrics.rpc_metrics import RPC_SERVER_DURATION
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.semconv.attributes.server_attributes import SERVER_ADDRESS, SERVER_PORT
from opentelemetry.trace import SpanKind, Status, StatusCode

# Codes that say the server failed: the conventions mark only these server spans as errors.
_SERVER_FAILURES = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
_DURATION_BUCKETS_MS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000)
_STATUS_DETAILS_KEY = "grpc-status-details-bin"
# The trace context of the RPC being served (its server span), for the spans the daemon makes
# while serving it; kept apart from OpenTelemetry's current context, so that no unrelated span
# that happens to be current can become an execution's parent.
_SERVING: contextvars.ContextVar[otel_context.Context | None] = contextvars.ContextVar(
    "sandboxd_rpc_context", default=None
)


def serving_context() -> otel_context.Context | None:
    """The trace context of the RPC this task serves (its server span), None outside one."""
    return _SERVING.get()


class RpcTelemetry(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Traces and times every RPC of the server it is given to (`grpc.aio.server(interceptors=)`).

    `server_port` is set once the server is bound (the daemon may listen on port 0). When
    nothing is `recording` (no exporter), every handler is served as it is, unwrapped.
    """

    def __init__(
        self,
        tracer: trace.Tracer,
        meter: metrics.Meter,
        server_address: str,
        server_port: int | None = None,
        *,
        recording: bool = True,
    ):
        self._recording = recording
        self._tracer = tracer
        self._duration = meter.create_histogram(
            RPC_SERVER_DURATION,
            "ms",
            "Duration of inbound RPCs, from the first request message to the status",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS_MS,
        )
        self.server_address = server_address
        self.server_port = server_port

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or not self._recording:
            return handler
        method: str = handler_call_details.method
        if handler.response_streaming:
            behavior = handler.stream_stream if handler.request_streaming else handler.unary_stream
            wrapped: Any = self._streaming(behavior, method)
            make = (
                grpc.stream_stream_rpc_method_handler
                if handler.request_streaming
                else grpc.unary_stream_rpc_method_handler
            )
        else:
            behavior = handler.stream_unary if handler.request_streaming else handler.unary_unary
            wrapped = self._unary(behavior, method)
            make = (
                grpc.stream_unary_rpc_method_handler
                if handler.request_streaming
                else grpc.unary_unary_rpc_method_handler
            )
        return make(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _unary(self, behavior: Any, method: str) -> Any:
        async def traced(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with self._recorded(method, context):
                return await behavior(request, context)

        return traced

    def _streaming(self, behavior: Any, method: str) -> Any:
        async def traced(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            with self._recorded(method, context):
                async for response in behavior(request, context):
                    yield response

        return traced

    @contextmanager
    def _recorded(self, method: str, context: grpc.aio.ServicerContext) -> Iterator[None]:
        """The RPC's span, the serving context while the handler runs, and its duration once it
        ends."""
        service, _, name = method.lstrip("/").partition("/")
        attributes: dict[str, str | int] = {
            RPC_SYSTEM: "grpc",
            RPC_SERVICE: service,
            RPC_METHOD: name,
            SERVER_ADDRESS: self.server_address,
        }
        if self.server_port is not None:
            attributes[SERVER_PORT] = self.server_port
        started = time.perf_counter()
        caller = _caller_context(context.invocation_metadata())
        span = self._tracer.start_span(
            f"{service}/{name}",
            context=caller,
            kind=SpanKind.SERVER,
            attributes=attributes,
        )
        token = _SERVING.set(trace.set_span_in_context(span, caller))
        code = grpc.StatusCode.OK
        try:
            yield
            code = context.code() or grpc.StatusCode.OK
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED  # the caller went away or its deadline passed
            raise
        except BaseException as error:
            code = context.code() or grpc.StatusCode.UNKNOWN  # an abort has set its code
            if code is grpc.StatusCode.UNKNOWN:
                span.record_exception(error)
            raise
        finally:
            _SERVING.reset(token)
            outcome = _outcome(code, context.trailing_metadata())
            span.set_attributes(outcome)
            if code in _SERVER_FAILURES:
                span.set_status(Status(StatusCode.ERROR, code.name))
            span.end()
            elapsed_ms = (time.perf_counter() - started) * 1000
            self._duration.record(elapsed_ms, {**attributes, **outcome})


def _outcome(
    code: grpc.StatusCode, trailing: Sequence[tuple[str, str | bytes]] | None
) -> dict[str, str | int]:
    """`rpc.grpc.status_code`, and `error.type` when the RPC failed: the error kind named by
    the daemon's ErrorInfo, else the status code's name."""
    outcome: dict[str, str | int] = {RPC_GRPC_STATUS_CODE: code.value[0]}
    if code is not grpc.StatusCode.OK:
        outcome[ERROR_TYPE] = _error_kind(trailing or ()) or code.name
    return outcome


def _error_kind(trailing: Sequence[tuple[str, str | bytes]]) -> str | None:
    raw = next((value for key, value in trailing if key == _STATUS_DETAILS_KEY), None)
    if not isinstance(raw, bytes):
        return None
    try:
        status = status_pb2.Status.FromString(raw)
    except DecodeError:
        return None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    return None


def _caller_context(metadata: Sequence[tuple[str, str | bytes]] | None) -> otel_context.Context:
    """The trace context (W3C traceparent/tracestate, baggage) the caller sent, on an empty base."""
    carrier = {key: value for key, value in metadata or () if isinstance(value, str)}
    return propagate.extract(carrier, context=otel_context.Context())
