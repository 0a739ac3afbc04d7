"""The gRPC servicer: requests in, events out. No jail logic lives here."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import psutil

from sandboxd import __version__
from sandboxd.config import Settings
from sandboxd.executions import ExecutionAlreadyRunning, Executor
from sandboxd.jail.errors import JailError
from sandboxd.pool import PoolClosed
from sandboxd.queue.worker import QueueWorker
from sandboxd.requests import (
    ChunkedInput,
    ExecutionPlan,
    InvalidRequest,
    StepPlan,
    plan_execution,
    plan_session,
    plan_session_step,
)
from sandboxd.tenants import AdmissionClosed, QuotaExceeded
from sandboxd.v1 import sandbox_pb2 as pb
from sandboxd.v1 import sandbox_pb2_grpc as pb_grpc

ERROR_KIND_KEY = "sandboxd-error-kind"
RETRY_AFTER_KEY = "sandboxd-retry-after-ms"


async def abort(
    context: grpc.aio.ServicerContext, code: grpc.StatusCode, kind: int, message: str
) -> None:
    """End the RPC with `code`, naming the ErrorKind in the trailing metadata."""
    context.set_trailing_metadata(((ERROR_KIND_KEY, pb.ErrorKind.Name(kind)),))
    await context.abort(code, message)


class SandboxService(pb_grpc.SandboxServicer):
    def __init__(
        self,
        settings: Settings,
        executor: Executor,
        *,
        cgroup_mode: str,
        queue: QueueWorker | None = None,
    ):
        self._settings = settings
        self._executor = executor
        self._cgroup_mode = cgroup_mode
        self._queue = queue
        self._started_at = time.monotonic()
        self.draining = False

    async def Execute(
        self, request: pb.ExecuteRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ExecutionEvent]:
        async for event in self._execute(context, lambda: _planned(request, self._settings)):
            yield event

    async def ExecuteChunked(
        self, parts: AsyncIterator[pb.ExecuteUpload], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ExecutionEvent]:
        async def plan() -> tuple[ExecutionPlan, None]:
            request = await _uploaded_request(parts, self._settings.max_input_bytes)
            return plan_execution(request, self._settings), None

        async for event in self._execute(context, plan):
            yield event

    async def Session(
        self, parts: AsyncIterator[pb.SessionRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ExecutionEvent]:
        async def plan() -> tuple[ExecutionPlan, AsyncIterator[StepPlan]]:
            first = await anext(parts, None)
            if first is None or not first.HasField("open"):
                raise InvalidRequest("a session starts with an `open` message")
            session = plan_session(first.open, self._settings)
            return session, _session_steps(parts, session, self._settings)

        async for event in self._execute(context, plan):
            yield event

    async def _execute(
        self,
        context: grpc.aio.ServicerContext,
        plan: Callable[[], Awaitable[tuple[ExecutionPlan, AsyncIterator[StepPlan] | None]]],
    ) -> AsyncIterator[pb.ExecutionEvent]:
        """Plan, admit and run one execution, ending the RPC with the right status if refused."""
        try:
            planned, steps = await plan()
        except InvalidRequest as exc:
            self._executor.outcomes["INVALID_REQUEST"] += 1  # never reaches the executor
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, pb.INVALID_REQUEST, str(exc))
            return
        if self.draining:
            await abort(
                context, grpc.StatusCode.UNAVAILABLE, pb.UNAVAILABLE, "the daemon is draining"
            )
            return
        try:
            async for event in self._executor.run(planned, steps, _metadata(context)):
                yield event
        except QuotaExceeded as exc:
            context.set_trailing_metadata(
                (
                    (ERROR_KIND_KEY, pb.ErrorKind.Name(pb.QUOTA_EXCEEDED)),
                    (RETRY_AFTER_KEY, str(round(exc.retry_after_s * 1000))),
                )
            )
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except AdmissionClosed as exc:
            await abort(context, grpc.StatusCode.UNAVAILABLE, pb.UNAVAILABLE, str(exc))
        except ExecutionAlreadyRunning as exc:
            await abort(context, grpc.StatusCode.ALREADY_EXISTS, pb.INVALID_REQUEST, str(exc))
        except PoolClosed as exc:
            await abort(context, grpc.StatusCode.UNAVAILABLE, pb.UNAVAILABLE, str(exc))
        except JailError as exc:
            message = f"could not start a jail: {exc}"
            await abort(context, grpc.StatusCode.UNAVAILABLE, pb.UNAVAILABLE, message)

    async def Cancel(
        self, request: pb.CancelRequest, context: grpc.aio.ServicerContext
    ) -> pb.CancelResponse:
        return pb.CancelResponse(found=self._executor.cancel(request.execution_id))

    async def GetStatus(
        self, request: pb.GetStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.Status:
        return self.status()

    def _queue_status(self) -> pb.QueueStatus | None:
        return None if self._queue is None else _queue_status_of(self._queue)

    @property
    def serving(self) -> bool:
        """Not draining, and the pool can hand out jails."""
        return not self.draining and self._executor.pool.usable

    def status(self) -> pb.Status:
        pool = self._executor.pool
        starts = sorted(pool.stats.start_times_s)
        memory = psutil.virtual_memory()
        return pb.Status(
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


async def _planned(
    request: pb.ExecuteRequest, settings: Settings
) -> tuple[ExecutionPlan, AsyncIterator[StepPlan] | None]:
    return plan_execution(request, settings), None


async def _uploaded_request(
    parts: AsyncIterator[pb.ExecuteUpload], max_input_bytes: int
) -> pb.ExecuteRequest:
    """The request of an ExecuteChunked call with its input put back together."""
    first = await anext(parts, None)
    if first is None or not first.HasField("request"):
        raise InvalidRequest("ExecuteChunked starts with the request")
    request = first.request
    upload = ChunkedInput(max_input_bytes)
    upload.add(request.input)
    async for part in parts:
        if not part.HasField("input_chunk"):
            raise InvalidRequest("ExecuteChunked takes one request, then input chunks")
        upload.add(part.input_chunk.data)
        if part.input_chunk.last:
            break
    request.input = upload.value()
    return request


async def _session_steps(
    parts: AsyncIterator[pb.SessionRequest], plan: ExecutionPlan, settings: Settings
) -> AsyncIterator[StepPlan]:
    """The caller's steps, each with its input assembled; InvalidRequest ends the session."""
    index = 0
    async for part in parts:
        if not part.HasField("step"):
            raise InvalidRequest("expected a step (input chunks follow a step with input_chunked)")
        step = part.step
        raw_input = step.input
        if step.input_chunked:
            raw_input = await _step_input(parts, step.input, settings.max_input_bytes)
        yield plan_session_step(step, index, plan, settings, raw_input)
        index += 1


async def _step_input(
    parts: AsyncIterator[pb.SessionRequest], first: bytes, max_bytes: int
) -> bytes:
    upload = ChunkedInput(max_bytes)
    upload.add(first)
    async for part in parts:
        if not part.HasField("input_chunk"):
            raise InvalidRequest("a chunked step input ends with a chunk marked last")
        upload.add(part.input_chunk.data)
        if part.input_chunk.last:
            return upload.value()
    raise InvalidRequest("the session closed inside a chunked step input")


def _percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, round(fraction * (len(sorted_values) - 1)))
    return sorted_values[index]
