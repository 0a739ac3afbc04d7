"""Every Redis operation of the queue, typed: the worker and the client talk to Redis only here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias, cast

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sandboxd.queue import keys, lua


@dataclass(frozen=True, slots=True)
class Entry:
    """A tenant stream entry held by a worker (entry ids are unique within their stream only)."""

    tenant_id: str
    entry_id: str
    execution_id: str


@dataclass(frozen=True, slots=True)
class Failure:
    """Why an attempt ended without an outcome: an ErrorKind name and a message."""

    kind: str
    message: str


@dataclass(frozen=True, slots=True)
class Begun:
    """The attempt that begins, or 0 with how the last attempt failed when none is left."""

    attempt: int
    request: bytes
    last: Failure


@dataclass(frozen=True, slots=True)
class TenantDepth:
    """One tenant's backlog: the signal an autoscaler uses."""

    waiting: int  # entries no worker has taken yet
    running: int  # entries taken and not finished
    oldest_age_s: float  # age of the oldest waiting entry; 0 when none waits


@dataclass(frozen=True, slots=True)
class QueueDepth:
    tenants: dict[str, TenantDepth]
    delayed: int  # delayed executions and retries waiting for their time
    dead: int  # dead letters kept


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Why an execution was given up (how many attempts, the kind and message of the last)."""

    execution_id: str
    tenant_id: str
    attempts: int
    kind: str
    reason: str


# The socket timeout finds dead connections; blocking reads stay well under it.
SOCKET_TIMEOUT_S = 10.0
BLOCK_MS = 2000
_RETRIES = 3
# What a lost or restarting Redis raises (BusyLoadingError, while it loads its data, is a
# ConnectionError): the callers retry with backoff.
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)

Value: TypeAlias = bytes | str | int | float
# How an event is stored: its entry id (ATTEMPT-SEQ), then EVENT_INLINE and the serialized event,
# or EVENT_BLOB and the key that holds it.
StoredEvent: TypeAlias = tuple[str, str, bytes]
# A stream entry as redis-py returns it: id and fields.
_StreamEntry: TypeAlias = tuple[bytes, dict[bytes, bytes]]


def _entries(reply: list[list[bytes]]) -> list[Entry]:
    return [Entry(tenant.decode(), entry.decode(), id.decode()) for tenant, entry, id in reply]


def _stream_entries(reply: Any) -> list[_StreamEntry]:
    """The entries of an XREAD reply on one stream (redis-py's RESP2 shape)."""
    return [entry for _stream, entries in cast(list[Any], reply) for entry in entries]


class QueueStore:
    """The queue in one Redis: scripts registered once (redis-py re-sends them after a restart)."""

    def __init__(self, redis_url: str, *, max_connections: int):
        # Every blocked reader holds a connection: callers beyond `max_connections` wait for one
        # rather than fail. A call that fails on a connection Redis dropped (a restart) is
        # retried on a new one; every call here is safe to repeat (see the scripts).
        pool = redis.BlockingConnectionPool.from_url(
            redis_url,
            max_connections=max_connections,
            timeout=None,
            socket_timeout=SOCKET_TIMEOUT_S,
            retry=Retry(ExponentialBackoff(), _RETRIES),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )
        self._redis = redis.Redis.from_pool(pool)
        register = self._redis.register_script
        self._enqueue = register(lua.script(lua.ENQUEUE))
        self._promote = register(lua.script(lua.PROMOTE))
        self._take = register(lua.script(lua.TAKE))
        self._claim = register(lua.script(lua.CLAIM))
        self._hold = register(lua.script(lua.HOLD))
        self._begin = register(lua.script(lua.BEGIN))
        self._append = register(lua.script(lua.APPEND))
        self._finish = register(lua.script(lua.FINISH))
        self._retry = register(lua.script(lua.RETRY))
        self._depth = register(lua.script(lua.DEPTH))

    async def close(self) -> None:
        await self._redis.aclose()

    # -- producer --------------------------------------------------------------------------

    async def enqueue(
        self, execution_id: str, tenant_id: str, request: bytes, run_at_ms: int, retention_ms: int
    ) -> bool:
        """Record and queue the execution; False when its id is already known (nothing done)."""
        args: list[Value] = [execution_id, tenant_id, request, run_at_ms, retention_ms]
        return bool(await self._enqueue(args=args))

    # -- worker: taking --------------------------------------------------------------------

    async def promote(self, limit: int = 100) -> float | None:
        """Queue the delayed executions that are due; seconds until the next one, or None."""
        _moved, next_ms = await self._promote(args=[limit])
        return None if next_ms < 0 else int(next_ms) / 1000

    async def take(self, consumer: str, wanted: int) -> list[Entry]:
        """Up to `wanted` new entries, round-robin over the tenants."""
        return _entries(await self._take(args=[consumer, wanted]))

    async def claim(self, consumer: str, min_idle_ms: int, wanted: int) -> list[Entry]:
        """Up to `wanted` entries whose holder has not renewed its claim for `min_idle_ms`."""
        return _entries(await self._claim(args=[consumer, min_idle_ms, wanted]))

    async def hold(self, consumer: str, entries: list[Entry]) -> list[Entry]:
        """Renew the claims on `entries`; those this consumer no longer holds."""
        args: list[Value] = [consumer]
        for entry in entries:
            args += [entry.tenant_id, entry.entry_id]
        return [entries[int(position)] for position in await self._hold(args=args)]

    async def wait_for_work(self, after: str, block_ms: int) -> str:
        """Block until something is queued after the wake id `after`; the newest wake id."""
        reply = await self._redis.xread({keys.WAKE: after}, count=keys.WAKE_MAXLEN, block=block_ms)
        entries = _stream_entries(reply)
        return entries[-1][0].decode() if entries else after

    # -- worker: running -------------------------------------------------------------------

    async def begin(
        self, entry: Entry, consumer: str, max_attempts: int, retention_ms: int
    ) -> Begun | None:
        """Count the attempt that starts now; None when the job's record expired."""
        args: list[Value] = [entry.execution_id, consumer, max_attempts, retention_ms]
        reply = await self._begin(args=args)
        if reply is None:
            return None
        attempt, request, last_kind, last_error = reply
        return Begun(int(attempt), request, Failure(last_kind.decode(), last_error.decode()))

    async def put_blob(self, key: str, data: bytes, retention_ms: int) -> None:
        await self._redis.set(key, data, px=retention_ms)

    async def append(
        self, entry: Entry, consumer: str, event: StoredEvent, retention_ms: int
    ) -> bool:
        """Add one event to the execution's stream; False when the consumer lost the entry."""
        args: list[Value] = [entry.tenant_id, entry.entry_id, consumer, *event, retention_ms]
        return bool(await self._append(keys=[keys.events(entry.execution_id)], args=args))

    async def last_event_id(self, execution_id: str) -> tuple[int, int] | None:
        """(attempt, seq) of the execution's last stored event."""
        last = cast(
            list[_StreamEntry], await self._redis.xrevrange(keys.events(execution_id), count=1)
        )
        if not last:
            return None
        attempt, seq = last[0][0].decode().split("-")
        return int(attempt), int(seq)

    async def finish(
        self,
        entry: Entry,
        consumer: str,
        last_event: StoredEvent,
        retention_ms: int,
        *,
        state: str,
        dead: DeadLetter | None = None,
    ) -> bool:
        """Store the final event, set the state and acknowledge; False when the entry was lost."""
        args: list[Value] = [
            entry.tenant_id,
            entry.entry_id,
            consumer,
            *last_event,
            retention_ms,
            state,
        ]
        if dead is not None:
            args += [dead.execution_id, dead.attempts, dead.kind, dead.reason]
        script_keys = [keys.events(entry.execution_id), keys.job(entry.execution_id)]
        return bool(await self._finish(keys=script_keys, args=args))

    async def retry(
        self, entry: Entry, consumer: str, failure: Failure, delay_ms: int, *, refund: bool
    ) -> bool:
        """Schedule the next attempt in `delay_ms`; False when the entry was lost.

        With `refund`, the attempt that ended does not count: it never started.
        """
        args: list[Value] = [
            entry.tenant_id,
            entry.entry_id,
            consumer,
            entry.execution_id,
            delay_ms,
            failure.kind,
            failure.message,
            int(refund),
        ]
        return bool(await self._retry(keys=[keys.job(entry.execution_id)], args=args))

    # -- readers ---------------------------------------------------------------------------

    async def read_events(
        self, execution_id: str, after: str, block_ms: int, count: int = 100
    ) -> list[tuple[str, dict[str, bytes]]]:
        """Stored events after the entry id `after` (blocking up to `block_ms` for the first)."""
        reply = await self._redis.xread(
            {keys.events(execution_id): after}, count=count, block=block_ms
        )
        return [
            (entry_id.decode(), {name.decode(): value for name, value in fields.items()})
            for entry_id, fields in _stream_entries(reply)
        ]

    async def get_blob(self, key: str) -> bytes | None:
        return cast(bytes | None, await self._redis.get(key))

    async def known(self, execution_id: str) -> bool:
        """The queue holds the execution's record or events."""
        found = await self._redis.exists(keys.job(execution_id), keys.events(execution_id))
        return bool(found)

    async def job(self, execution_id: str, names: tuple[str, ...]) -> dict[str, str]:
        """Fields of the execution's record that are set."""
        values = cast(
            list[bytes | None], await self._redis.hmget(keys.job(execution_id), list(names))
        )
        return {name: value.decode() for name, value in zip(names, values, strict=True) if value}

    async def dead_letters(self, count: int) -> list[DeadLetter]:
        """The most recent dead letters, oldest first."""
        entries = cast(list[_StreamEntry], await self._redis.xrevrange(keys.DEAD, count=count))
        letters = []
        for _entry_id, raw in reversed(entries):
            fields: Mapping[str, str] = {k.decode(): v.decode() for k, v in raw.items()}
            letters.append(
                DeadLetter(
                    execution_id=fields[keys.DEAD_ID],
                    tenant_id=fields[keys.DEAD_TENANT],
                    attempts=int(fields[keys.DEAD_ATTEMPTS]),
                    kind=fields[keys.DEAD_KIND],
                    reason=fields[keys.DEAD_REASON],
                )
            )
        return letters

    async def depth(self) -> QueueDepth:
        """Queue depth and oldest waiting entry's age per tenant, delayed and dead counts."""
        tenants, delayed, dead = await self._depth()
        return QueueDepth(
            tenants={
                tenant.decode(): TenantDepth(int(waiting), int(running), int(age_ms) / 1000)
                for tenant, waiting, running, age_ms in tenants
            },
            delayed=int(delayed),
            dead=int(dead),
        )
