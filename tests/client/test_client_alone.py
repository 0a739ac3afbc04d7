"""The Python client against a real daemon, as an orchestrator uses it: installed on its own.

Under SANDBOX_CLIENT_ALONE=1 (scripts/test's client-only virtual environment) the tests also
check that nothing of the daemon came along.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
import uuid

import pytest

import sandbox_client
from sandbox_client import (
    ErrorKind,
    SandboxClient,
    SandboxError,
    Step,
    SyncSandboxClient,
    result_of,
)

ALONE = os.environ.get("SANDBOX_CLIENT_ALONE") == "1"
DOUBLE = "module.exports = async (context) => context.input.n * 2"
SLEEP = "module.exports = () => new Promise((resolve) => setTimeout(resolve, 20000))"


@pytest.mark.skipif(not ALONE, reason="only where the client is installed alone")
@pytest.mark.parametrize("module", ["sandboxd", "redis", "opentelemetry", "grpc_status", "prctl"])
def test_installed_alone_brings_nothing_of_the_daemon(module: str) -> None:
    assert importlib.util.find_spec(module) is None
    assert sandbox_client.__file__ is not None
    assert sandbox_client.__file__.startswith(sys.prefix)  # the installed copy, not the tree


def test_queue_client_without_redis_says_what_to_install() -> None:
    # A fresh interpreter in which redis cannot be imported (a None entry in sys.modules).
    program = (
        "import sys; sys.modules['redis'] = None; import sandbox_client; sandbox_client.QueueClient"
    )
    ran = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=False
    )
    assert ran.returncode == 1
    assert ran.stderr.splitlines()[-1] == (
        "ImportError: sandbox_client.QueueClient needs the redis package: "
        "pip install 'sandboxd-client[queue]'"
    )


async def test_run_returns_the_decoded_result(client: SandboxClient) -> None:
    result = await client.run(tenant_id="acme", steps=[Step("double", DOUBLE)], input={"n": 21})
    assert result == 42


async def test_execute_streams_typed_events_in_order(client: SandboxClient) -> None:
    code = "module.exports = async (context) => { console.log('hi'); return [context.input] }"
    events = [
        event
        async for event in client.execute(
            tenant_id="acme", steps=[Step("echo", code)], input={"a": "é"}
        )
    ]
    kinds = [event.WhichOneof("event") for event in events]
    assert kinds == ["execution_started", "step_started", "log", "step_finished",
                     "execution_finished"]  # fmt: skip
    assert events[2].log.text == "hi"
    assert events[3].step_finished.json == b'[{"a":"\xc3\xa9"}]'
    assert [event.seq for event in events] == [0, 1, 2, 3, 4]


async def test_a_throwing_step_is_a_user_error_with_its_step(client: SandboxClient) -> None:
    code = "module.exports = () => { throw new TypeError('no orders') }"
    with pytest.raises(SandboxError) as caught:
        await client.run(tenant_id="acme", steps=[Step("parse", code)])
    assert caught.value.kind is ErrorKind.USER_ERROR
    assert caught.value.step == "parse"
    assert caught.value.message == "TypeError: no orders"


async def test_a_refusal_carries_the_field_from_bad_request(client: SandboxClient) -> None:
    with pytest.raises(SandboxError) as caught:
        await client.run(tenant_id="acme", steps=[Step("bad name", DOUBLE)])
    assert caught.value.kind is ErrorKind.INVALID_REQUEST
    assert caught.value.field == "steps[0].name"
    assert caught.value.retry_after is None


async def test_over_quota_carries_retry_info(client: SandboxClient, narrow_tenant: str) -> None:
    events = client.execute(tenant_id=narrow_tenant, steps=[Step("wait", SLEEP)], execution_id="1")
    while (await anext(events)).WhichOneof("event") != "step_started":
        pass
    with pytest.raises(SandboxError) as caught:
        await client.run(tenant_id=narrow_tenant, steps=[Step("double", DOUBLE)])
    assert caught.value.kind is ErrorKind.QUOTA_EXCEEDED
    assert caught.value.retry_after is not None and caught.value.retry_after > 0
    assert await client.cancel(narrow_tenant, "1") is True
    with pytest.raises(SandboxError) as cancelled:
        await result_of(events)
    assert cancelled.value.kind is ErrorKind.CANCELLED
    assert cancelled.value.execution_id == "1"


async def test_a_passed_deadline_is_deadline_exceeded(client: SandboxClient) -> None:
    with pytest.raises(SandboxError) as caught:
        await client.run(tenant_id="acme", steps=[Step("wait", SLEEP)], timeout=1.0)
    assert caught.value.kind is ErrorKind.DEADLINE_EXCEEDED


async def test_cancel_of_an_unknown_execution_is_false(client: SandboxClient) -> None:
    assert await client.cancel("acme", uuid.uuid4().hex) is False


async def test_large_input_travels_in_chunks_and_back(client: SandboxClient) -> None:
    text = "x" * (3 * 1024 * 1024 + 17)
    code = "module.exports = async (context) => context.input.text.length"
    counted = await client.run(tenant_id="acme", steps=[Step("count", code)], input={"text": text})
    assert counted == len(text)


async def test_a_session_runs_steps_as_the_caller_decides(client: SandboxClient) -> None:
    classify = "module.exports = (c) => (c.input.size > 100 ? 'large' : 'small')"
    async with client.session(tenant_id="acme") as session:
        kind = await session.step("classify", classify, {"size": 512})
        doubled = await session.step("use", "module.exports = (c) => c.steps.classify + '!'")
    assert (kind, doubled) == ("large", "large!")
    assert session.finished is not None
    assert session.finished.steps_completed == 2


async def test_status_names_outcomes_without_the_enum_prefix(client: SandboxClient) -> None:
    await client.run(tenant_id="acme", steps=[Step("double", DOUBLE)], input={"n": 1})
    status = await client.status()
    assert status.serving
    assert status.executions_by_outcome["SUCCEEDED"] >= 1
    assert all(not name.startswith("ERROR_KIND_") for name in status.executions_by_outcome)


def test_the_blocking_client_runs_steps(daemon_target: str) -> None:
    with SyncSandboxClient(daemon_target) as client:
        assert client.run(tenant_id="acme", steps=[Step("double", DOUBLE)], input={"n": 4}) == 8
