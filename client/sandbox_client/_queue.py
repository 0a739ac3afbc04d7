"""QueueClient: enqueue executions in Redis for a fleet of sandboxd workers, and read their events.

::

    async with QueueClient("redis://127.0.0.1:6379") as queue:
        execution_id = await queue.enqueue(tenant_id="acme", steps=[Step("parse", code)], input=doc)
        result = await queue.wait(execution_id, timeout=60)       # like SandboxClient.run
        async for event in queue.events(execution_id): ...         # from any host, also later

An id enqueued twice runs once. Events stay readable for the retention period (24 h by default).
When a worker dies or a step crashes, the execution runs again: the events of every attempt are
kept in order (``ExecutionStarted.attempt`` tells them apart, and ``seq`` starts at 0 in each),
and only the last attempt ends with ``ExecutionFinished``, so a reader sees exactly one.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

from sandbox_client._closing import AsyncClosing
from sandbox_client._errors import ErrorKind, SandboxError
from sandbox_client._events import result_of
from sandbox_client._request import Egress, Limits, Step, execute_request
from sandbox_client.redisqueue import keys
from sandbox_client.redisqueue.backoff import Backoff
from sandbox_client.redisqueue.store import (
    BLOCK_MS,
    REDIS_DOWN,
    DeadLetter,
    NotReplicated,
    QueueDepth,
    QueueStore,
)
from sandbox_client.v1 import sandbox_pb2

_P = ParamSpec("_P")
_T = TypeVar("_T")
# States in which the job's last error is a real failure (while running it is a presumption).
_RETRIED = (keys.DELAYED_STATE, keys.DEAD_STATE)


@dataclass(frozen=True, slots=True)
class ExecutionInfo:
    """What the queue records of one execution (times are Redis server time, epoch ms)."""

    tenant_id: str
    state: str  # queued, delayed, running, succeeded, failed or dead
    attempts: int
    enqueued_ms: int
    run_at_ms: int
    started_ms: int | None  # of the last attempt
    finished_ms: int | None
    worker: str | None  # the worker of the last attempt
    last_error: str | None  # why the last attempt failed, while delayed for a retry or dead


class QueueClient(AsyncClosing):
    """A producer and reader of the sandboxd queue in Redis; use it as ``async with``."""

    def __init__(
        self,
        redis_url: str,
        *,
        retention_s: float = keys.DEFAULT_RETENTION_S,
        max_payload_bytes: int = keys.MAX_PAYLOAD_BYTES,
        reconnect_timeout_s: float = 60.0,
        max_connections: int = 256,
        replicas: int = 0,
        replicas_timeout_s: float = 1.0,
    ) -> None:
        """Connect lazily to ``redis_url``: ``redis://host:port/db``, or
        ``redis+sentinel://host:port[,host:port...]/service[/db]`` to follow Sentinel's primary.

        Args:
            retention_s: how long an execution that has not run yet is kept.
            max_payload_bytes: the largest serialized request :meth:`enqueue` accepts.
            reconnect_timeout_s: how long :meth:`events` keeps retrying an unreachable Redis
                before it raises UNAVAILABLE.
            max_connections: Redis connections at most; each :meth:`events` or :meth:`wait`
                in progress holds one while it blocks, and callers beyond wait for one.
            replicas: :meth:`enqueue` returns only once this many replicas hold the execution
                (Redis WAIT), so that a failover cannot lose it; 0 trusts the primary alone.
            replicas_timeout_s: how long :meth:`enqueue` waits for the replicas.
        """
        self._store = QueueStore(redis_url, max_connections=max_connections)
        self._retention_ms = int(retention_s * 1000)
        self._max_payload = max_payload_bytes
        self._reconnect_timeout = reconnect_timeout_s
        self._replicas = replicas
        self._replicas_timeout_ms = int(replicas_timeout_s * 1000)

    async def close(self) -> None:
        await self._store.close()

    async def enqueue(
        self,
        *,
        tenant_id: str,
        steps: Sequence[Step],
        input: object = None,
        input_json: bytes | None = None,
        execution_id: str | None = None,
        config_vars: Mapping[str, str] | None = None,
        credentials: Mapping[str, str] | None = None,
        limits: Limits | None = None,
        egress: Egress | None = None,
        run_at: datetime | None = None,
    ) -> str:
        """Queue an execution and return its id; an id already queued is not queued again.

        Takes :meth:`SandboxClient.execute`'s parameters, and ``run_at``: the execution starts
        at or after that time. The request is checked by the worker; one it refuses ends with
        INVALID_REQUEST in its events. Raises :class:`SandboxError` INVALID_REQUEST for a request
        over the size limit or without tenant, UNAVAILABLE when Redis cannot be reached or
        fewer replicas than asked confirmed the execution in time (it may run, or be lost in a
        failover: enqueue it again with the same id, which runs it once).
        Credentials are kept in Redis until the execution ends.
        """
        execution_id = execution_id or uuid.uuid4().hex
        if not tenant_id:
            raise SandboxError(ErrorKind.INVALID_REQUEST, "tenant_id is required")
        request = execute_request(
            tenant_id=tenant_id,
            steps=steps,
            input=input,
            input_json=input_json,
            execution_id=execution_id,
            config_vars=config_vars,
            credentials=credentials,
            limits=limits,
            egress=egress,
        ).SerializeToString()
        if len(request) > self._max_payload:
            raise SandboxError(
                ErrorKind.INVALID_REQUEST,
                f"the request is {len(request)} bytes; the queue takes at most {self._max_payload}",
                execution_id=execution_id,
            )
        run_at_ms = int(run_at.timestamp() * 1000) if run_at else 0
        try:
            await self._store.enqueue(
                execution_id,
                tenant_id,
                request,
                run_at_ms,
                self._retention_ms,
                replicas=self._replicas,
                replicas_timeout_ms=self._replicas_timeout_ms,
            )
        except NotReplicated as exc:
            raise SandboxError(
                ErrorKind.UNAVAILABLE,
                f"the queue did not confirm the execution on its replicas: {exc}",
                execution_id=execution_id,
            ) from exc
        except REDIS_DOWN as exc:
            raise SandboxError(
                ErrorKind.UNAVAILABLE, f"the queue is unreachable: {exc}", execution_id=execution_id
            ) from exc
        return execution_id

    async def events(self, execution_id: str) -> AsyncGenerator[sandbox_pb2.ExecutionEvent, None]:
        """The execution's events from the first, as they are stored, until ExecutionFinished.

        Rides out Redis restarts. Raises :class:`SandboxError` INVALID_REQUEST for an id the
        queue does not know (or no longer keeps), UNAVAILABLE when Redis stays unreachable for
        ``reconnect_timeout_s``.
        """
        last_id = "0-0"
        await self._check_known(execution_id)
        while True:
            entries = await self._reconnecting(
                execution_id, self._store.read_events, execution_id, last_id, BLOCK_MS
            )
            if not entries:
                await self._check_known(execution_id)
            for entry_id, fields in entries:
                last_id = entry_id
                event = await self._decode(execution_id, fields)
                yield event
                if event.HasField("execution_finished"):
                    return

    async def wait(self, execution_id: str, *, timeout: float | None = None) -> Any:
        """The last step's result, as :meth:`SandboxClient.run` returns it; raises SandboxError.

        ``timeout`` bounds the wait only (kind DEADLINE_EXCEEDED); the execution goes on.
        """
        try:
            async with asyncio.timeout(timeout):
                return await result_of(self.events(execution_id))
        except TimeoutError:
            raise SandboxError(
                ErrorKind.DEADLINE_EXCEEDED,
                f"no outcome within {timeout} s (the execution goes on)",
                execution_id=execution_id,
            ) from None

    async def info(self, execution_id: str) -> ExecutionInfo | None:
        """The queue's record of the execution; None when unknown or past its retention."""
        names = (
            keys.TENANT,
            keys.STATE,
            keys.ATTEMPTS,
            keys.ENQUEUED_MS,
            keys.RUN_AT_MS,
            keys.STARTED_MS,
            keys.FINISHED_MS,
            keys.WORKER,
            keys.LAST_ERROR,
        )
        found = await self._store.job(execution_id, names)
        if keys.TENANT not in found:
            return None
        state = found[keys.STATE]
        return ExecutionInfo(
            tenant_id=found[keys.TENANT],
            state=state,
            attempts=int(found[keys.ATTEMPTS]),
            enqueued_ms=int(found[keys.ENQUEUED_MS]),
            run_at_ms=int(found[keys.RUN_AT_MS]),
            started_ms=_int_or_none(found.get(keys.STARTED_MS)),
            finished_ms=_int_or_none(found.get(keys.FINISHED_MS)),
            worker=found.get(keys.WORKER),
            last_error=found.get(keys.LAST_ERROR) if state in _RETRIED else None,
        )

    async def depth(self, top: int = 20) -> QueueDepth:
        """Waiting, running, delayed and dead-lettered executions in all; and the waiting and
        running executions and oldest waiting one's age of the `top` tenants with most waiting."""
        return await self._store.depth(top)

    async def dead_letters(self, count: int = 100) -> list[DeadLetter]:
        """The most recent dead letters, oldest first."""
        return await self._store.dead_letters(count)

    async def _reconnecting(
        self,
        execution_id: str,
        call: Callable[_P, Awaitable[_T]],
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> _T:
        """`call`, repeated with backoff while Redis is unreachable, up to the reconnect timeout."""
        backoff = Backoff()
        deadline = time.monotonic() + self._reconnect_timeout
        while True:
            try:
                return await call(*args, **kwargs)
            except REDIS_DOWN as exc:
                if time.monotonic() > deadline:
                    raise SandboxError(
                        ErrorKind.UNAVAILABLE,
                        f"the queue is unreachable: {exc}",
                        execution_id=execution_id,
                    ) from exc
                await asyncio.sleep(backoff.next_delay())

    async def _check_known(self, execution_id: str) -> None:
        if not await self._reconnecting(execution_id, self._store.known, execution_id):
            raise SandboxError(
                ErrorKind.INVALID_REQUEST,
                f"the queue has no execution {execution_id!r} (unknown, or past its retention)",
                execution_id=execution_id,
            )

    async def _decode(
        self, execution_id: str, fields: Mapping[str, bytes]
    ) -> sandbox_pb2.ExecutionEvent:
        data = fields.get(keys.EVENT_INLINE)
        if data is None:
            blob = fields[keys.EVENT_BLOB].decode()
            data = await self._reconnecting(execution_id, self._store.get_blob, blob)
            if data is None:
                raise SandboxError(
                    ErrorKind.INTERNAL,
                    f"event {blob} is past its retention",
                    execution_id=execution_id,
                )
        return sandbox_pb2.ExecutionEvent.FromString(data)


def _int_or_none(value: str | None) -> int | None:
    return None if value is None else int(value)
