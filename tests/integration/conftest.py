"""Fixtures of the queue tests: a real redis-server and queue workers, each a daemon with jails.

A daemon owns its process's cgroup parent, so one process holds at most one daemon: a test gets
one worker in its own process (to look at its status) and more as child processes, the way a
fleet runs them.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sandbox_client._queue import QueueClient
from sandboxd import config
from sandboxd.daemon import Daemon
from sandboxd.queue.worker import QueueOptions, QueueWorker
from tests.redis_server import RedisServer
from tests.workers import start_worker_process

# Jails of the workers started here run as host uids from this base on, 100 per worker; above
# the range of tests/conftest.py's daemon, so that both can run at once.
WORKER_UID_BASE = 740_000
POOL_MAX = 3
TEST_OPTIONS = QueueOptions(visibility_timeout_s=3.0, max_attempts=3, retry_backoff_s=0.05)

StartWorker = Callable[..., Awaitable[QueueWorker]]
_uid_bases = itertools.count(WORKER_UID_BASE, 100)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path, appendonly=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def queue(redis_server: RedisServer) -> AsyncIterator[QueueClient]:
    async with QueueClient(redis_server.url) as client:
        yield client


@pytest.fixture
async def start_worker(redis_server: RedisServer) -> AsyncIterator[StartWorker]:
    """Starts the test's in-process worker: a daemon (real jails) with a QueueWorker."""
    started: list[tuple[Daemon, QueueWorker]] = []

    async def start(
        worker_id: str, options: QueueOptions = TEST_OPTIONS, pool_max: int = POOL_MAX
    ) -> QueueWorker:
        assert not started, "one daemon per process: use spawn_worker for more"
        settings = config.load(
            None,
            env={},
            listen="127.0.0.1:0",
            pool_size=1,
            pool_max=pool_max,
            uid_base=next(_uid_bases),
            cgroups="auto",
        )
        daemon = Daemon(settings)
        await daemon.start()
        assert daemon.executor is not None
        worker = QueueWorker(redis_server.url, daemon.executor, settings, worker_id, options)
        await worker.start()
        started.append((daemon, worker))
        return worker

    yield start
    for daemon, worker in started:
        await worker.stop(grace=5.0)
        await daemon.stop(grace=1.0)


@dataclass
class WorkerProcess:
    """A worker in its own process (`sandboxd worker`); its jails run as uid_base + n."""

    process: subprocess.Popen[str]
    target: str  # its gRPC port
    uid_base: int
    pool_max: int

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


SpawnWorker = Callable[..., WorkerProcess]


@pytest.fixture
def spawn_worker(redis_server: RedisServer) -> Iterator[SpawnWorker]:
    """Starts workers as child processes; returns once each takes work. All stop at the end."""
    spawned: list[WorkerProcess] = []

    def spawn(worker_id: str, pool_max: int = POOL_MAX) -> WorkerProcess:
        uid_base = next(_uid_bases)
        process, target = start_worker_process(
            redis_server.url,
            worker_id,
            pool_size=1,
            pool_max=pool_max,
            uid_base=uid_base,
            options=TEST_OPTIONS,
        )
        worker = WorkerProcess(process, target, uid_base, pool_max)
        spawned.append(worker)
        return worker

    yield spawn
    for worker in spawned:
        if worker.process.poll() is None:
            assert worker.stop() == 0


def health_of(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        return int(reply.status)


async def wait_for_health(target: str, status: int) -> None:
    deadline = time.monotonic() + 10
    while health_of(target) != status:
        assert time.monotonic() < deadline, f"health never became {status}"
        await asyncio.sleep(0.05)
