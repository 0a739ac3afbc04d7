"""Fixtures of the queue's own tests: a real redis-server on a free loopback port; no jails."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as redis

from sandbox_client.redisqueue.store import QueueStore
from tests.integration.conftest import queue  # noqa: F401 (a fixture: a QueueClient)
from tests.redis_server import RedisServer


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[QueueStore]:
    opened = QueueStore(redis_server.url, max_connections=16)
    yield opened
    await opened.close()


@pytest.fixture
async def raw(redis_server: RedisServer) -> AsyncIterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()
