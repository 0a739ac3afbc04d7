"""The queue's scripts on a real Redis: fairness, claims, replays, depth, hostile tenant ids."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest
import redis.asyncio as redis

from sandbox_client.redisqueue import keys
from sandbox_client.redisqueue.store import (
    Begun,
    ClaimLost,
    DeadLetter,
    Entry,
    Failure,
    QueueStore,
    StoredEvent,
)

RETENTION_MS = 60_000
VISIBILITY_MS = 30_000


async def enqueue(store: QueueStore, tenant: str, execution_id: str, run_at_ms: int = 0) -> None:
    assert await store.enqueue(execution_id, tenant, b"request", run_at_ms, RETENTION_MS)


async def take(
    store: QueueStore, consumer: str, wanted: int, visibility_ms: int = VISIBILITY_MS
) -> list[Entry]:
    taken, _due = await store.take(consumer, wanted, visibility_ms, 3, RETENTION_MS)
    return [one.entry for one in taken]


def final(seq: int, attempt: int = 1) -> list[StoredEvent]:
    return [(f"{attempt}-{seq}", keys.EVENT_INLINE, b"last")]


async def test_take_goes_round_robin_over_the_tenants_one_execution_each(
    store: QueueStore,
) -> None:
    for tenant, count in (("a", 5), ("b", 2), ("c", 1)):
        for n in range(count):
            await enqueue(store, tenant, f"{tenant}{n}")
    one_by_one = [(await take(store, "w", 1))[0].execution_id for _ in range(4)]
    rest = [entry.execution_id for entry in await take(store, "w", 10)]
    assert one_by_one + rest == ["a0", "b0", "c0", "a1", "b1", "a2", "a3", "a4"]
    assert await take(store, "w", 10) == []


async def test_a_tenant_that_comes_back_joins_the_end_of_the_ring(store: QueueStore) -> None:
    await enqueue(store, "a", "a0")
    await enqueue(store, "b", "b0")
    await enqueue(store, "b", "b1")
    assert [e.execution_id for e in await take(store, "w", 1)] == ["a0"]
    await enqueue(store, "a", "a1")  # "a" left the ring when it emptied; now it is behind "b"
    assert [e.execution_id for e in await take(store, "w", 3)] == ["b0", "a1", "b1"]


async def test_begin_counts_one_attempt_per_delivery_even_when_replayed(
    store: QueueStore,
) -> None:
    await enqueue(store, "acme", "x")
    (first,) = await take(store, "w1", 1, visibility_ms=1)
    begun = await store.begin(first, "w1", 3, RETENTION_MS)
    again = await store.begin(first, "w1", 3, RETENTION_MS)  # a call retried after a lost reply
    assert begun is not None and again is not None
    assert (begun.attempt, again.attempt, begun.request) == (1, 1, b"request")
    assert await store.job("x", (keys.ATTEMPTS,)) == {keys.ATTEMPTS: "1"}
    await asyncio.sleep(0.01)
    (second,) = await take(store, "w2", 1)  # w1's claim expired: taken over
    assert (second.execution_id, second.delivery) == ("x", first.delivery + 1)
    with pytest.raises(ClaimLost):
        await store.begin(first, "w1", 3, RETENTION_MS)
    taken_over = await store.begin(second, "w2", 3, RETENTION_MS)
    assert taken_over is not None and taken_over.attempt == 2


async def test_hold_ignores_executions_the_worker_finished_and_reports_takeovers(
    store: QueueStore,
) -> None:
    await enqueue(store, "acme", "done")
    await enqueue(store, "acme", "slow")
    done, slow = await take(store, "w1", 2, visibility_ms=200)
    await store.begin(done, "w1", 3, RETENTION_MS)
    await store.finish(done, "w1", final(0), RETENTION_MS, state=keys.SUCCEEDED)
    # The race of issue 11: the hold loop read its running set before the finish.
    assert await store.hold("w1", [done, slow], 200) == []
    await asyncio.sleep(0.25)
    (taken_over,) = await take(store, "w2", 5)
    assert taken_over.execution_id == "slow"
    assert await store.hold("w1", [done, slow], 200) == [slow]
    with pytest.raises(ClaimLost):
        await store.append(slow, "w1", [("1-0", keys.EVENT_INLINE, b"e")], RETENTION_MS)
    with pytest.raises(ClaimLost):
        await store.finish(slow, "w1", final(0), RETENTION_MS, state=keys.SUCCEEDED)


async def test_a_replayed_finish_or_retry_is_answered_as_done(store: QueueStore) -> None:
    await enqueue(store, "acme", "f")
    await enqueue(store, "acme", "r")
    f, r = await take(store, "w", 2)
    for _ in range(2):
        await store.finish(f, "w", final(0), RETENTION_MS, state=keys.SUCCEEDED)
        await store.retry(r, "w", Failure("CRASHED", "boom"), 0, refund=False)
    depth = await store.depth(10)
    assert (depth.waiting, depth.running) == (1, 0)  # r is queued once, f is done
    assert [e.execution_id for e in await take(store, "w", 5)] == ["r"]


async def test_renewed_claims_are_not_taken_over(store: QueueStore) -> None:
    await enqueue(store, "acme", "x")
    (entry,) = await take(store, "w1", 1, visibility_ms=150)
    for _ in range(4):
        await asyncio.sleep(0.075)
        assert await store.hold("w1", [entry], 150) == []
        assert await take(store, "w2", 1) == []


async def test_retry_with_a_delay_waits_in_the_delayed_set(store: QueueStore) -> None:
    await enqueue(store, "acme", "x")
    (entry,) = await take(store, "w", 1)
    await store.begin(entry, "w", 3, RETENTION_MS)
    await store.retry(entry, "w", Failure("CRASHED", "boom"), 200, refund=False)
    entries, due_s = await store.take("w", 1, VISIBILITY_MS, 3, RETENTION_MS)
    assert entries == [] and due_s is not None and 0.1 < due_s <= 0.2
    assert (await store.depth(10)).delayed == 1
    await asyncio.sleep(due_s + 0.01)
    (again,) = await take(store, "w", 1)
    assert (again.execution_id, again.delivery) == ("x", 2)
    assert await store.job("x", (keys.STATE, keys.ATTEMPTS)) == {
        keys.STATE: keys.RUNNING,  # TAKE began the second attempt
        keys.ATTEMPTS: "2",
    }


async def test_depth_counts_waiting_and_running_work_of_the_top_tenants(
    store: QueueStore,
) -> None:
    for tenant, count in (("a", 5), ("b", 3), ("c", 1), ("d", 2)):
        for n in range(count):
            await enqueue(store, tenant, f"{tenant}{n}")
    await enqueue(store, "a", "later", run_at_ms=2**41)
    await take(store, "w", 4)  # a0, b0, c0, d0
    await asyncio.sleep(0.02)
    depth = await store.depth(2)
    assert {t: (d.waiting, d.running) for t, d in depth.tenants.items()} == {
        "a": (4, 1),
        "b": (2, 1),
    }
    assert all(d.oldest_age_s >= 0.02 for d in depth.tenants.values())
    assert (depth.waiting, depth.running, depth.delayed, depth.dead) == (7, 4, 1, 0)
    assert depth.tenants_waiting == 3  # c has nothing waiting anymore


async def test_dead_letters_keep_why(store: QueueStore) -> None:
    await enqueue(store, "acme", "x")
    (entry,) = await take(store, "w", 1)
    letter = DeadLetter("x", "acme", 3, "CRASHED", "the runner died")
    await store.finish(entry, "w", final(0), RETENTION_MS, state=keys.DEAD_STATE, dead=letter)
    assert await store.dead_letters(10) == [letter]
    assert (await store.depth(10)).dead == 1


HOSTILE_TENANTS = [
    "ring",
    "",
    ":",
    "{x}",
    "a:b",
    "job:x",
    "tenant:a",
    "a\nb c",
    "ü🙂",
    *keys.FIXED,  # "sandboxd:ring" and the other fixed keys' own names
    keys.TENANT_PREFIX,
]


async def test_tenant_ids_cannot_collide_with_the_queues_keys(
    store: QueueStore, raw: redis.Redis
) -> None:
    for n in range(2):
        for i, tenant in enumerate(HOSTILE_TENANTS):
            await enqueue(store, tenant, f"{i}-{n}")
    expected_tenant_keys = {keys.tenant_queue(t).encode() for t in HOSTILE_TENANTS}
    stored = set(await raw.keys("*"))
    job_keys = {
        keys.job(f"{i}-{n}").encode() for i in range(len(HOSTILE_TENANTS)) for n in range(2)
    }
    fixed = {name.encode() for name in (keys.RING, keys.BACKLOG, keys.WAITING, keys.WAKE)}
    assert stored == expected_tenant_keys | job_keys | fixed
    types = {name: await raw.type(name) for name in fixed}
    assert types == {
        keys.RING.encode(): b"list",
        keys.BACKLOG.encode(): b"zset",
        keys.WAITING.encode(): b"string",
        keys.WAKE.encode(): b"list",
    }
    depth = await store.depth(100)
    assert {t: d.waiting for t, d in depth.tenants.items()} == {t: 2 for t in HOSTILE_TENANTS}
    taken: list[Entry] = []
    while batch := await take(store, "w", 100):
        taken += batch
    # One of each tenant per turn, in the order they arrived, twice.
    assert [e.tenant_id for e in taken] == HOSTILE_TENANTS * 2
    assert [e.execution_id for e in taken] == [
        f"{i}-{n}" for n in range(2) for i in range(len(HOSTILE_TENANTS))
    ]
    for entry in taken:
        await store.finish(entry, "w", final(0), RETENTION_MS, state=keys.SUCCEEDED)
    depth = await store.depth(100)
    assert (depth.tenants, depth.waiting, depth.running) == ({}, 0, 0)
    assert await raw.keys(keys.TENANT_PREFIX + "*") == []


async def test_a_replayed_append_stores_each_event_once(
    store: QueueStore, raw: redis.Redis
) -> None:
    await enqueue(store, "acme", "x")
    (entry,) = await take(store, "w", 1)
    first = [("1-0", keys.EVENT_INLINE, b"a"), ("1-1", keys.EVENT_INLINE, b"b")]
    await store.append(entry, "w", first, RETENTION_MS)
    await store.append(entry, "w", first, RETENTION_MS)  # its reply was lost: sent again
    await store.append(entry, "w", [first[1], ("1-2", keys.EVENT_INLINE, b"c")], RETENTION_MS)
    await store.finish(entry, "w", final(3), RETENTION_MS, state=keys.SUCCEEDED)
    stored = cast(list[tuple[bytes, dict[bytes, bytes]]], await raw.xrange(keys.events("x")))
    assert [(id, fields[b"e"]) for id, fields in stored] == [
        (b"1-0", b"a"),
        (b"1-1", b"b"),
        (b"1-2", b"c"),
        (b"1-3", b"last"),
    ]


async def test_take_begins_the_attempt_and_brings_small_requests(store: QueueStore) -> None:
    assert await store.enqueue("small", "acme", b"s" * 100, 0, RETENTION_MS)
    assert await store.enqueue("large", "acme", b"l" * 100_000, 0, RETENTION_MS)
    small, large = (await store.take("w", 2, VISIBILITY_MS, 3, RETENTION_MS))[0]
    assert small.begun == Begun(1, b"s" * 100, Failure("", ""))
    assert large.begun is None  # its request is read by BEGIN: the same attempt
    assert await store.begin(large.entry, "w", 3, RETENTION_MS) == Begun(
        1, b"l" * 100_000, Failure("", "")
    )
    assert await store.job("large", (keys.ATTEMPTS, keys.STATE)) == {
        keys.ATTEMPTS: "1",
        keys.STATE: keys.RUNNING,
    }


async def test_take_counts_no_attempt_past_the_last(store: QueueStore) -> None:
    await enqueue(store, "acme", "x")
    for attempt in (1, 2):
        ((taken,), _due) = await store.take("w", 1, VISIBILITY_MS, 2, RETENTION_MS)
        assert taken.begun is not None and taken.begun.attempt == attempt
        failure = Failure("UNAVAILABLE", f"attempt {attempt}")
        await store.retry(taken.entry, "w", failure, 0, refund=False)
    ((taken,), _due) = await store.take("w", 1, VISIBILITY_MS, 2, RETENTION_MS)
    assert taken.begun == Begun(0, b"", Failure("UNAVAILABLE", "attempt 2"))
    assert await store.job("x", (keys.ATTEMPTS,)) == {keys.ATTEMPTS: "2"}
