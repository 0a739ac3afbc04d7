"""Redis beyond one node: a primary killed mid-run, Sentinel promotes its replica, workers and
clients follow; and what an asynchronous failover can lose (docs/queue.md)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from sandbox_client import ErrorKind, SandboxError, Step
from sandbox_client._queue import QueueClient
from sandbox_client.redisqueue.store import SENTINEL_SCHEME, SENTINEL_URL, connect
from tests.queue import fake_worker
from tests.queue.sentinel import SERVICE, SentinelSet

STEP = Step("echo", "module.exports = async (ctx) => ctx.input")


@pytest.fixture
def redis_set(tmp_path: Path) -> Iterator[SentinelSet]:
    servers = SentinelSet(tmp_path)
    yield servers
    servers.stop()


async def test_workers_and_clients_follow_a_failover_and_lose_nothing_confirmed(
    redis_set: SentinelSet,
) -> None:
    workers = [
        fake_worker.start(redis_set.url, f"w{n}", slots=4, run_ms=50, visibility_s=3.0)
        for n in range(2)
    ]
    try:
        async with QueueClient(redis_set.url, replicas=1) as queue:
            ids = [
                await queue.enqueue(tenant_id=f"t{n % 4}", steps=[STEP], input={"n": n})
                for n in range(200)
            ]
            assert await asyncio.gather(*(queue.wait(i, timeout=60) for i in ids[:40])) == [
                {"n": n} for n in range(40)
            ]
            redis_set.primary.signal(signal.SIGKILL)  # mid-run: the rest is waiting or running
            await asyncio.to_thread(redis_set.wait_for_promotion)
            # Until a replica is back, enqueues with replicas=1 are refused as unconfirmed.
            await asyncio.to_thread(redis_set.restart_old_primary)
            after = [
                await queue.enqueue(tenant_id="t9", steps=[STEP], input={"n": n})
                for n in range(200, 220)
            ]
            results = await asyncio.gather(*(queue.wait(i, timeout=120) for i in ids + after))
            assert results == [{"n": n} for n in range(220)]
            for execution_id in ids + after:
                kinds = [e.WhichOneof("event") async for e in queue.events(execution_id)]
                assert kinds.count("execution_finished") == 1
            depth = await queue.depth()
            assert (depth.waiting, depth.running, depth.delayed) == (0, 0, 0)
    finally:
        statuses = [fake_worker.stop(worker) for worker in workers]
    assert all(int(str(status["disconnects"])) >= 1 for status in statuses)
    assert all(status["connected"] for status in statuses)


async def test_an_enqueue_the_replica_never_got_is_lost_unless_the_client_waits_for_it(
    redis_set: SentinelSet,
) -> None:
    """Replication is asynchronous: the primary confirms a write before its replica has it. An
    enqueue confirmed by the primary alone is lost when the primary dies first; with
    `replicas=1` the client is told instead (UNAVAILABLE), and enqueues again."""
    async with (
        QueueClient(redis_set.url) as trusting,
        QueueClient(redis_set.url, replicas=1, replicas_timeout_s=0.5) as careful,
    ):
        # The replica falls behind: stopped, its link cut, so that the writes below reach the
        # primary alone (a stopped replica's kernel would still take them off the wire).
        redis_set.replica.signal(signal.SIGSTOP)
        redis_set.primary.client.client_kill_filter(_type="replica")
        await trusting.enqueue(tenant_id="acme", steps=[STEP], input={"n": 1}, execution_id="a")
        with pytest.raises(SandboxError) as unconfirmed:
            await careful.enqueue(tenant_id="acme", steps=[STEP], input={"n": 2}, execution_id="b")
        assert unconfirmed.value.kind is ErrorKind.UNAVAILABLE
        assert unconfirmed.value.message == (
            "the queue did not confirm the execution on its replicas: "
            "0 of 1 replicas confirmed the write"
        )
        redis_set.primary.signal(signal.SIGKILL)
        redis_set.replica.signal(signal.SIGCONT)
        await asyncio.to_thread(redis_set.wait_for_promotion)

        assert await trusting.info("a") is None  # confirmed, and lost
        with pytest.raises(SandboxError) as unknown:
            await trusting.wait("a", timeout=10)
        assert unknown.value.kind is ErrorKind.INVALID_REQUEST
        # The careful producer knew: the same id again (once a replica is back), and it runs.
        await asyncio.to_thread(redis_set.restart_old_primary)
        worker = fake_worker.start(redis_set.url, "w", slots=2)
        try:
            await careful.enqueue(tenant_id="acme", steps=[STEP], input={"n": 2}, execution_id="b")
            assert await careful.wait("b", timeout=30) == {"n": 2}
        finally:
            fake_worker.stop(worker)


# Characters a URL must escape, so that the test shows they are unescaped.
DATA_PASSWORD = "data p@ss:/"
SENTINEL_PASSWORD = "sentinel&pass="


@pytest.fixture
def guarded_set(tmp_path: Path) -> Iterator[SentinelSet]:
    servers = SentinelSet(tmp_path, password=DATA_PASSWORD, sentinel_password=SENTINEL_PASSWORD)
    yield servers
    servers.stop()


async def test_a_sentinel_url_carries_the_data_nodes_and_the_sentinels_own_passwords(
    guarded_set: SentinelSet,
) -> None:
    hosts = f"127.0.0.1:{guarded_set.sentinel.port}/{SERVICE}"
    data, sentinel = quote(DATA_PASSWORD, safe=""), quote(SENTINEL_PASSWORD, safe="")
    url = f"{SENTINEL_SCHEME}:{data}@{hosts}?sentinel_password={sentinel}"
    worker = fake_worker.start(url, "w", slots=1)
    try:
        async with QueueClient(url) as queue:
            execution_id = await queue.enqueue(tenant_id="acme", steps=[STEP], input={"n": 1})
            assert await queue.wait(execution_id, timeout=30) == {"n": 1}
        for wrong, refusal in [
            (f"{SENTINEL_SCHEME}:{data}@{hosts}", f"No master found for '{SERVICE}'"),
            (f"{SENTINEL_SCHEME}{hosts}?sentinel_password={sentinel}", "already authenticated"),
        ]:
            async with QueueClient(wrong) as queue:
                with pytest.raises(SandboxError) as refused:
                    await queue.enqueue(tenant_id="acme", steps=[STEP])
            assert refused.value.kind is ErrorKind.UNAVAILABLE
            assert refusal in refused.value.message
    finally:
        fake_worker.stop(worker)


async def test_a_sentinel_that_hangs_up_is_asked_once_before_the_next(
    redis_set: SentinelSet,
) -> None:
    """The Sentinels are asked in turn; one that is down or refuses must not hold the discovery
    back (with redis-py's own retries, 11 connections and 3.6 s before the next was asked)."""
    hung_up: list[int] = []

    def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hung_up.append(1)
        writer.close()

    broken = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = broken.sockets[0].getsockname()[1]
    url = f"{SENTINEL_SCHEME}127.0.0.1:{port},127.0.0.1:{redis_set.sentinel.port}/{SERVICE}"
    try:
        async with QueueClient(url) as queue:
            execution_id = await queue.enqueue(tenant_id="acme", steps=[STEP])
            info = await queue.info(execution_id)
        assert info is not None and info.state == "queued"
        assert len(hung_up) == 1
    finally:
        broken.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+sentinel://:secret@127.0.0.1:1", f"a Sentinel URL is {SENTINEL_URL}"),
        ("redis+sentinel://:secret@127.0.0.1:1/q/zero", f"a Sentinel URL is {SENTINEL_URL}"),
        (
            "redis+sentinel://:secret@127.0.0.1:1/q?password=secret",
            f"a Sentinel URL has no parameter password: {SENTINEL_URL}",
        ),
    ],
)
def test_a_malformed_sentinel_url_is_refused_without_saying_its_password(
    url: str, message: str
) -> None:
    with pytest.raises(ValueError) as refused:
        connect(url, max_connections=1)
    assert str(refused.value) == message
    assert "secret" not in str(refused.value)
