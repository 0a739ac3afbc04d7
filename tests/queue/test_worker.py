"""QueueWorker on a real Redis with the jails replaced (FakeRunner): retries, dead letters, the
hold loop, and a fleet of 16 worker processes on the 2 cores."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as redis

from sandbox_client import ErrorKind, SandboxError, Step
from sandbox_client._queue import QueueClient
from sandbox_client.v1 import sandbox_pb2 as pb
from sandboxd import config
from sandboxd.queue.worker import QueueOptions, QueueWorker
from tests.queue import fake_worker
from tests.queue.fake_runner import FakeRunner
from tests.redis_server import RedisServer

STEP = Step("echo", "module.exports = async (ctx) => ctx.input")
# Claims renewed every 0.5 s: often, with room for a loaded host to be late.
OPTIONS = QueueOptions(visibility_timeout_s=1.5, max_attempts=3, retry_backoff_s=0.02)
StartWorker = Callable[[FakeRunner], Awaitable[QueueWorker]]


@pytest.fixture
async def start_worker(redis_server: RedisServer) -> AsyncIterator[StartWorker]:
    workers: list[QueueWorker] = []

    async def start(runner: FakeRunner) -> QueueWorker:
        settings = config.load(None, env={})
        worker = QueueWorker(redis_server.url, runner, settings, f"w{len(workers)}", OPTIONS)
        await worker.start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        await worker.stop(grace=5.0)


async def test_an_infrastructure_failure_is_retried_then_dead_lettered(
    queue: QueueClient, start_worker: StartWorker
) -> None:
    await start_worker(FakeRunner(2, fail_kind=pb.ERROR_KIND_UNAVAILABLE))
    execution_id = await queue.enqueue(tenant_id="acme", steps=[STEP], input={"n": 1})
    with pytest.raises(SandboxError) as failed:
        await queue.wait(execution_id, timeout=30)
    assert (failed.value.kind, failed.value.message) == (
        ErrorKind.UNAVAILABLE,
        "attempt 3 failed",
    )
    events = [event async for event in queue.events(execution_id)]
    started = [e.execution_started.attempt for e in events if e.HasField("execution_started")]
    assert started == [1, 2, 3]
    assert [e.WhichOneof("event") for e in events].count("execution_finished") == 1
    (letter,) = await queue.dead_letters()
    assert (letter.execution_id, letter.attempts, letter.kind, letter.reason) == (
        execution_id,
        3,
        "UNAVAILABLE",
        "attempt 3 failed",
    )
    info = await queue.info(execution_id)
    assert info is not None and (info.state, info.attempts) == ("dead", 3)


async def test_a_user_failure_is_not_retried(queue: QueueClient, start_worker: StartWorker) -> None:
    await start_worker(FakeRunner(2, fail_kind=pb.ERROR_KIND_CRASHED))
    execution_id = await queue.enqueue(tenant_id="acme", steps=[STEP], input={"n": 1})
    with pytest.raises(SandboxError) as failed:
        await queue.wait(execution_id, timeout=30)
    assert failed.value.kind is ErrorKind.CRASHED
    info = await queue.info(execution_id)
    assert info is not None and (info.state, info.attempts) == ("failed", 1)
    assert await queue.dead_letters() == []


async def test_the_hold_loop_never_stops_what_the_worker_finished_itself(
    queue: QueueClient, start_worker: StartWorker, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 11: "taken over" was logged for executions the worker had just finished. Claims
    are renewed every 0.5 s here while executions of 50 ms end all the time."""
    runner = FakeRunner(8, run_s=0.05)
    worker = await start_worker(runner)
    ids = [
        await queue.enqueue(tenant_id=f"t{n % 4}", steps=[STEP], input={"n": n}) for n in range(400)
    ]
    with caplog.at_level(logging.WARNING, logger="sandboxd.queue.worker"):
        results = await asyncio.gather(*(queue.wait(i, timeout=60) for i in ids))
    assert results == [{"n": n} for n in range(400)]
    assert runner.cancelled == []
    assert [r.message for r in caplog.records if "taken over" in r.message] == []
    assert worker.taken == 400
    infos = [await queue.info(i) for i in ids]
    assert {(i.state, i.attempts) for i in infos if i} == {("succeeded", 1)}


async def test_events_are_stored_as_they_come_and_the_rest_with_the_finish(
    queue: QueueClient, start_worker: StartWorker, redis_server: RedisServer
) -> None:
    """A slow step's first events are readable while it runs; those that come at once at the
    end go with FINISH."""
    await start_worker(FakeRunner(1, run_s=1.0))
    execution_id = await queue.enqueue(tenant_id="acme", steps=[STEP], input={"n": 1})
    events = queue.events(execution_id)
    first = await anext(events)
    assert first.HasField("execution_started")
    info = await queue.info(execution_id)
    assert info is not None and info.state == "running"
    rest = [event.WhichOneof("event") async for event in events]
    assert rest == ["step_started", "step_finished", "execution_finished"]
    raw = redis.Redis.from_url(redis_server.url)
    try:
        stats = await raw.info("commandstats")
    finally:
        await raw.aclose()
    assert stats["cmdstat_xadd"]["calls"] == 4  # each event stored once


FLEET = 16


async def test_sixteen_worker_processes_take_fairly_without_a_herd(
    queue: QueueClient, redis_server: RedisServer
) -> None:
    processes = [
        fake_worker.start(redis_server.url, f"f{n}", slots=2, run_ms=20, idle_check_s=30)
        for n in range(FLEET)
    ]
    try:
        # Idle fleet, one execution at a time: one worker wakes for each, not sixteen.
        for n in range(20):
            single = await queue.enqueue(tenant_id="single", steps=[STEP], input={"n": n})
            assert await queue.wait(single, timeout=30) == {"n": n}
        # A flood of one tenant, then three light tenants, queued while the fleet is stopped
        # (SIGSTOP: as if busy); round robin starts the light ones first once it runs again.
        for process in processes:
            os.kill(process.pid, signal.SIGSTOP)
        flood = [
            await queue.enqueue(tenant_id="flood", steps=[STEP], input={"n": n}) for n in range(600)
        ]
        light = [
            await queue.enqueue(tenant_id=f"light{n % 3}", steps=[STEP], input={"n": n})
            for n in range(30)
        ]
        for process in processes:
            os.kill(process.pid, signal.SIGCONT)
        await asyncio.gather(*(queue.wait(i, timeout=120) for i in flood + light))
    finally:
        statuses = [fake_worker.stop(process) for process in processes]
    started = {i: await started_ms(queue, i) for i in flood + light}
    order = sorted(started, key=started.__getitem__)
    light_ranks = sorted(order.index(i) for i in light)
    # In FIFO order the light ones would start last (ranks 600 to 629). Round robin over four
    # tenants starts them within the first 4 x 10, give or take the 32 executions in flight.
    assert light_ranks[-1] < 4 * 10 + 2 * FLEET, light_ranks
    taken = Counter({str(s["worker_id"]): int(str(s["taken"])) for s in statuses})
    assert sum(taken.values()) == 650
    assert min(taken.values()) >= 10, taken  # every worker had a share
    # Without a herd, an idle fleet wakes about once per execution (the 20 singles, the flood),
    # not sixteen times; and a woken worker rarely finds nothing.
    wakeups = sum(int(str(s["wakeups"])) for s in statuses)
    idle_takes = sum(int(str(s["idle_takes"])) for s in statuses)
    print(f"wakeups {wakeups}, idle takes {idle_takes}, taken {sorted(taken.values())}")
    assert wakeups <= 20 + 2 * FLEET + 20, wakeups
    assert idle_takes <= FLEET + 20 + 20, idle_takes


async def started_ms(queue: QueueClient, execution_id: str) -> int:
    info = await queue.info(execution_id)
    assert info is not None and info.started_ms is not None
    return info.started_ms
