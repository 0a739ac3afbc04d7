"""The daemon as a service: quotas, fairness, cancellation, draining, health, dying."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from grpc_health.v1 import health_pb2

from sandbox_client import ErrorKind, Limits, SandboxClient, SandboxError, Step
from sandbox_client.v1 import sandbox_pb2 as pb
from tests.conftest import DaemonProcess, start_daemon
from tests.integration.conftest import health_of, wait_for_health

SLEEP = """
module.exports = async (ctx) => {
  await new Promise((resolve) => setTimeout(resolve, ctx.input.ms));
  return ctx.input.tag;
};
"""


def marked_sleeper(marker: str) -> str:
    """A step that leaves a detached child carrying `marker` in its argv, then sleeps."""
    return f"""
    const {{ spawn }} = require('child_process');
    module.exports = async () => {{
      spawn(process.execPath, ['-e', 'setInterval(() => {{}}, 1000)', '{marker}'],
            {{ detached: true, stdio: 'ignore' }}).unref();
      console.log('ready');
      await new Promise(() => {{}});
    }};
    """


def processes_with(marker: str) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if marker in (p.info["cmdline"] or [])]


async def wait_until_gone(marker: str, seconds: float = 10.0) -> list[psutil.Process]:
    deadline = time.monotonic() + seconds
    while (left := processes_with(marker)) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return left


@pytest.fixture
def config_file(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "sandboxd.toml"


def daemon_with(config: Path, text: str, pool_size: int = 2) -> DaemonProcess:
    config.write_text(text)
    return start_daemon("--config", str(config), pool_size=pool_size)


async def wait_for_load(client: SandboxClient, tenant: str, running: int, queued: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        load = (await client.status()).tenants.get(tenant)
        if load is not None and (load.running, load.queued) == (running, queued):
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"tenant {tenant} never reached running={running} queued={queued}")


async def test_cancel_ends_an_execution_still_waiting_for_admission(config_file: Path) -> None:
    daemon = daemon_with(config_file, "tenant_max_concurrent = 1\n")
    try:
        async with SandboxClient(daemon.target) as client:
            hang = [Step("hang", "module.exports = () => new Promise(() => {})")]
            running = asyncio.create_task(
                client.run(tenant_id="acme", steps=hang, execution_id="first")
            )
            await wait_for_load(client, "acme", running=1, queued=0)
            waiting = asyncio.create_task(
                client.run(tenant_id="acme", steps=hang, execution_id="second")
            )
            await wait_for_load(client, "acme", running=1, queued=1)
            began = time.monotonic()
            assert await client.cancel("acme", "second") is True
            with pytest.raises(SandboxError) as caught:
                await waiting
            assert time.monotonic() - began < 2
            assert (caught.value.kind, caught.value.message) == (
                ErrorKind.CANCELLED,
                "the execution was cancelled before it started",
            )
            assert (await client.status()).executions_by_outcome["CANCELLED"] == 1
            assert await client.cancel("acme", "first") is True
            with pytest.raises(SandboxError) as first:
                await running
            assert first.value.kind is ErrorKind.CANCELLED
    finally:
        assert daemon.stop() == 0


async def test_quota_exceeded_at_once_with_a_retry_hint(config_file: Path) -> None:
    daemon = daemon_with(config_file, "tenant_max_concurrent = 1\ntenant_max_queued = 1\n")
    try:
        async with SandboxClient(daemon.target) as client:
            hang = [Step("hang", "module.exports = () => new Promise(() => {})")]
            quick = [Step("sleep", SLEEP)]
            running = asyncio.create_task(
                client.run(tenant_id="acme", steps=hang, execution_id="quota-a")
            )
            await wait_for_load(client, "acme", running=1, queued=0)
            queued = asyncio.create_task(
                client.run(tenant_id="acme", steps=quick, input={"ms": 10, "tag": "b"})
            )
            await wait_for_load(client, "acme", running=1, queued=1)
            with pytest.raises(SandboxError) as caught:
                await client.run(tenant_id="acme", steps=quick, input={"ms": 10, "tag": "c"})
            assert caught.value.kind is ErrorKind.QUOTA_EXCEEDED
            assert (
                "tenant 'acme' has 1 executions running (limit 1) and 1 queued (limit 1)"
                in caught.value.message
            )
            assert caught.value.retry_after is not None
            assert 0.1 <= caught.value.retry_after <= 60
            # Another tenant is not held back by acme's quota.
            assert (
                await client.run(tenant_id="globex", steps=quick, input={"ms": 1, "tag": "g"})
                == "g"
            )
            assert await client.cancel("acme", "quota-a") is True
            with pytest.raises(SandboxError) as cancelled:
                await running
            assert cancelled.value.kind is ErrorKind.CANCELLED
            assert await queued == "b"
    finally:
        assert daemon.stop() == 0


async def test_a_flood_does_not_delay_a_light_tenant_beyond_its_share(config_file: Path) -> None:
    daemon = daemon_with(config_file, "pool_max = 1\ntenant_max_queued = 1000\n", pool_size=1)
    order: list[str] = []

    async def one(client: SandboxClient, tenant: str, n: int) -> None:
        async for event in client.execute(
            tenant_id=tenant, steps=[Step("s", SLEEP)], input={"ms": 100, "tag": n}
        ):
            if event.HasField("execution_started"):
                order.append(tenant)

    try:
        async with SandboxClient(daemon.target) as client:
            flood = [asyncio.create_task(one(client, "flood", n)) for n in range(12)]
            while len(order) < 2:
                await asyncio.sleep(0.02)
            light = [asyncio.create_task(one(client, "light", n)) for n in range(2)]
            await asyncio.gather(*flood, *light)
    finally:
        assert daemon.stop() == 0
    first_light = order.index("light")
    # Once both wait, grants alternate: the light tenant's two run within the next four grants.
    assert order[first_light : first_light + 3] == ["light", "flood", "light"]
    assert order.count("flood") == 12


async def test_client_disconnect_kills_the_jail(client: SandboxClient) -> None:
    marker = f"disconnect-{uuid.uuid4().hex}"
    events = client.execute(tenant_id="acme", steps=[Step("hang", marked_sleeper(marker))])
    async for event in events:
        if event.HasField("log"):
            break
    assert len(processes_with(marker)) == 1
    await events.aclose()
    assert await wait_until_gone(marker) == []


async def test_cancel_from_another_connection(daemon: DaemonProcess, client: SandboxClient) -> None:
    marker = f"cancel-{uuid.uuid4().hex}"
    execution_id = f"exec-{uuid.uuid4().hex}"
    seen: list[pb.ExecutionEvent] = []

    async def watch() -> None:
        async for event in client.execute(
            tenant_id="acme",
            steps=[Step("hang", marked_sleeper(marker))],
            execution_id=execution_id,
        ):
            seen.append(event)

    watcher = asyncio.create_task(watch())
    while not any(e.HasField("log") for e in seen):
        await asyncio.sleep(0.02)
    async with SandboxClient(daemon.target) as other:
        # Another tenant cannot find (or cancel) acme's execution, even by its exact id.
        assert await other.cancel("globex", execution_id) is False
        assert await other.cancel("acme", "no-such-execution") is False
        assert await other.cancel("acme", execution_id) is True
    await watcher
    failed = next(e.step_failed for e in seen if e.HasField("step_failed"))
    assert (failed.kind, failed.message) == (pb.ERROR_KIND_CANCELLED, "the execution was cancelled")
    assert seen[-1].execution_finished.error_kind == pb.ERROR_KIND_CANCELLED
    assert await wait_until_gone(marker) == []


async def test_deadline_bounds_the_execution(client: SandboxClient) -> None:
    marker = f"deadline-{uuid.uuid4().hex}"
    with pytest.raises(SandboxError) as caught:
        await client.run(
            tenant_id="acme", steps=[Step("hang", marked_sleeper(marker))], timeout=1.5
        )
    assert caught.value.kind is ErrorKind.DEADLINE_EXCEEDED
    assert await wait_until_gone(marker) == []
    status = await client.status()
    assert status.executions_by_outcome["DEADLINE_EXCEEDED"] >= 1


async def test_sigterm_drains_in_flight_work_then_exits_zero(config_file: Path) -> None:
    daemon = daemon_with(config_file, "shutdown_grace_s = 3.0\n")
    assert health_of(daemon.target) == health_pb2.HealthCheckResponse.SERVING
    marker = f"drain-{uuid.uuid4().hex}"
    short_events: list[pb.ExecutionEvent] = []
    long_events: list[pb.ExecutionEvent] = []

    async def collect(events: list[pb.ExecutionEvent], step: Step) -> None:
        steps, limits = [step], Limits(timeout_ms=60_000)
        async for event in client.execute(
            tenant_id="acme", steps=steps, input={"ms": 1000, "tag": "done"}, limits=limits
        ):
            events.append(event)

    async with SandboxClient(daemon.target) as client:
        short = asyncio.create_task(collect(short_events, Step("s", SLEEP)))
        long = asyncio.create_task(collect(long_events, Step("hang", marked_sleeper(marker))))
        while not (
            any(e.HasField("log") for e in long_events)
            and any(e.HasField("step_started") for e in short_events)
        ):
            await asyncio.sleep(0.02)
        daemon.process.send_signal(signal.SIGTERM)
        await wait_for_health(daemon.target, health_pb2.HealthCheckResponse.NOT_SERVING)
        with pytest.raises(SandboxError) as refused:
            await client.run(
                tenant_id="acme", steps=[Step("s", SLEEP)], input={"ms": 1, "tag": "x"}
            )
        assert refused.value.kind is ErrorKind.UNAVAILABLE
        await asyncio.gather(short, long)
    assert short_events[-1].execution_finished.status == pb.EXECUTION_STATUS_SUCCEEDED
    assert long_events[-1].execution_finished.error_kind == pb.ERROR_KIND_CANCELLED
    assert daemon.process.wait(timeout=30) == 0
    assert await wait_until_gone(marker) == []


async def test_sigkill_of_the_daemon_leaves_no_jail(config_file: Path) -> None:
    daemon = daemon_with(config_file, "")
    marker = f"sigkill-{uuid.uuid4().hex}"
    daemon_process = psutil.Process(daemon.process.pid)
    async with SandboxClient(daemon.target) as client:
        events = client.execute(tenant_id="acme", steps=[Step("hang", marked_sleeper(marker))])
        async for event in events:
            if event.HasField("log"):
                break
        descendants = daemon_process.children(recursive=True)
        assert len(processes_with(marker)) == 1
        os.kill(daemon.process.pid, signal.SIGKILL)
        daemon.process.wait(timeout=10)
        with pytest.raises(SandboxError):
            async for _ in events:
                pass
    assert await wait_until_gone(marker) == []
    _, alive = psutil.wait_procs(descendants, timeout=10)
    assert alive == []
