"""Egress in distributed mode: an execution queued in Redis with an egress policy runs on a
`sandboxd worker` under the same policy, and the same checks, as over gRPC.

Everything lives in the test's namespace: redis-server, the worker (its jails and its proxy) and
the queue client, which runs on the namespace's loop (Redis listens on the namespace's loopback).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from sandbox_client import Step
from sandbox_client._queue import QueueClient
from sandbox_client.v1 import sandbox_pb2 as pb
from sandboxd.queue.worker import QueueOptions
from tests.egress.conftest import TENANT, Internet, egress_config
from tests.redis_server import RedisServer
from tests.workers import start_worker_process

WORKER_UID_BASE = 780_000
HELLO = Step(
    "hello",
    "module.exports = async () => (await fetch('https://files.partner.test:8443/hello')).text()",
)
METADATA = Step(
    "metadata",
    "module.exports = async () => {"
    " try { await fetch('http://169.254.169.254/latest/meta-data/'); return 'reached'; }"
    " catch (error) { return (error.cause || error).code; } }",
)


@pytest.fixture(scope="module")
def redis_url(internet: Internet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A worker and its redis-server in the namespace; the URL of the queue, there."""
    folder = tmp_path_factory.mktemp("queue-egress")
    server = RedisServer(folder)

    async def start_server() -> None:
        server.start()  # from the namespace's thread: the server lives in it

    async def start_worker() -> subprocess.Popen[str]:
        worker, _target = start_worker_process(
            server.url,
            "egress-worker",
            pool_size=1,
            pool_max=2,
            uid_base=WORKER_UID_BASE,
            options=QueueOptions(),
            extra_args=("--config", str(egress_config(folder, internet))),
        )
        return worker

    internet.ns.run(start_server(), timeout=60)
    try:
        worker = internet.ns.run(start_worker(), timeout=120)
        yield server.url
        worker.terminate()
        assert worker.wait(timeout=60) == 0
    finally:
        server.stop()


def run_queued(
    internet: Internet, redis_url: str, step: Step, egress: list[str]
) -> list[pb.ExecutionEvent]:
    """Enqueue `step` for TENANT with `egress`, from inside the namespace; its events."""

    async def enqueue_and_collect() -> list[pb.ExecutionEvent]:
        async with QueueClient(redis_url) as queue:
            execution_id = await queue.enqueue(tenant_id=TENANT, steps=[step], egress=egress)
            return [event async for event in queue.events(execution_id)]

    return internet.ns.run(enqueue_and_collect(), timeout=120)


def test_a_queued_step_reaches_an_allowed_partner(internet: Internet, redis_url: str) -> None:
    events = run_queued(internet, redis_url, HELLO, ["*.partner.test:8443"])
    finished = events[-1].execution_finished
    result = next(e.step_finished.json for e in events if e.HasField("step_finished"))
    assert (finished.status, result) == (pb.EXECUTION_STATUS_SUCCEEDED, b'"partner says hello\\n"')
    usage = finished.usage
    assert (usage.egress_connections, usage.egress_denied) == (1, 0)


def test_a_queued_step_is_denied_what_its_policy_does_not_allow(
    internet: Internet, redis_url: str
) -> None:
    """Metadata is denied by the address rules even where the tenant's allowlist names it."""
    events = run_queued(internet, redis_url, METADATA, ["169.254.169.254:80"])
    result = next(e.step_finished.json for e in events if e.HasField("step_finished"))
    assert result == b'"EGRESS_DENIED"'
    assert events[-1].execution_finished.usage.egress_denied == 1


def test_a_queued_request_cannot_widen_its_tenants_allowlist(
    internet: Internet, redis_url: str
) -> None:
    events = run_queued(internet, redis_url, HELLO, ["*.example.com:443"])
    finished = events[-1].execution_finished
    assert (finished.status, finished.error_kind, finished.error_message) == (
        pb.EXECUTION_STATUS_FAILED,
        pb.ERROR_KIND_INVALID_REQUEST,
        "egress destination '*.example.com:443' is not in tenant acme's allowlist",
    )
