"""QueueWorker: takes executions from Redis and runs them through the daemon's Executor.

One loop takes work: it queues due delayed executions, takes over entries of workers that stopped
renewing their claims, then takes new entries round-robin over the tenants, never more than the
pool can start; when there is nothing to do it blocks on the wake stream (or on a free slot).
Each taken entry runs in its own task, which appends every event to the execution's stream and
finishes, retries or dead-letters it. A second loop renews the claims of the running entries.

Losing Redis stops nothing that runs: every call is retried with backoff until Redis is back, and
`connected` says so meanwhile (for health and status).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, ParamSpec, TypeVar

from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

from sandbox_client.v1 import sandbox_pb2 as pb
from sandboxd.config import Settings
from sandboxd.executions import Executor
from sandboxd.kinds import kind_name, kind_value
from sandboxd.pool import PoolClosed
from sandboxd.queue import keys
from sandboxd.queue.backoff import Backoff
from sandboxd.queue.store import (
    REDIS_DOWN,
    Begun,
    DeadLetter,
    Entry,
    Failure,
    QueueDepth,
    QueueStore,
    StoredEvent,
)
from sandboxd.requests import ExecutionPlan, InvalidRequest, plan_execution
from sandboxd.tenants import AdmissionError, QuotaExceeded

log = logging.getLogger(__name__)

_P = ParamSpec("_P")
_T = TypeVar("_T")

RETRYABLE = frozenset({pb.ERROR_KIND_CRASHED, pb.ERROR_KIND_UNAVAILABLE})
_IDLE_TICK_S = 1.0
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

    def retry_delay_s(self, attempt: int) -> float:
        return min(self.retry_backoff_max_s, self.retry_backoff_s * 2.0 ** (attempt - 1))


class LostClaim(Exception):
    """Another worker took the entry over: this one must not write for it anymore."""


class QueueWorker:
    """Runs queued executions on `executor`'s pool; see the module docstring."""

    def __init__(
        self,
        redis_url: str,
        executor: Executor,
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
        self._wake_id = "0-0"
        self._next_claim = 0.0
        self._loops: list[asyncio.Task[None]] = []
        self._connected = False
        self._last_error = ""
        self._disconnects = 0
        self.taken = 0

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
        }

    async def depth(self) -> QueueDepth:
        """Queue depth and oldest waiting entry's age per tenant, delayed and dead counts."""
        return await self._store.depth()

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
        next_due = await self._store.promote()
        started = 0
        now = time.monotonic()
        if self._free() and now >= self._next_claim:
            self._next_claim = now + self.options.visibility_timeout_s / 4
            idle_ms = int(self.options.visibility_timeout_s * 1000)
            started += self._launch(await self._store.claim(self.consumer, idle_ms, self._free()))
        if self._free():
            started += self._launch(await self._store.take(self.consumer, self._free()))
        if not started:
            # Idle, but not past the next delayed execution's time nor the next claim check.
            timeout = min(_IDLE_TICK_S, self.options.visibility_timeout_s / 4)
            await self._idle(timeout if next_due is None else min(timeout, next_due))

    async def _idle(self, timeout: float) -> None:
        """Wait for new work (the wake stream) or, when the pool is full, for a free slot."""
        if not self._free():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._slot_freed.wait()
            return
        self._wake_id = await self._store.wait_for_work(self._wake_id, max(1, int(timeout * 1000)))

    def _launch(self, entries: list[Entry]) -> int:
        for entry in entries:
            task = asyncio.create_task(self._process(entry))
            self._running[entry] = task
            self.taken += 1
        return len(entries)

    async def _hold_loop(self) -> None:
        """Renew the running entries' claims; stop executions whose entry was taken over."""
        while True:
            await asyncio.sleep(self.options.visibility_timeout_s / 3)
            held = list(self._running)
            if not held:
                continue
            try:
                lost = await self._store.hold(self.consumer, held)
            except REDIS_DOWN as exc:
                self._down(exc)
                continue
            for entry in lost:
                log.warning("queue: execution %s was taken over; stopping it", entry.execution_id)
                self._executor.cancel(entry.tenant_id, entry.execution_id)

    # -- running one entry -----------------------------------------------------------------

    async def _process(self, entry: Entry) -> None:
        try:
            await self._attempt(entry)
        except LostClaim:
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
        """Queue the entry again now; if Redis is away it stays pending and is taken over later."""
        with contextlib.suppress(*REDIS_DOWN):
            await self._store.retry(entry, self.consumer, failure, 0, refund=False)

    async def _attempt(self, entry: Entry) -> None:
        begun = await self._redo(
            self._store.begin,
            entry,
            self.consumer,
            self.options.max_attempts,
            self._retention_ms,
        )
        if begun is None:
            await self._give_up(entry, 0, Failure("INTERNAL", "its record expired before it ran"))
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
            last = await self._run(entry, plan)
        except (AdmissionError, PoolClosed) as exc:
            # Refused before it started (the tenant is over its quota on this daemon, or the
            # daemon is draining): queue it again, and the attempt does not count.
            delay_s = exc.retry_after_s if isinstance(exc, QuotaExceeded) else 0.0
            kind = "QUOTA_EXCEEDED" if isinstance(exc, QuotaExceeded) else "UNAVAILABLE"
            await self._retry(entry, Failure(kind, str(exc)), delay_s, refund=True)
            return
        await self._conclude(entry, begun.attempt, last)

    async def _conclude(self, entry: Entry, attempt: int, last: pb.ExecutionEvent) -> None:
        """Store the outcome, or retry a retryable failure while attempts are left."""
        outcome = last.execution_finished
        if outcome.status == pb.EXECUTION_STATUS_SUCCEEDED:
            await self._finish(entry, attempt, last, keys.SUCCEEDED)
        elif outcome.error_kind not in RETRYABLE:
            await self._finish(entry, attempt, last, keys.FAILED)
        elif attempt < self.options.max_attempts:
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
            await self._finish(entry, attempt, last, keys.DEAD_STATE, dead)

    async def _retry(self, entry: Entry, failure: Failure, delay_s: float, *, refund: bool) -> None:
        delay_ms = int(delay_s * 1000)
        if not await self._redo(
            self._store.retry, entry, self.consumer, failure, delay_ms, refund=refund
        ):
            raise LostClaim

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

    async def _run(self, entry: Entry, plan: ExecutionPlan) -> pb.ExecutionEvent:
        """Run the plan, storing every event but the last (ExecutionFinished), which it returns."""
        last: pb.ExecutionEvent | None = None
        # Executor.run is an async generator: closing it when we stop early kills the jail now.
        async with contextlib.aclosing(self._executor.run(plan)) as events:
            async for event in events:
                if event.HasField("execution_finished"):
                    last = event
                elif not await self._redo(
                    self._store.append,
                    entry,
                    self.consumer,
                    await self._stored(entry, plan.attempt, event),
                    self._retention_ms,
                ):
                    raise LostClaim
        if last is None:
            raise RuntimeError("the execution ended without ExecutionFinished")
        return last

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
    ) -> None:
        stored = await self._stored(entry, attempt, last)
        if not await self._redo(
            self._store.finish,
            entry,
            self.consumer,
            stored,
            self._retention_ms,
            state=state,
            dead=dead,
        ):
            raise LostClaim
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
        repeat: appends are keyed by event id, and the rest check the claim)."""
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
