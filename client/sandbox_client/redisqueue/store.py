"""Every Redis operation of the queue, typed: the worker and the client talk to Redis only here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias, cast
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sandbox_client.redisqueue import keys, lua


@dataclass(frozen=True, slots=True)
class Entry:
    """An execution taken by a worker: its delivery number identifies this claim on it."""

    tenant_id: str
    execution_id: str
    delivery: int


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
class Taken:
    """A taken execution and its attempt, begun by TAKE; `begun` is None when the request was
    too large to come with it (BEGIN returns it)."""

    entry: Entry
    begun: Begun | None


@dataclass(frozen=True, slots=True)
class TenantDepth:
    """One tenant's backlog: the signal an autoscaler uses."""

    waiting: int  # executions no worker has taken yet
    running: int  # executions taken and not finished
    oldest_age_s: float  # age of the oldest waiting execution; 0 when none waits


@dataclass(frozen=True, slots=True)
class QueueDepth:
    tenants: dict[str, TenantDepth]  # the tenants with the most waiting work only
    waiting: int  # of every tenant
    running: int  # of every tenant
    delayed: int  # delayed executions and retries waiting for their time
    dead: int  # dead letters kept
    tenants_waiting: int  # tenants with waiting work


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Why an execution was given up (how many attempts, the kind and message of the last)."""

    execution_id: str
    tenant_id: str
    attempts: int
    kind: str
    reason: str


class ClaimLost(Exception):
    """Another worker took the execution over: this one must not write for it anymore."""


class NotReplicated(Exception):
    """A write reached the primary but fewer replicas than asked confirmed it in time."""


# The socket timeout finds dead connections; blocking reads stay well under it.
SOCKET_TIMEOUT_S = 10.0
BLOCK_MS = 2000
_RETRIES = 3
# What one script call handles at most, so that none runs for long (each item costs Redis about
# 10-20 us): executions one TAKE returns (ask again for more) or moves from the delayed set to
# their tenants' lists (the rest: next TAKE), and claims one HOLD renews.
TAKE_BATCH = 16
_PROMOTE_LIMIT = 16
_HOLD_BATCH = 32
# Requests up to this size come with TAKE's reply (at most TAKE_BATCH of them); larger ones are
# read by BEGIN, one at a time.
_INLINE_REQUEST_BYTES = 64 * 1024
# What a lost or restarting Redis raises (BusyLoadingError, while it loads its data, is a
# ConnectionError; so is a primary that Sentinel demoted): the callers retry with backoff.
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)
SENTINEL_SCHEME = "redis+sentinel://"
SENTINEL_URL = (
    f"{SENTINEL_SCHEME}[USER:PASSWORD@]HOST:PORT[,...]/SERVICE[/DB]"
    "[?sentinel_username=U&sentinel_password=P]"
)
# The Sentinels' own credentials: a Sentinel often has none, or others than the data nodes.
_SENTINEL_PARAMETERS = {"sentinel_username": "username", "sentinel_password": "password"}

Value: TypeAlias = bytes | str | int | float
# How an event is stored: its entry id (ATTEMPT-SEQ), then EVENT_INLINE and the serialized event,
# or EVENT_BLOB and the key that holds it.
StoredEvent: TypeAlias = tuple[str, str, bytes]
# A stream entry as redis-py returns it: id and fields.
_StreamEntry: TypeAlias = tuple[bytes, dict[bytes, bytes]]


def _stream_entries(reply: Any) -> list[_StreamEntry]:
    """The entries of an XREAD reply on one stream (redis-py's RESP2 shape)."""
    return [entry for _stream, entries in cast(list[Any], reply) for entry in entries]


def _begun(attempt: int, request: bytes, kind: bytes, error: bytes) -> Begun:
    """BEGIN's or TAKE's account of an attempt that begins (attempt 0: none is left)."""
    return Begun(int(attempt), request, Failure(kind.decode(), error.decode()))


def _claim_args(entry: Entry, consumer: str) -> list[Value]:
    return [entry.execution_id, consumer, entry.delivery]


def _event_args(events: Sequence[StoredEvent]) -> list[Value]:
    return [part for event in events for part in event]


class _BlockingSentinelPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """Sentinel's pool (connections follow the primary) that waits for a free connection."""


def connect(redis_url: str, *, max_connections: int) -> redis.Redis:
    """A client of `redis_url`: ``redis://[USER:PASSWORD@]HOST:PORT/DB`` (or ``rediss://``), or
    a Sentinel URL (`SENTINEL_URL`) for the primary that the Sentinels name: connections move
    to the new primary after a failover. A Sentinel URL's credentials are the data nodes';
    the Sentinels' own come as `sentinel_username` / `sentinel_password` parameters."""
    # Every blocked reader holds a connection: callers beyond `max_connections` wait for one
    # rather than fail. A call that fails on a connection Redis dropped (a restart, a failover)
    # is retried on a new one; every call here is safe to repeat (see the scripts).
    options: dict[str, Any] = {
        "max_connections": max_connections,
        "timeout": None,
        "socket_timeout": SOCKET_TIMEOUT_S,
        "retry": Retry(ExponentialBackoff(), _RETRIES),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
    }
    if not redis_url.startswith(SENTINEL_SCHEME):
        return redis.Redis.from_pool(redis.BlockingConnectionPool.from_url(redis_url, **options))
    return _primary_of_sentinels(redis_url, options)


def _primary_of_sentinels(redis_url: str, options: dict[str, Any]) -> redis.Redis:
    url = urlsplit(redis_url)
    hosts = url.netloc.rpartition("@")[2]
    service, _, db = url.path.removeprefix("/").partition("/")
    parameters = parse_qs(url.query, keep_blank_values=True)
    # Said without the URL: it may hold passwords.
    if not hosts or not service or not (db or "0").isdigit():
        raise ValueError(f"a Sentinel URL is {SENTINEL_URL}")
    if unknown := sorted(parameters.keys() - _SENTINEL_PARAMETERS.keys()):
        raise ValueError(f"a Sentinel URL has no parameter {', '.join(unknown)}: {SENTINEL_URL}")
    sentinels = [
        (host, int(port)) for host, _, port in (a.rpartition(":") for a in hosts.split(","))
    ]
    # Given sentinel_kwargs, redis-py uses only them to reach the Sentinels: the timeout too.
    # Each Sentinel is asked once per discovery. With redis-py's default retries (backoff up to
    # 10 s), a Sentinel that hung up held the first connection 3.6 s (11 tries), one that
    # refused our password 15 s, before the next was asked. The connection to the primary
    # retries the whole discovery (`options`).
    own: dict[str, Any] = {"socket_timeout": SOCKET_TIMEOUT_S, "retry": Retry(NoBackoff(), 0)}
    own.update((_SENTINEL_PARAMETERS[name], values[-1]) for name, values in parameters.items())
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        sentinels, socket_timeout=SOCKET_TIMEOUT_S, sentinel_kwargs=own
    )
    primary = sentinel.master_for(
        service,
        connection_pool_class=_BlockingSentinelPool,
        db=int(db or 0),
        username=unquote(url.username) if url.username else None,
        password=unquote(url.password) if url.password else None,
        **options,
    )
    return cast(redis.Redis, primary)


class QueueStore:
    """The queue in one Redis: scripts registered once (redis-py re-sends them after a restart)."""

    def __init__(self, redis_url: str, *, max_connections: int):
        self._redis = connect(redis_url, max_connections=max_connections)
        register = self._redis.register_script
        self._enqueue = register(lua.script(lua.ENQUEUE))
        self._take = register(lua.script(lua.TAKE))
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
        self,
        execution_id: str,
        tenant_id: str,
        request: bytes,
        run_at_ms: int,
        retention_ms: int,
        *,
        replicas: int = 0,
        replicas_timeout_ms: int = 1000,
    ) -> bool:
        """Record and queue the execution; False when its id is already known (nothing done).

        With `replicas`, returns only once that many replicas hold the write (WAIT on the same
        connection), else raises NotReplicated: the write may be lost in a failover.
        """
        args: list[Value] = [execution_id, tenant_id, request, run_at_ms, retention_ms]
        if not replicas:
            return bool(await self._enqueue(args=args))
        async with self._redis.pipeline(transaction=False) as pipe:
            await self._enqueue(args=args, client=pipe)
            pipe.execute_command("WAIT", replicas, replicas_timeout_ms)
            queued, acked = await pipe.execute()
        if int(acked) < replicas:
            raise NotReplicated(f"{acked} of {replicas} replicas confirmed the write")
        return bool(queued)

    # -- worker: taking --------------------------------------------------------------------

    async def take(
        self, consumer: str, wanted: int, visibility_ms: int, max_attempts: int, retention_ms: int
    ) -> tuple[list[Taken], float | None]:
        """Up to `wanted` executions, at most TAKE_BATCH (taken over first, then new ones
        round-robin over the tenants), claimed for `visibility_ms`, their attempts begun; and
        seconds until the next delayed one is due."""
        wanted = min(wanted, TAKE_BATCH)
        args: list[Value] = [consumer, wanted, visibility_ms, _PROMOTE_LIMIT, max_attempts]
        taken, due_ms = await self._take(args=[*args, retention_ms, _INLINE_REQUEST_BYTES])
        return [
            Taken(
                Entry(tenant.decode(), id.decode(), int(delivery)),
                None if begun[0] == b"large" else _begun(*begun[1:]),
            )
            for tenant, id, delivery, *begun in taken
        ], None if due_ms < 0 else int(due_ms) / 1000

    async def hold(self, consumer: str, entries: list[Entry], visibility_ms: int) -> list[Entry]:
        """Renew the claims on `entries`; those taken over (not those this consumer finished)."""
        lost = []
        for first in range(0, len(entries), _HOLD_BATCH):
            batch = entries[first : first + _HOLD_BATCH]
            args: list[Value] = [consumer, visibility_ms]
            for entry in batch:
                args += [entry.execution_id, entry.delivery]
            states = await self._hold(args=args)
            lost += [entry for entry, state in zip(batch, states, strict=True) if state == b"lost"]
        return lost

    async def wait_for_work(self, timeout_s: float) -> bool:
        """Block until woken (work was queued) or `timeout_s`; True when woken."""
        return await self._redis.blpop([keys.WAKE], timeout=timeout_s) is not None

    # -- worker: running -------------------------------------------------------------------

    async def begin(
        self, entry: Entry, consumer: str, max_attempts: int, retention_ms: int
    ) -> Begun | None:
        """The attempt of this delivery (counted by TAKE, or now) with the request; None when
        the record expired. Raises ClaimLost."""
        args: list[Value] = [entry.tenant_id, *_claim_args(entry, consumer)]
        reply = await self._begin(args=[*args, max_attempts, retention_ms])
        if reply[0] == b"lost":
            raise ClaimLost(entry.execution_id)
        if reply[0] == b"gone":
            return None
        return _begun(*reply[1:])

    async def put_blob(self, key: str, data: bytes, retention_ms: int) -> None:
        await self._redis.set(key, data, px=retention_ms)

    async def append(
        self, entry: Entry, consumer: str, events: Sequence[StoredEvent], retention_ms: int
    ) -> None:
        """Add events to the execution's stream; raises ClaimLost."""
        script_keys = [keys.events(entry.execution_id), keys.job(entry.execution_id)]
        args = [*_claim_args(entry, consumer), retention_ms, *_event_args(events)]
        if not await self._append(keys=script_keys, args=args):
            raise ClaimLost(entry.execution_id)

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
        events: Sequence[StoredEvent],
        retention_ms: int,
        *,
        state: str,
        dead: DeadLetter | None = None,
    ) -> None:
        """Store the events (the final one last), set the state, release the claim; raises
        ClaimLost."""
        args: list[Value] = [entry.tenant_id, *_claim_args(entry, consumer), retention_ms, state]
        args += [dead.attempts, dead.kind, dead.reason] if dead else ["", "", ""]
        args += _event_args(events)
        script_keys = [keys.events(entry.execution_id), keys.job(entry.execution_id)]
        if not await self._finish(keys=script_keys, args=args):
            raise ClaimLost(entry.execution_id)

    async def retry(
        self, entry: Entry, consumer: str, failure: Failure, delay_ms: int, *, refund: bool
    ) -> None:
        """Schedule the next attempt in `delay_ms`; raises ClaimLost.

        With `refund`, the attempt that ended does not count: it never started.
        """
        args: list[Value] = [entry.tenant_id, *_claim_args(entry, consumer), delay_ms]
        args += [failure.kind, failure.message, int(refund)]
        if not await self._retry(keys=[keys.job(entry.execution_id)], args=args):
            raise ClaimLost(entry.execution_id)

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

    async def depth(self, top: int) -> QueueDepth:
        """The `top` tenants with the most waiting work, and the totals of every tenant."""
        tenants, waiting, running, delayed, dead, tenants_waiting = await self._depth(args=[top])
        return QueueDepth(
            tenants={
                tenant.decode(): TenantDepth(int(waiting), int(running), int(age_ms) / 1000)
                for tenant, waiting, running, age_ms in tenants
            },
            waiting=int(waiting),
            running=int(running),
            delayed=int(delayed),
            dead=int(dead),
            tenants_waiting=int(tenants_waiting),
        )
