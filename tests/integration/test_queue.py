"""Distributed mode end to end: real redis-server, real daemons and jails, real Node steps."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import cast

import psutil
import pytest
import redis.asyncio as redis
from grpc_health.v1 import health_pb2

from sandbox_client import ErrorKind, Limits, SandboxClient, SandboxError, Step
from sandbox_client._queue import QueueClient
from sandbox_client.redisqueue import keys
from sandbox_client.v1 import sandbox_pb2 as pb
from tests.integration.conftest import TEST_OPTIONS, SpawnWorker, StartWorker, wait_for_health
from tests.redis_server import RedisServer

DOUBLE = Step(
    "double", "module.exports = async (ctx) => ({ i: ctx.input.i, twice: ctx.input.i * 2 })"
)
SLOW_DOUBLE = Step(
    "double",
    "module.exports = async (ctx) => { await new Promise((r) => setTimeout(r, 100));"
    " return ctx.input.i * 2; }",
)
StreamEntry = tuple[bytes, dict[bytes, bytes]]
CRASH = Step("crash", "module.exports = async () => { process.abort(); }")


async def collect(queue: QueueClient, execution_id: str) -> list[pb.ExecutionEvent]:
    return [event async for event in queue.events(execution_id)]


def kinds(events: list[pb.ExecutionEvent]) -> list[str]:
    return [str(event.WhichOneof("event")) for event in events]


def attempts(events: list[pb.ExecutionEvent]) -> list[int]:
    return [e.execution_started.attempt for e in events if e.HasField("execution_started")]


async def test_three_workers_run_300_executions_of_several_tenants_exactly_once(
    queue: QueueClient, spawn_worker: SpawnWorker
) -> None:
    for n in range(3):
        spawn_worker(f"w{n}")
    jobs = {f"tenant-{n % 5}:{n}": (f"tenant-{n % 5}", n) for n in range(300)}
    await asyncio.gather(
        *(
            queue.enqueue(tenant_id=tenant, steps=[DOUBLE], input={"i": n}, execution_id=job_id)
            for job_id, (tenant, n) in jobs.items()
        )
    )
    results = await asyncio.gather(*(queue.wait(job_id, timeout=240) for job_id in jobs))
    assert results == [{"i": n, "twice": 2 * n} for _tenant, n in jobs.values()]
    for job_id in jobs:
        events = await collect(queue, job_id)
        assert kinds(events) == [
            "execution_started",
            "step_started",
            "step_finished",
            "execution_finished",
        ]
        assert attempts(events) == [1]
    infos = [await queue.info(job_id) for job_id in jobs]
    assert {(info.state, info.attempts) for info in infos if info} == {("succeeded", 1)}
    ran_on = Counter(info.worker.split("/")[0] for info in infos if info and info.worker)
    assert set(ran_on) == {"w0", "w1", "w2"}
    depth = await queue.depth()
    assert (depth.tenants, depth.delayed, depth.dead) == ({}, 0, 0)


async def test_worker_killed_mid_execution_completes_on_another_worker_with_attempt_2(
    queue: QueueClient, start_worker: StartWorker, spawn_worker: SpawnWorker
) -> None:
    victim = spawn_worker("victim", pool_max=2)
    step = Step(
        "hang_first_time",
        "module.exports = async (ctx) => { console.log(`attempt ${ctx.execution.attempt}`);"
        " if (ctx.execution.attempt === 1) await new Promise((r) => setTimeout(r, 120000));"
        " return ctx.execution.attempt; }",
        limits=Limits(timeout_ms=150_000),
    )
    execution_id = await queue.enqueue(tenant_id="acme", steps=[step])
    events = queue.events(execution_id)
    async for event in events:
        if event.HasField("log"):
            assert event.log.text == "attempt 1"
            break
    await events.aclose()
    info = await queue.info(execution_id)
    assert info is not None and info.worker and info.worker.startswith("victim/")
    await start_worker("survivor")

    victim.process.send_signal(signal.SIGKILL)
    assert victim.process.wait(timeout=30) == -signal.SIGKILL
    assert await jail_survivors(victim.uid_base, victim.pool_max) == []
    assert await queue.wait(execution_id, timeout=60) == 2
    events_seen = await collect(queue, execution_id)
    assert attempts(events_seen) == [1, 2]
    assert kinds(events_seen).count("execution_finished") == 1
    logs = [event.log.text for event in events_seen if event.HasField("log")]
    assert logs == ["attempt 1", "attempt 2"]
    info = await queue.info(execution_id)
    assert info is not None
    assert (info.state, info.attempts) == ("succeeded", 2)
    assert info.worker and info.worker.startswith("survivor/")


async def jail_survivors(uid_base: int, count: int) -> list[str]:
    """The processes still running as one of the jail uids, once the kernel had time (up to
    10 s) to take down the pid namespaces of the killed jails."""
    alive: list[str] = []
    for _ in range(100):
        alive = [
            f"{p.pid} {p.info['cmdline']}"
            for p in psutil.process_iter(["uids", "cmdline"])
            if p.info["uids"] and uid_base <= p.info["uids"].real < uid_base + count
        ]
        if not alive:
            break
        await asyncio.sleep(0.1)
    return alive


async def test_a_crashing_step_fails_once_and_is_not_run_again(
    queue: QueueClient, start_worker: StartWorker
) -> None:
    """A step can crash its runner on purpose: only infrastructure failures are retried (the
    dead-letter path after every attempt: tests/queue/test_worker.py)."""
    await start_worker("w0")
    poison = await queue.enqueue(tenant_id="acme", steps=[CRASH])
    thrower = await queue.enqueue(
        tenant_id="acme",
        steps=[Step("throw", "module.exports = async () => { throw new Error('no'); }")],
    )
    healthy = await queue.enqueue(tenant_id="acme", steps=[DOUBLE], input={"i": 4})
    with pytest.raises(SandboxError) as crashed:
        await queue.wait(poison, timeout=60)
    assert crashed.value.kind is ErrorKind.CRASHED
    assert crashed.value.message.startswith("the runner died (killed by SIG")
    with pytest.raises(SandboxError) as threw:
        await queue.wait(thrower, timeout=60)
    assert (threw.value.kind, threw.value.message) == (ErrorKind.USER_ERROR, "Error: no")
    assert await queue.wait(healthy, timeout=60) == {"i": 4, "twice": 8}

    events = await collect(queue, poison)
    assert attempts(events) == [1]
    assert kinds(events)[-2:] == ["step_failed", "execution_finished"]
    assert await queue.dead_letters() == []
    poison_info, thrower_info = await queue.info(poison), await queue.info(thrower)
    assert poison_info is not None and thrower_info is not None
    assert (poison_info.state, poison_info.attempts) == ("failed", 1)
    assert (thrower_info.state, thrower_info.attempts) == ("failed", 1)


async def test_execution_enqueued_twice_runs_once(
    queue: QueueClient, start_worker: StartWorker
) -> None:
    execution_id = uuid.uuid4().hex
    first = await queue.enqueue(
        tenant_id="acme", steps=[DOUBLE], input={"i": 1}, execution_id=execution_id
    )
    second = await queue.enqueue(
        tenant_id="acme", steps=[DOUBLE], input={"i": 2}, execution_id=execution_id
    )
    assert first == second == execution_id
    await start_worker("w0")
    assert await queue.wait(execution_id, timeout=60) == {"i": 1, "twice": 2}
    again = await queue.enqueue(
        tenant_id="acme", steps=[DOUBLE], input={"i": 3}, execution_id=execution_id
    )
    assert again == execution_id
    assert await queue.wait(execution_id, timeout=60) == {"i": 1, "twice": 2}
    assert attempts(await collect(queue, execution_id)) == [1]
    info = await queue.info(execution_id)
    assert info is not None and (info.state, info.attempts) == ("succeeded", 1)
    assert (await queue.depth()).tenants == {}


async def test_delayed_execution_starts_at_or_after_its_time(
    queue: QueueClient, start_worker: StartWorker
) -> None:
    await start_worker("w0")
    run_at = datetime.now(UTC) + timedelta(seconds=1.5)
    delayed = await queue.enqueue(tenant_id="acme", steps=[DOUBLE], input={"i": 1}, run_at=run_at)
    waiting = await queue.info(delayed)
    assert waiting is not None and waiting.state == "delayed"
    assert (await queue.depth()).delayed == 1
    now = await queue.enqueue(tenant_id="acme", steps=[DOUBLE], input={"i": 2})
    assert await queue.wait(delayed, timeout=60) == {"i": 1, "twice": 2}
    assert await queue.wait(now, timeout=60) == {"i": 2, "twice": 4}
    delayed_info, now_info = await queue.info(delayed), await queue.info(now)
    assert delayed_info is not None and now_info is not None
    assert delayed_info.run_at_ms == int(run_at.timestamp() * 1000)
    assert delayed_info.started_ms is not None and now_info.started_ms is not None
    assert delayed_info.started_ms >= delayed_info.run_at_ms
    assert now_info.started_ms < delayed_info.started_ms
    started = (await collect(queue, delayed))[0]
    assert started.time.ToDatetime(tzinfo=UTC) >= run_at


async def test_workers_reconnect_after_redis_restarts_and_nothing_is_lost(
    queue: QueueClient,
    start_worker: StartWorker,
    spawn_worker: SpawnWorker,
    redis_server: RedisServer,
) -> None:
    spawn_worker("w1")
    worker = await start_worker("w0")
    before = [
        await queue.enqueue(tenant_id=f"t{n % 3}", steps=[SLOW_DOUBLE], input={"i": n})
        for n in range(40)
    ]
    assert await queue.wait(before[0], timeout=60) == 0
    await asyncio.to_thread(redis_server.restart, 1.0)
    after = [
        await queue.enqueue(tenant_id="t9", steps=[SLOW_DOUBLE], input={"i": n})
        for n in range(40, 50)
    ]
    results = await asyncio.gather(*(queue.wait(e, timeout=120) for e in before + after))
    assert results == [2 * n for n in range(50)]
    for execution_id in before + after:
        assert kinds(await collect(queue, execution_id)).count("execution_finished") == 1
    assert worker.connected
    assert worker.status()["disconnects"] >= 1
    depth = await queue.depth()
    assert (depth.tenants, depth.delayed, depth.dead) == ({}, 0, 0)


async def test_a_flooding_tenant_does_not_starve_a_light_one(
    queue: QueueClient, start_worker: StartWorker, spawn_worker: SpawnWorker
) -> None:
    flood = [
        await queue.enqueue(tenant_id="flood", steps=[DOUBLE], input={"i": n}) for n in range(40)
    ]
    light = [
        await queue.enqueue(tenant_id="light", steps=[DOUBLE], input={"i": n}) for n in range(5)
    ]
    depth = await queue.depth()
    assert {t: (d.waiting, d.running) for t, d in depth.tenants.items()} == {
        "flood": (40, 0),
        "light": (5, 0),
    }
    pool_max = 2
    spawn_worker("w1", pool_max=pool_max)
    await start_worker("w0", pool_max=pool_max)
    await asyncio.gather(*(queue.wait(e, timeout=120) for e in flood + light))
    started = {e: await started_ms(queue, e) for e in flood + light}
    order = sorted(started, key=started.__getitem__)
    light_ranks = sorted(order.index(e) for e in light)
    # Round-robin over the two tenants: the light tenant's five start among the first dozen
    # (in FIFO order they would be the last five, ranks 40 to 44). The slack is the executions
    # the two workers take at once.
    assert light_ranks[-1] < 2 * len(light) + 2 * pool_max


async def started_ms(queue: QueueClient, execution_id: str) -> int:
    info = await queue.info(execution_id)
    assert info is not None and info.started_ms is not None
    return info.started_ms


async def test_large_input_and_result_live_in_their_own_keys(
    queue: QueueClient, start_worker: StartWorker, redis_server: RedisServer
) -> None:
    await start_worker("w0")
    text = "x" * 200_000
    step = Step("echo", "module.exports = async (ctx) => ctx.input.text + ctx.input.text")
    execution_id = await queue.enqueue(tenant_id="acme", steps=[step], input={"text": text})
    assert await queue.wait(execution_id, timeout=60) == text * 2
    raw = redis.Redis.from_url(redis_server.url)
    try:
        entries = cast(list[StreamEntry], await raw.xrange(keys.events(execution_id)))
        assert max(len(value) for _id, fields in entries for value in fields.values()) < 1024
        (blob,) = [fields[b"b"] for _id, fields in entries if b"b" in fields]
        assert await raw.strlen(blob) > 400_000
        assert 0 < await raw.pttl(blob) <= TEST_OPTIONS.retention_s * 1000
        for key in (keys.events(execution_id), keys.job(execution_id)):
            assert 0 < await raw.pttl(key) <= TEST_OPTIONS.retention_s * 1000
        assert await raw.hget(keys.job(execution_id), keys.REQUEST) is None
    finally:
        await raw.aclose()
    async with QueueClient(redis_server.url, max_payload_bytes=100_000) as small:
        with pytest.raises(SandboxError) as refused:
            await small.enqueue(tenant_id="acme", steps=[step], input={"text": text})
    assert refused.value.kind is ErrorKind.INVALID_REQUEST


async def test_depth_counts_waiting_and_delayed_work_per_tenant(queue: QueueClient) -> None:
    for tenant, count in (("a", 3), ("b", 1)):
        for n in range(count):
            await queue.enqueue(tenant_id=tenant, steps=[DOUBLE], input={"i": n})
    later = datetime.now(UTC) + timedelta(hours=1)
    await queue.enqueue(tenant_id="a", steps=[DOUBLE], run_at=later)
    await asyncio.sleep(0.01)
    depth = await queue.depth()
    assert {t: (d.waiting, d.running) for t, d in depth.tenants.items()} == {
        "a": (3, 0),
        "b": (1, 0),
    }
    assert all(d.oldest_age_s >= 0.01 for d in depth.tenants.values())
    assert (depth.delayed, depth.dead) == (1, 0)


async def test_an_unknown_execution_is_refused(queue: QueueClient) -> None:
    with pytest.raises(SandboxError) as unknown:
        await queue.wait("no-such-execution", timeout=10)
    assert unknown.value.kind is ErrorKind.INVALID_REQUEST


SHUTDOWN_GRACE_S = 4.0
SLEEPER = Step(
    "sleep",
    "module.exports = async (ctx) => {"
    " await new Promise((r) => setTimeout(r, ctx.input.ms)); return ctx.input.ms; }",
)


async def test_sigterm_stops_grpc_and_the_queue_at_once_and_drains_both_in_one_grace(
    queue: QueueClient, spawn_worker: SpawnWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker with a queue entry and a gRPC call running, both longer than the grace: on
    SIGTERM it admits no gRPC call and takes no entry, and it is gone after one grace period (the
    queue was drained first, gRPC still admitting work, and each could spend the whole grace)."""
    monkeypatch.setenv("SANDBOXD_SHUTDOWN_GRACE_S", str(SHUTDOWN_GRACE_S))
    worker = spawn_worker("w0")
    long = {"steps": [SLEEPER], "input": {"ms": 120_000}}
    await queue.enqueue(tenant_id="acme", execution_id="queued-long", **long)  # type: ignore[arg-type]
    events: list[pb.ExecutionEvent] = []
    async with SandboxClient(worker.target) as client:

        async def call() -> None:
            async for event in client.execute(tenant_id="acme", **long):  # type: ignore[arg-type]
                events.append(event)

        direct = asyncio.create_task(call())
        while not (
            any(event.HasField("step_started") for event in events)
            and (info := await queue.info("queued-long")) is not None
            and info.state == "running"
        ):
            await asyncio.sleep(0.05)
        signalled = time.monotonic()
        worker.process.send_signal(signal.SIGTERM)
        await wait_for_health(worker.target, health_pb2.HealthCheckResponse.NOT_SERVING)
        await queue.enqueue(tenant_id="acme", steps=[SLEEPER], input={"ms": 1}, execution_id="late")
        with pytest.raises(SandboxError) as refused:
            await client.run(tenant_id="other", steps=[SLEEPER], input={"ms": 1})
        assert refused.value.kind is ErrorKind.UNAVAILABLE
        status = await asyncio.to_thread(worker.process.wait, 60)
        gone_after = time.monotonic() - signalled
        await direct
    assert status == 0
    assert SHUTDOWN_GRACE_S <= gone_after < SHUTDOWN_GRACE_S + 2.5  # one grace, not two
    finished = events[-1].execution_finished
    assert (finished.error_kind, finished.error_message) == (
        pb.ERROR_KIND_CANCELLED,
        "the execution was cancelled",
    )
    handed_back, late = await queue.info("queued-long"), await queue.info("late")
    assert handed_back is not None and late is not None
    assert (handed_back.state, handed_back.attempts) == ("queued", 1)
    assert (late.state, late.attempts) == ("queued", 0)
