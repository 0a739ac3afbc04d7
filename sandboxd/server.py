"""The gRPC servicer: requests in, events out. No jail logic lives here."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc
import psutil
from google.protobuf.message import Message

from sandbox_client import UPLOAD_ACCEPTED
from sandbox_client.v1 import sandbox_pb2 as pb
from sandbox_client.v1 import sandbox_pb2_grpc as pb_grpc
from sandboxd import __version__, memory
from sandboxd.config import Settings
from sandboxd.decoding import Undecodable
from sandboxd.executions import ExecutionAlreadyRunning, Executor
from sandboxd.jail.errors import JailError
from sandboxd.kinds import CancelledBeforeStart, kind_name
from sandboxd.pool import PoolClosed
from sandboxd.queue.worker import QueueWorker
from sandboxd.refusals import Refusal, refuse
from sandboxd.requests import (
    ChunkedInput,
    ExecutionPlan,
    InvalidRequest,
    StepPlan,
    plan_execution_async,
    plan_session,
    plan_session_step,
)
from sandboxd.tenants import AdmissionClosed, QuotaExceeded

log = logging.getLogger(__name__)

# A draining daemon or one that cannot start jails: another daemon may take the request now.
_UNAVAILABLE_RETRY_S = 1.0
_DEADLINE_SLACK_S = 0.25
# A client half-closes its ExecuteChunked stream right after the last chunk.
_UPLOAD_END_S = 10.0
_THREADED_CHUNK_BYTES = 64 * 1024


class SandboxService(pb_grpc.SandboxServiceServicer):
    def __init__(
        self,
        settings: Settings,
        executor: Executor,
        *,
        cgroup_mode: str,
        transport_security: str,
        queue: QueueWorker | None = None,
    ):
        self._settings = settings
        self._executor = executor
        self._cgroup_mode = cgroup_mode
        self.transport_security = transport_security
        self.queue = queue  # set once the daemon has started it
        self._started_at = time.monotonic()
        self.draining = False

    async def Execute(
        self, request: pb.ExecuteRequest | Undecodable, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ExecuteResponse]:
        async def plan() -> tuple[ExecutionPlan, None]:
            return await plan_execution_async(await _decoded(request), self._settings), None

        async for event in self._execute(context, plan):
            yield pb.ExecuteResponse(event=event)

    async def ExecuteChunked(
        self,
        parts: AsyncIterator[pb.ExecuteChunkedRequest | Undecodable],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ExecuteChunkedResponse]:
        async def plan() -> tuple[ExecutionPlan, None]:
            request, raw_input = await _uploaded_request(
                _decoded_parts(parts), self._settings.max_input_bytes, context
            )
            return await plan_execution_async(request, self._settings, raw_input), None

        async for event in self._execute(context, plan):
            yield pb.ExecuteChunkedResponse(event=event)

    async def Session(
        self,
        requests: AsyncIterator[pb.SessionRequest | Undecodable],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.SessionResponse]:
        parts = _decoded_parts(requests)

        async def plan() -> tuple[ExecutionPlan, AsyncIterator[StepPlan]]:
            first = await anext(parts, None)
            if first is None or not first.HasField("open"):
                raise InvalidRequest("a session starts with an `open` message", "open")
            session = plan_session(first.open, self._settings)
            return session, _session_steps(parts, session, self._settings)

        async for event in self._execute(context, plan):
            yield pb.SessionResponse(event=event)

    async def _execute(
        self,
        context: grpc.aio.ServicerContext,
        plan: Callable[[], Awaitable[tuple[ExecutionPlan, AsyncIterator[StepPlan] | None]]],
    ) -> AsyncIterator[pb.ExecutionEvent]:
        """Plan, admit and run one execution, ending the RPC with the right status if refused."""
        try:
            planned, steps = await plan()
        except InvalidRequest as exc:
            self._executor.outcomes[kind_name(pb.ERROR_KIND_INVALID_REQUEST)] += 1
            await refuse(context, _invalid(exc))
            return
        if self.draining:
            await refuse(context, _unavailable("the daemon is draining"))
            return
        try:
            events = self._executor.run(
                planned, steps, _metadata(context), functools.partial(_deadline_passed, context)
            )
            internal: str | None = None
            async for event in events:
                yield event
                if _failed_inside(event):
                    internal = event.execution_finished.error_message
            if internal is not None:
                # The events said INTERNAL; so does the RPC's status (the details are logged).
                await refuse(
                    context, Refusal(grpc.StatusCode.INTERNAL, pb.ERROR_KIND_INTERNAL, internal)
                )
        except QuotaExceeded as exc:
            await refuse(
                context,
                Refusal(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    pb.ERROR_KIND_QUOTA_EXCEEDED,
                    str(exc),
                    retry_after_s=exc.retry_after_s,
                ),
            )
        except ExecutionAlreadyRunning as exc:
            refusal = Refusal(
                grpc.StatusCode.ALREADY_EXISTS,
                pb.ERROR_KIND_INVALID_REQUEST,
                str(exc),
                field="execution_id",
            )
            await refuse(context, refusal)
        except (AdmissionClosed, PoolClosed) as exc:
            await refuse(context, _unavailable(str(exc)))
        except CancelledBeforeStart as exc:
            cancelled = Refusal(grpc.StatusCode.CANCELLED, pb.ERROR_KIND_CANCELLED, str(exc))
            await refuse(context, cancelled)
        except JailError as exc:
            log.warning("execution %s: could not start a jail: %s", planned.execution_id, exc)
            await refuse(context, _unavailable("could not start a jail"))

    async def Cancel(
        self, message: pb.CancelRequest | Undecodable, context: grpc.aio.ServicerContext
    ) -> pb.CancelResponse:
        try:
            request = await _decoded(message)
            if not request.tenant_id or not request.execution_id:
                raise InvalidRequest("Cancel names a tenant_id and an execution_id")
        except InvalidRequest as exc:
            await refuse(context, _invalid(exc))
        found = self._executor.cancel(request.tenant_id, request.execution_id)
        return pb.CancelResponse(found=found)

    async def GetStatus(
        self, request: pb.GetStatusRequest | Undecodable, context: grpc.aio.ServicerContext
    ) -> pb.GetStatusResponse:
        return self.status()

    def _queue_status(self) -> pb.QueueStatus | None:
        return None if self.queue is None else _queue_status_of(self.queue)

    @property
    def serving(self) -> bool:
        """Not draining, and the pool can hand out jails."""
        return not self.draining and self._executor.pool.usable

    def status(self) -> pb.GetStatusResponse:
        pool = self._executor.pool
        starts = sorted(pool.stats.start_times_s)
        memory = psutil.virtual_memory()
        return pb.GetStatusResponse(
            version=__version__,
            serving=self.serving,
            pool=pb.PoolStatus(
                warm=pool.warm,
                leased=pool.leased,
                starting=pool.starting,
                failed=pool.stats.failed,
                target=pool.target,
                started=pool.stats.started,
                start_ms_p50=_percentile(starts, 0.50) * 1000,
                start_ms_p99=_percentile(starts, 0.99) * 1000,
            ),
            executions_by_outcome=dict(self._executor.outcomes),
            running=self._executor.admission.running,
            tenants={
                tenant: pb.TenantLoad(running=load.running, queued=load.queued)
                for tenant, load in self._executor.admission.snapshot().items()
            },
            cgroup_mode=self._cgroup_mode,
            seccomp=self._settings.seccomp,
            uptime_s=time.monotonic() - self._started_at,
            load_1m=psutil.getloadavg()[0],
            cpu_percent=psutil.cpu_percent(interval=None),
            memory_available_bytes=memory.available,
            daemon_rss_bytes=psutil.Process().memory_info().rss,
            queue=self._queue_status(),
            transport_security=self.transport_security,
        )


def _queue_status_of(queue: QueueWorker) -> pb.QueueStatus:
    status = queue.status()
    return pb.QueueStatus(
        worker_id=status["worker_id"],
        connected=status["connected"],
        running=status["running"],
        taken=status["taken"],
        disconnects=status["disconnects"],
        last_error=status["last_error"],
    )


def _metadata(context: grpc.aio.ServicerContext) -> tuple[tuple[str, str | bytes], ...]:
    return tuple(context.invocation_metadata() or ())


_M = TypeVar("_M", bound=Message)


async def _decoded(message: _M | Undecodable) -> _M:
    if isinstance(message, Undecodable):
        message.release()
        raise InvalidRequest(message.reason)
    return message


async def _decoded_parts(parts: AsyncIterator[_M | Undecodable]) -> AsyncIterator[_M]:
    """The messages of a request stream; InvalidRequest at the first that could not be decoded."""
    async for part in parts:
        yield await _decoded(part)


async def _uploaded_request(
    parts: AsyncIterator[pb.ExecuteChunkedRequest],
    max_input_bytes: int,
    context: grpc.aio.ServicerContext,
) -> tuple[pb.ExecuteRequest, bytes]:
    """The request of an ExecuteChunked call and its input, put back together.

    The daemon sends its initial metadata, with UPLOAD_ACCEPTED, once the first chunk's declared
    length is accepted: a client waits for it before streaming the rest, so a refused upload
    ends before megabytes are in flight (gRPC reports a call the server ended during a client's
    write as INTERNAL).
    """
    first = await anext(parts, None)
    if first is None or not first.HasField("request"):
        raise InvalidRequest("ExecuteChunked starts with the request", "request")
    request = first.request
    if request.input:
        raise InvalidRequest("with ExecuteChunked the input travels in input chunks", "input")
    raw_input = await _chunked_input(
        parts,
        max_input_bytes,
        "input_chunk",
        accepted=lambda: context.send_initial_metadata((UPLOAD_ACCEPTED,)),
    )
    # Nothing may follow the last chunk: the caller half-closes (an extra chunk is refused).
    try:
        async with asyncio.timeout(_UPLOAD_END_S):
            extra = await anext(parts, None)
    except TimeoutError:
        raise InvalidRequest(
            f"the upload did not end within {_UPLOAD_END_S:.0f} s after the chunk marked last",
            "input_chunk",
        ) from None
    if extra is not None:
        what = "an input chunk" if extra.HasField("input_chunk") else "a message"
        raise InvalidRequest(f"{what} came after the chunk marked last", "input_chunk")
    return request, raw_input


async def _session_steps(
    parts: AsyncIterator[pb.SessionRequest], plan: ExecutionPlan, settings: Settings
) -> AsyncIterator[StepPlan]:
    """The caller's steps, each with its input assembled; InvalidRequest ends the session."""
    index = 0
    async for part in parts:
        if not part.HasField("step"):
            raise InvalidRequest(
                "expected a step (input chunks follow a step with input_chunked)", "step"
            )
        step = part.step
        raw_input = step.input
        if step.input_chunked:
            if raw_input:
                raise InvalidRequest(
                    "a step with input_chunked sends its input in chunks only", "step.input"
                )
            raw_input = await _chunked_input(parts, settings.max_input_bytes, "input_chunk")
        yield await plan_session_step(step, index, plan, settings, raw_input)
        index += 1


async def _chunked_input(
    parts: AsyncIterator[pb.ExecuteChunkedRequest] | AsyncIterator[pb.SessionRequest],
    max_bytes: int,
    field: str,
    accepted: Callable[[], Awaitable[None]] | None = None,
) -> bytes:
    """Input chunks up to the one marked last, checked (offsets, length, digest) as they come;
    `accepted` is awaited once the first chunk's declared length is within the limit."""
    upload = ChunkedInput(max_bytes, field)
    try:
        await _take_chunks(upload, parts, field, accepted)
        # Joining megabytes releases the GIL: in a thread, the event loop goes on meanwhile.
        return await asyncio.to_thread(upload.value)
    except BaseException:
        # A refused upload's exception outlives the call (gRPC keeps its abort, which holds
        # this frame): the pieces go now, then their memory back to the system (+50 MiB per
        # refused 48 MiB upload before).
        if upload.received >= memory.GIVE_BACK_AFTER_BYTES:
            memory.give_back(free_first=upload.discard)
        else:
            upload.discard()
        raise


async def _take_chunks(
    upload: ChunkedInput,
    parts: AsyncIterator[pb.ExecuteChunkedRequest] | AsyncIterator[pb.SessionRequest],
    field: str,
    accepted: Callable[[], Awaitable[None]] | None,
) -> None:
    """Feed `upload` the parts' chunks until it is complete."""
    async for part in parts:
        if not part.HasField("input_chunk"):
            raise InvalidRequest("the input ended without a chunk marked last", field)
        chunk = part.input_chunk
        # Hashing a megabyte piece takes ~2 ms; hashlib lets go of the GIL, so in a thread the
        # event loop goes on meanwhile.
        if len(chunk.data) >= _THREADED_CHUNK_BYTES:
            complete = await asyncio.to_thread(upload.add, chunk)
        else:
            complete = upload.add(chunk)
        if accepted is not None:
            await accepted()
            accepted = None
        if complete:
            return


def _failed_inside(event: pb.ExecutionEvent) -> bool:
    """Whether `event` ends an execution that failed of the daemon's own fault."""
    # The oneof first: reading an unset message field builds an empty one.
    return (
        event.HasField("execution_finished")
        and event.execution_finished.error_kind == pb.ERROR_KIND_INTERNAL
    )


def _deadline_passed(context: grpc.aio.ServicerContext) -> bool:
    """Whether the caller's deadline is over. The caller's side may cancel the call at its own
    deadline, which the daemon's clock reaches a little later (the request's transit): a call
    ended that close to its deadline was ended by it."""
    remaining = context.time_remaining()
    return remaining is not None and remaining <= _DEADLINE_SLACK_S


def _invalid(exc: InvalidRequest) -> Refusal:
    return Refusal(
        grpc.StatusCode.INVALID_ARGUMENT, pb.ERROR_KIND_INVALID_REQUEST, str(exc), field=exc.field
    )


def _unavailable(message: str) -> Refusal:
    return Refusal(
        grpc.StatusCode.UNAVAILABLE,
        pb.ERROR_KIND_UNAVAILABLE,
        message,
        retry_after_s=_UNAVAILABLE_RETRY_S,
    )


def _percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, round(fraction * (len(sorted_values) - 1)))
    return sorted_values[index]
