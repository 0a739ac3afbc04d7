"""QueueWorker: takes executions from Redis and runs them through the daemon's Executor.

One loop takes work, never more than the pool can start: one TAKE call queues due delayed
executions, takes over executions whose holder stopped renewing its claim, then takes new ones
round-robin over the tenants. When nothing is left it blocks on the wake list (BLPOP: each token
wakes one idle worker, not all of them) or, when the pool is full, on a free slot. Each taken
execution runs in its own task, which appends its events to the execution's stream and
finishes, retries or dead-letters it. A second loop renews the claims of the running executions.

Losing Redis stops nothing that runs: every call is retried with backoff until Redis is back, and
`connected` says so meanwhile (for health and status).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, ParamSpec, Protocol, TypeVar

from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

from sandbox_client.redisqueue import keys
from sandbox_client.redisqueue.backoff import Backoff
from sandbox_client.redisqueue.store import (
    REDIS_DOWN,
    TAKE_BATCH,
    Begun,
    ClaimLost,
    DeadLetter,
    Entry,
    Failure,
    QueueDepth,
    QueueStore,
    StoredEvent,
    Taken,
)
from sandbox_client.v1 import sandbox_pb2 as pb
from sandboxd.config import Settings
from sandboxd.kinds import CancelledBeforeStart, kind_name, kind_value, retryable
from sandboxd.pool import PoolClosed
from sandboxd.queue.appender import EventAppender
from sandboxd.requests import ExecutionPlan, InvalidRequest, plan_execution
from sandboxd.tenants import AdmissionError, QuotaExceeded

log = logging.getLogger(__name__)

_P = ParamSpec("_P")
_T = TypeVar("_T")

# Running executions append concurrently, and one blocked read waits for work.
_MAX_CONNECTIONS = 64
_EVENT_OVERHEAD = 64 * 1024  # room for the other fields of a StepFinished around its result


@dataclass(frozen=True, slots=True)
class QueueOptions:
    visibility_timeout_s: float = 30.0  # a claim not renewed for this long is taken over
    max_attempts: int = 3  # then the execution goes to the dead-letter stream
    retention_s: float = keys.DEFAULT_RETENTION_S  # how long events and records are kept
    retry_backoff_s: float = 1.0  # delay before the second attempt; doubles after each
    retry_backoff_max_s: float = 300.0
    max_payload_bytes: int = keys.MAX_PAYLOAD_BYTES  # the largest event (a step's result)
    # An idle worker looks for taken-over claims at least this often (it is woken for new work).
    idle_check_s: float = 2.0
    depth_top_tenants: int = 20  # tenants whose depth is read one by one (metrics), the rest summed

    def retry_delay_s(self, attempt: int) -> float:
        return min(self.retry_backoff_max_s, self.retry_backoff_s * 2.0 ** (attempt - 1))

    @property
    def visibility_ms(self) -> int:
        return int(self.visibility_timeout_s * 1000)


class Capacity(Protocol):
    """How many executions the runner can start (the jail pool's figures)."""

    @property
    def maximum(self) -> int: ...

    @property
    def leased(self) -> int: ...


class Runner(Protocol):
    """What the worker needs of the daemon's Executor: the boundary the queue's tests and
    benchmark replace to measure the queue without jails."""

    @property
    def pool(self) -> Capacity: ...

    def run(self, plan: ExecutionPlan) -> AsyncGenerator[pb.ExecutionEvent, None]: ...

    def cancel(self, tenant_id: str, execution_id: str) -> bool: ...


class QueueWorker:
    """Runs queued executions on `executor`'s pool; see the module docstring."""

    def __init__(
        self,
        redis_url: str,
        executor: Runner,
        settings: Settings,
        worker_id: str,
        options: QueueOptions | None = None,
    ):
        self.worker_id = worker_id
        # One consumer name per process: a restarted worker with the same id is another holder.
        self.consumer = f"{worker_id}/{uuid.uuid4().hex[:8]}"
        self.options = options or QueueOptions()
        self._executor = executor
        self._settings = settings
        self._store = QueueStore(redis_url, max_connections=_MAX_CONNECTIONS)
        self._running: dict[Entry, asyncio.Task[None]] = {}  # taken until processed
        self._slot_freed = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._connected = False
        self._last_error = ""
        self._disconnects = 0
        self.taken = 0
        self.wakeups = 0  # times a token woke this worker
        self.idle_takes = 0  # TAKE calls that found nothing

    # -- status ----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Redis answered the last call (False from the first failure until a call succeeds)."""
        return self._connected

    def status(self) -> dict[str, Any]:
        """What health and status show of the queue."""
        return {
            "worker_id": self.worker_id,
            "consumer": self.consumer,
            "connected": self._connected,
            "running": len(self._running),
            "taken": self.taken,
            "disconnects": self._disconnects,
            "last_error": self._last_error,
            "wakeups": self.wakeups,
            "idle_takes": self.idle_takes,
        }

    async def depth(self) -> QueueDepth:
        """The depth of the tenants with the most waiting work, and the totals."""
        return await self._store.depth(self.options.depth_top_tenants)

    def _up(self) -> None:
        if not self._connected:
            log.info("queue: connected to Redis")
        self._connected = True

    def _down(self, error: Exception) -> None:
        if self._connected:
            self._disconnects += 1
            log.warning("queue: lost Redis (%s); retrying with backoff", error)
        self._connected = False
        self._last_error = str(error)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start taking work; Redis need not be reachable yet (the loops retry)."""
        self._loops = [
            asyncio.create_task(self._take_loop()),
            asyncio.create_task(self._hold_loop()),
        ]

    async def stop(self, grace: float = 30.0) -> None:
        """Take nothing more, let running executions finish within `grace`, hand back the rest.

        A handed-back execution is queued again at once for another worker (the attempt counts).
        """
        take_loop, hold_loop = self._loops
        await _cancelled(take_loop)
        tasks = list(self._running.values())
        if tasks:
            _done, late = await asyncio.wait(tasks, timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await _cancelled(hold_loop)
        await self._store.close()

    # -- taking work -----------------------------------------------------------------------

    def _free(self) -> int:
        """Executions the pool can start now.

        Ours count from the take until their jail is destroyed and its uid free again (the pool
        stops counting a jail as leased before that); jails leased beyond ours are gRPC's.
        """
        pool = self._executor.pool
        return max(0, pool.maximum - max(pool.leased, len(self._running)))

    async def _take_loop(self) -> None:
        backoff = Backoff()
        while True:
            try:
                await self._take_once()
            except REDIS_DOWN as exc:
                self._down(exc)
                await asyncio.sleep(backoff.next_delay())
            else:
                self._up()
                backoff.reset()

    async def _take_once(self) -> None:
        self._slot_freed.clear()  # before looking at capacity: a slot freed later wakes us
        wanted = min(self._free(), TAKE_BATCH)
        if not wanted:
            # Full: a finished execution frees a slot; claims of dead workers wait meanwhile.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._idle_timeout(None)):
                    await self._slot_freed.wait()
            return
        taken, next_due_s = await self._store.take(
            self.consumer,
            wanted,
            self.options.visibility_ms,
            self.options.max_attempts,
            self._retention_ms,
        )
        self._launch(taken)
        if len(taken) < wanted:  # nothing more waits: sleep until woken
            self.idle_takes += not taken
            if await self._store.wait_for_work(self._idle_timeout(next_due_s)):
                self.wakeups += 1

    def _idle_timeout(self, next_due_s: float | None) -> float:
        """How long an idle worker blocks: until the next delayed execution is due, or the next
        look for dead workers' claims; jittered so that idle workers do not wake in step."""
        timeout = min(self.options.idle_check_s, self.options.visibility_timeout_s / 4)
        if next_due_s is not None:
            timeout = min(timeout, next_due_s)
        return max(0.01, timeout * random.uniform(1.0, 1.1))

    def _launch(self, taken: list[Taken]) -> None:
        for one in taken:
            task = asyncio.create_task(self._process(one.entry, one.begun))
            self._running[one.entry] = task
            self.taken += 1

    async def _hold_loop(self) -> None:
        """Renew the running entries' claims; stop executions whose entry was taken over."""
        while True:
            await asyncio.sleep(self.options.visibility_timeout_s / 3)
            held = list(self._running)
            if not held:
                continue
            try:
                lost = await self._store.hold(self.consumer, held, self.options.visibility_ms)
            except REDIS_DOWN as exc:
                self._down(exc)
                continue
            # An execution this worker finished meanwhile is not lost (HOLD says released); one
            # that ended here while HOLD was under way is not ours to stop anymore.
            for entry in lost:
                if entry in self._running:
                    log.warning(
                        "queue: execution %s was taken over; stopping it", entry.execution_id
                    )
                    self._executor.cancel(entry.tenant_id, entry.execution_id)

    # -- running one entry -----------------------------------------------------------------

    async def _process(self, entry: Entry, begun: Begun | None) -> None:
        try:
            await self._attempt(entry, begun)
        except (ClaimLost, CancelledBeforeStart):  # the hold loop cancels what it lost
            log.warning("queue: execution %s was taken over by another worker", entry.execution_id)
        except asyncio.CancelledError:
            stopped = f"worker {self.worker_id} stopped before it finished"
            await self._hand_back(entry, Failure("UNAVAILABLE", stopped))
            raise
        except Exception as exc:
            # A bug here must not lose the execution: hand it back for another attempt.
            log.exception("queue: execution %s failed in the worker", entry.execution_id)
            await self._hand_back(entry, Failure("INTERNAL", f"worker {self.worker_id}: {exc!r}"))
        finally:
            del self._running[entry]
            self._slot_freed.set()

    async def _hand_back(self, entry: Entry, failure: Failure) -> None:
        """Queue the execution again now; if Redis is away its claim expires and another worker
        takes it over."""
        with contextlib.suppress(ClaimLost, *REDIS_DOWN):
            await self._store.retry(entry, self.consumer, failure, 0, refund=False)

    async def _attempt(self, entry: Entry, begun: Begun | None) -> None:
        """Run the attempt TAKE began; `begun` is None when its request was too large to come
        with TAKE (BEGIN returns it, and the same attempt)."""
        if begun is None:
            begun = await self._redo(
                self._store.begin,
                entry,
                self.consumer,
                self.options.max_attempts,
                self._retention_ms,
            )
        if begun is None:
            log.warning("queue: execution %s expired before it ran", entry.execution_id)
        elif begun.attempt == 0:
            await self._give_up(entry, self.options.max_attempts, begun.last)
        else:
            await self._execute(entry, begun)

    async def _execute(self, entry: Entry, begun: Begun) -> None:
        try:
            plan = self._plan(begun)
        except InvalidRequest as exc:
            last = _finished_event(entry.execution_id, 0, pb.ERROR_KIND_INVALID_REQUEST, str(exc))
            await self._finish(entry, begun.attempt, last, keys.FAILED)
            return
        try:
            last, unsent = await self._run(entry, plan)
        except (AdmissionError, PoolClosed) as exc:
            # Refused before it started (the tenant is over its quota on this daemon, or the
            # daemon is draining): queue it again, and the attempt does not count.
            delay_s = exc.retry_after_s if isinstance(exc, QuotaExceeded) else 0.0
            kind = "QUOTA_EXCEEDED" if isinstance(exc, QuotaExceeded) else "UNAVAILABLE"
            await self._retry(entry, Failure(kind, str(exc)), delay_s, refund=True)
            return
        await self._conclude(entry, begun.attempt, last, unsent)

    async def _conclude(
        self, entry: Entry, attempt: int, last: pb.ExecutionEvent, unsent: list[StoredEvent]
    ) -> None:
        """Store the outcome (after the attempt's `unsent` events), or retry a retryable failure
        while attempts are left."""
        outcome = last.execution_finished
        if outcome.status == pb.EXECUTION_STATUS_SUCCEEDED:
            await self._finish(entry, attempt, last, keys.SUCCEEDED, unsent=unsent)
        elif not retryable(outcome.error_kind):
            await self._finish(entry, attempt, last, keys.FAILED, unsent=unsent)
        elif attempt < self.options.max_attempts:
            if unsent:
                await self._append(entry, unsent)
            failure = Failure(kind_name(outcome.error_kind), outcome.error_message)
            await self._retry(entry, failure, self.options.retry_delay_s(attempt), refund=False)
        else:
            dead = DeadLetter(
                execution_id=entry.execution_id,
                tenant_id=entry.tenant_id,
                attempts=attempt,
                kind=kind_name(outcome.error_kind),
                reason=outcome.error_message,
            )
            await self._finish(entry, attempt, last, keys.DEAD_STATE, dead, unsent=unsent)

    async def _retry(self, entry: Entry, failure: Failure, delay_s: float, *, refund: bool) -> None:
        delay_ms = int(delay_s * 1000)
        await self._redo(self._store.retry, entry, self.consumer, failure, delay_ms, refund=refund)

    def _plan(self, begun: Begun) -> ExecutionPlan:
        try:
            request = pb.ExecuteRequest.FromString(begun.request)
        except DecodeError as exc:
            raise InvalidRequest(f"the queued request does not decode: {exc}") from None
        plan = plan_execution(request, self._settings)
        # A result must fit in one stored event; above that the step fails RESULT_TOO_LARGE.
        most = self.options.max_payload_bytes - _EVENT_OVERHEAD
        steps = tuple(
            replace(
                step, limits=replace(step.limits, result_bytes=min(most, step.limits.result_bytes))
            )
            for step in plan.steps
        )
        return replace(plan, attempt=begun.attempt, steps=steps)

    async def _run(
        self, entry: Entry, plan: ExecutionPlan
    ) -> tuple[pb.ExecutionEvent, list[StoredEvent]]:
        """Run the plan, storing its events as they come; the last (ExecutionFinished) and the
        events not stored yet, for the final write."""
        last: pb.ExecutionEvent | None = None
        appender = EventAppender(lambda batch: self._append(entry, batch))
        try:
            # Executor.run is an async generator: closing it when we stop early kills the jail.
            async with contextlib.aclosing(self._executor.run(plan)) as events:
                async for event in events:
                    if event.HasField("execution_finished"):
                        last = event
                    else:
                        appender.add(await self._stored(entry, plan.attempt, event))
            unsent = await appender.close()
        finally:
            appender.cancel()
        if last is None:
            raise RuntimeError("the execution ended without ExecutionFinished")
        return last, unsent

    async def _append(self, entry: Entry, events: list[StoredEvent]) -> None:
        await self._redo(self._store.append, entry, self.consumer, events, self._retention_ms)

    async def _give_up(self, entry: Entry, attempts: int, last: Failure) -> None:
        """Dead-letter an execution that will not run again, telling its readers why."""
        # Its final event goes after the stored events of its last attempt.
        last_id = await self._redo(self._store.last_event_id, entry.execution_id)
        attempt, seq = (last_id[0], last_id[1] + 1) if last_id else (1, 0)
        message = f"gave up after {attempts} attempts: {last.message}"
        event = _finished_event(entry.execution_id, seq, kind_value(last.kind), message)
        dead = DeadLetter(entry.execution_id, entry.tenant_id, attempts, last.kind, last.message)
        await self._finish(entry, attempt, event, keys.DEAD_STATE, dead)

    async def _finish(
        self,
        entry: Entry,
        attempt: int,
        last: pb.ExecutionEvent,
        state: str,
        dead: DeadLetter | None = None,
        *,
        unsent: list[StoredEvent] | None = None,
    ) -> None:
        stored = [*(unsent or []), await self._stored(entry, attempt, last)]
        await self._redo(
            self._store.finish,
            entry,
            self.consumer,
            stored,
            self._retention_ms,
            state=state,
            dead=dead,
        )
        if dead is not None:
            log.warning("queue: execution %s dead-lettered: %s", entry.execution_id, dead.reason)

    async def _stored(self, entry: Entry, attempt: int, event: pb.ExecutionEvent) -> StoredEvent:
        """The event as its stream entry; a large one is put in its own key first."""
        event_id = f"{attempt}-{event.seq}"
        data = event.SerializeToString()
        if len(data) <= keys.INLINE_EVENT_BYTES:
            return event_id, keys.EVENT_INLINE, data
        blob = keys.blob(entry.execution_id, attempt, event.seq)
        await self._redo(self._store.put_blob, blob, data, self._retention_ms)
        return event_id, keys.EVENT_BLOB, blob.encode()

    async def _redo(
        self, call: Callable[_P, Awaitable[_T]], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        """`call`, repeated with backoff while Redis is unreachable (every call here is safe to
        repeat: appends are keyed by event id, BEGIN counts once per delivery, and FINISH and
        RETRY answer a replay as done)."""
        backoff = Backoff()
        while True:
            try:
                result = await call(*args, **kwargs)
            except REDIS_DOWN as exc:
                self._down(exc)
                await asyncio.sleep(backoff.next_delay())
            else:
                self._up()
                return result

    @property
    def _retention_ms(self) -> int:
        return int(self.options.retention_s * 1000)


def _finished_event(execution_id: str, seq: int, kind: int, message: str) -> pb.ExecutionEvent:
    """An ExecutionFinished for an execution the worker ends without running it (again)."""
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return pb.ExecutionEvent(
        execution_id=execution_id,
        seq=seq,
        time=stamp,
        execution_finished=pb.ExecutionFinished(
            status=pb.EXECUTION_STATUS_FAILED,
            error_kind=kind,  # type: ignore[arg-type]
            error_message=message,
        ),
    )


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def default_worker_id() -> str:
    return f"{os.uname().nodename}-{os.getpid()}"
