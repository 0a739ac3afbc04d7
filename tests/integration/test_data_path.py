"""Data path: large payloads, results kept in the jail, sessions, secrets, logs."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import urllib.parse

import pytest

from sandbox_client import ErrorKind, Limits, SandboxClient, SandboxError, Step
from sandbox_client.v1 import sandbox_pb2 as pb

MiB = 1024 * 1024


async def events_of(
    client: SandboxClient, steps: list[Step], **kwargs: object
) -> list[pb.ExecutionEvent]:
    return [e async for e in client.execute(tenant_id="acme", steps=steps, **kwargs)]  # type: ignore[arg-type]


def finished_steps(events: list[pb.ExecutionEvent]) -> dict[str, pb.StepFinished]:
    return {e.step_finished.step: e.step_finished for e in events if e.HasField("step_finished")}


async def test_a_50_mib_result_stays_in_the_jail_for_the_next_step(client: SandboxClient) -> None:
    make = "module.exports = async () => ({ blob: 'x'.repeat(50 * 1024 * 1024), n: 7 })"
    read = (
        "module.exports = async (ctx) =>"
        " ({ length: ctx.steps.make.blob.length, n: ctx.steps.make.n })"
    )
    events = await events_of(
        client, [Step("make", make), Step("read", read)], return_results="last"
    )
    steps = finished_steps(events)
    made = steps["make"]
    assert made.kept is True
    assert made.WhichOneof("result") is None
    assert made.result_bytes == 50 * MiB + len('{"blob":"","n":7}')
    assert json.loads(steps["read"].json) == {"length": 50 * MiB, "n": 7}
    assert not any(e.HasField("result_chunk") for e in events)


async def test_32_mib_in_and_out_round_trip_exactly(client: SandboxClient) -> None:
    data = (hashlib.sha256(b"seed").hexdigest() * (32 * MiB // 64))[: 32 * MiB]
    echo = (
        "module.exports = async (ctx) => ({ data: ctx.input.data, length: ctx.input.data.length })"
    )
    result = await client.run(tenant_id="acme", steps=[Step("echo", echo)], input={"data": data})
    assert result["length"] == 32 * MiB
    assert (
        hashlib.sha256(result["data"].encode()).hexdigest()
        == hashlib.sha256(data.encode()).hexdigest()
    )


async def test_a_large_result_arrives_in_chunks_reassembled(client: SandboxClient) -> None:
    code = "module.exports = async () => Buffer.alloc(3 * 1024 * 1024 + 5, 7)"
    result = await client.run(tenant_id="acme", steps=[Step("bytes", code)])
    assert result == bytes([7]) * (3 * MiB + 5)


async def test_over_limit_input_and_result_get_their_kinds(client: SandboxClient) -> None:
    too_big = b'"' + b"y" * (64 * MiB) + b'"'
    with pytest.raises(SandboxError) as caught:
        await client.run(
            tenant_id="acme", steps=[Step("a", "module.exports = () => 1")], input_json=too_big
        )
    assert caught.value.kind is ErrorKind.INVALID_REQUEST
    code = "module.exports = async () => 'z'.repeat(2 * 1024 * 1024)"
    with pytest.raises(SandboxError) as caught:
        await client.run(
            tenant_id="acme", steps=[Step("big", code)], limits=Limits(result_bytes=1 * MiB)
        )
    assert caught.value.kind is ErrorKind.RESULT_TOO_LARGE
    assert "over the limit of 1048576 bytes" in caught.value.message
    assert (
        await client.run(tenant_id="acme", steps=[Step("ok", "module.exports = () => 'fine'")])
        == "fine"
    )


async def test_named_results_only(client: SandboxClient) -> None:
    steps = [Step(name, f"module.exports = () => '{name}'") for name in ("a", "b", "c")]
    found = finished_steps(await events_of(client, steps, return_results=["a", "c"]))
    assert {name: (f.kept, f.json) for name, f in found.items()} == {
        "a": (False, b'"a"'),
        "b": (True, b""),
        "c": (False, b'"c"'),
    }


async def test_a_session_runs_500_steps_on_one_jail(client: SandboxClient) -> None:
    code = """
    module.exports = async (ctx) => {
      globalThis.calls = (globalThis.calls || 0) + 1;
      const previous = ctx.steps.square === undefined ? null : ctx.steps.square.value;
      return { value: ctx.input.n * ctx.input.n, calls: globalThis.calls, previous };
    };
    """
    async with client.session(tenant_id="acme") as session:
        for n in range(500):
            result = await session.step("square", code, {"n": n})
            assert result == {
                "value": n * n,
                "calls": n + 1,
                "previous": (n - 1) ** 2 if n else None,
            }
    assert session.finished is not None
    assert session.finished.status == pb.EXECUTION_STATUS_SUCCEEDED
    assert session.finished.steps_completed == 500


async def test_a_session_branches_on_an_earlier_result(client: SandboxClient) -> None:
    classify = "module.exports = async (ctx) => ctx.input.size > 100 ? 'large' : 'small'"
    large = "module.exports = async (ctx) => 'split ' + ctx.steps.classify"
    small = "module.exports = async (ctx) => 'keep ' + ctx.steps.classify"
    async with client.session(tenant_id="acme") as session:
        kind = await session.step("classify", classify, {"size": 512})
        branch = large if kind == "large" else small
        assert await session.step("handle", branch) == "split large"


async def test_a_session_goes_on_after_a_throw_and_ends_after_a_timeout(
    client: SandboxClient,
) -> None:
    async with client.session(tenant_id="acme") as session:
        with pytest.raises(SandboxError) as caught:
            await session.step("bad", "module.exports = () => { throw new Error('nope') }")
        assert caught.value.kind is ErrorKind.USER_ERROR
        assert await session.step("good", "module.exports = () => 'still here'") == "still here"
        with pytest.raises(SandboxError) as caught:
            await session.step(
                "spin", "module.exports = () => { while (true) {} }", limits=Limits(timeout_ms=500)
            )
        assert caught.value.kind is ErrorKind.TIMEOUT
        with pytest.raises(SandboxError) as caught:
            await session.step("after", "module.exports = () => 1")
        assert caught.value.kind is ErrorKind.TIMEOUT
    assert session.finished is not None
    assert session.finished.error_kind == pb.ERROR_KIND_TIMEOUT


async def test_a_session_idle_past_its_timeout_ends(client: SandboxClient) -> None:
    async with client.session(tenant_id="acme", idle_timeout=0.3) as session:
        assert await session.step("one", "module.exports = () => 1") == 1
        await asyncio.sleep(1.0)
        with pytest.raises(SandboxError) as caught:
            await session.step("two", "module.exports = () => 2")
    assert caught.value.kind is ErrorKind.TIMEOUT
    assert "idle for 300 ms" in caught.value.message


SECRET = "s3cr3t/tok+en=value"


async def test_credentials_are_redacted_in_every_form(client: SandboxClient) -> None:
    code = """
    module.exports = async (ctx) => {
      const token = ctx.credentials.apiToken;
      console.log('raw', token);
      console.log('b64', Buffer.from(token).toString('base64'));
      console.log('url', encodeURIComponent(token));
      console.log('json', JSON.stringify({ token }));
      function leak() { throw new Error('auth failed for ' + token); }
      leak();
    };
    """
    events = await events_of(client, [Step("leak", code)], credentials={"apiToken": SECRET})
    texts = [e.log.text for e in events if e.HasField("log")]
    failed = next(e.step_failed for e in events if e.HasField("step_failed"))
    finished = events[-1].execution_finished
    assert texts == [
        "raw [REDACTED]",
        "b64 [REDACTED]",
        "url [REDACTED]",
        'json {"token":"[REDACTED]"}',
    ]
    assert failed.message == "Error: auth failed for [REDACTED]"
    assert "[REDACTED]" in failed.stack
    everything = "\n".join([*texts, failed.message, failed.stack, finished.error_message])
    for form in (
        SECRET,
        base64.b64encode(SECRET.encode()).decode(),
        urllib.parse.quote(SECRET, safe=""),
    ):
        assert form not in everything


async def test_log_truncation_by_bytes_and_by_lines(client: SandboxClient) -> None:
    chatty = (
        "module.exports = async () => {"
        " for (let i = 0; i < 100; i++) console.log('line ' + i); return 'done'; }"
    )
    events = await events_of(client, [Step("chatty", chatty, limits=Limits(log_lines=10))])
    logs = [e.log for e in events if e.HasField("log")]
    assert [log.text for log in logs[:10]] == [f"line {i}" for i in range(10)]
    assert len(logs) == 11
    assert logs[10].truncated is True
    assert "10 lines" in logs[10].text
    assert json.loads(finished_steps(events)["chatty"].json) == "done"

    # Past the byte limit: a marker, the step goes on; past twice the limit it is stopped.
    events = await events_of(client, [Step("chatty", chatty, limits=Limits(log_bytes=600))])
    logs = [e.log for e in events if e.HasField("log")]
    assert [log.truncated for log in logs][-1] is True
    assert sum(len(log.text) for log in logs[:-1]) <= 600
    assert events[-1].execution_finished.status == pb.EXECUTION_STATUS_SUCCEEDED
    events = await events_of(client, [Step("chatty", chatty, limits=Limits(log_bytes=40))])
    assert [e.log.truncated for e in events if e.HasField("log")][-1] is True
    assert events[-1].execution_finished.error_kind == pb.ERROR_KIND_OUTPUT_LIMIT


async def test_invalid_utf8_and_binary_output_is_replaced(client: SandboxClient) -> None:
    code = """
    module.exports = async () => {
      process.stdout.write(Buffer.from([0x66, 0x6f, 0xff, 0xfe, 0x6f]));
      return 1;
    };
    """
    events = await events_of(client, [Step("junk", code)])
    assert [e.log.text for e in events if e.HasField("log")] == ["fo\ufffd\ufffdo"]
