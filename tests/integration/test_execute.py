"""End to end over real gRPC: real daemon process, real jails, real Node."""

from __future__ import annotations

import asyncio
import json
import uuid

import grpc
import psutil
import pytest
from google.rpc import error_details_pb2, status_pb2

from sandbox_client import ErrorKind, Limits, SandboxClient, SandboxError, Step
from sandbox_client.v1 import sandbox_pb2 as pb


def kinds(events: list[pb.ExecutionEvent]) -> list[str]:
    return [str(event.WhichOneof("event")) for event in events]


async def collect(
    client: SandboxClient, steps: list[Step], **kwargs: object
) -> list[pb.ExecutionEvent]:
    return [event async for event in client.execute(tenant_id="acme", steps=steps, **kwargs)]  # type: ignore[arg-type]


async def test_result_comes_back(client: SandboxClient) -> None:
    code = "module.exports = async (ctx) => ({ doubled: ctx.input.n * 2 })"
    assert await client.run(tenant_id="acme", steps=[Step("double", code)], input={"n": 21}) == {
        "doubled": 42
    }


async def test_steps_see_earlier_results_and_logs_precede_outcome(client: SandboxClient) -> None:
    steps = [
        Step("first", "module.exports = async () => { console.log('one'); return {x: 5}; }"),
        Step(
            "second",
            "module.exports = async (ctx) => { console.warn('two'); console.error('three');"
            " return ctx.steps.first.x + 1; }",
        ),
    ]
    events = await collect(client, steps)
    assert kinds(events) == [
        "execution_started",
        "step_started",
        "log",
        "step_finished",
        "step_started",
        "log",
        "log",
        "step_finished",
        "execution_finished",
    ]
    assert [event.seq for event in events] == list(range(len(events)))
    logs = [(e.log.step, e.log.level, e.log.text) for e in events if e.HasField("log")]
    assert logs == [
        ("first", pb.LOG_LEVEL_INFO, "one"),
        ("second", pb.LOG_LEVEL_WARN, "two"),
        ("second", pb.LOG_LEVEL_ERROR, "three"),
    ]
    assert json.loads(events[7].step_finished.json) == 6
    assert events[-1].execution_finished.status == pb.EXECUTION_STATUS_SUCCEEDED
    assert events[-1].execution_finished.steps_completed == 2


async def test_throwing_step_is_user_error_and_stops_the_execution(client: SandboxClient) -> None:
    steps = [
        Step("boom", "module.exports = async () => { throw new TypeError('bad input: 7'); }"),
        Step("never", "module.exports = async () => 1"),
    ]
    events = await collect(client, steps)
    assert kinds(events) == [
        "execution_started",
        "step_started",
        "step_failed",
        "execution_finished",
    ]
    failed = events[2].step_failed
    assert (failed.step, failed.kind, failed.message) == (
        "boom",
        pb.ERROR_KIND_USER_ERROR,
        "TypeError: bad input: 7",
    )
    assert "/steps/boom.js" in failed.stack
    finished = events[3].execution_finished
    assert finished.error_kind == pb.ERROR_KIND_USER_ERROR
    assert finished.failed_step == "boom"
    with pytest.raises(SandboxError) as caught:
        await client.run(tenant_id="acme", steps=steps)
    assert caught.value.kind is ErrorKind.USER_ERROR
    assert caught.value.step == "boom"


async def test_endless_loop_times_out_and_leaves_no_process(client: SandboxClient) -> None:
    marker = f"orphan-{uuid.uuid4().hex}"
    code = f"""
    const {{ spawn }} = require('child_process');
    module.exports = async () => {{
      const child = spawn(process.execPath, ['-e', 'setInterval(() => {{}}, 1000)', '{marker}'],
                          {{ detached: true, stdio: 'ignore' }});
      child.unref();
      while (true) {{}}
    }};
    """
    limits = Limits(timeout_ms=1500)
    with pytest.raises(SandboxError) as caught:
        await client.run(tenant_id="acme", steps=[Step("spin", code)], limits=limits)
    assert caught.value.kind is ErrorKind.TIMEOUT
    assert "1500 ms" in caught.value.message
    await asyncio.sleep(0.2)  # the jail is destroyed before the final event; be generous anyway
    survivors = [p for p in psutil.process_iter(["cmdline"]) if marker in (p.info["cmdline"] or [])]
    assert survivors == []


async def test_global_pollution_and_tmp_files_do_not_reach_the_next_execution(
    client: SandboxClient,
) -> None:
    polluter = """
    const fs = require('fs');
    module.exports = async () => {
      global.console.log = () => { throw new Error('nefarious'); };
      Object.prototype.polluted = 'yes';
      fs.writeFileSync('/tmp/left-behind', 'secret of acme');
      return fs.readdirSync('/tmp');
    };
    """
    assert await client.run(tenant_id="acme", steps=[Step("pollute", polluter)]) == ["left-behind"]
    inspector = """
    const fs = require('fs');
    module.exports = async () => {
      console.log('still works');
      return { tmp: fs.readdirSync('/tmp'), prototypeClean: ({}).polluted === undefined,
               consoleIsTheRunners: !console.log.toString().includes('nefarious') };
    };
    """
    for tenant in ("acme", "globex"):
        events = [
            e async for e in client.execute(tenant_id=tenant, steps=[Step("look", inspector)])
        ]
        logs = [e.log.text for e in events if e.HasField("log")]
        assert logs == ["still works"]
        finished = next(e.step_finished for e in events if e.HasField("step_finished"))
        assert json.loads(finished.json) == {
            "tmp": [],
            "prototypeClean": True,
            "consoleIsTheRunners": True,
        }


async def test_inside_the_jail(client: SandboxClient) -> None:
    code = """
    const fs = require('fs'); const os = require('os');
    module.exports = async () => {
      const status = Object.fromEntries(fs.readFileSync('/proc/self/status', 'utf8').trim()
        .split('\\n').map((line) => line.split(':\\t')));
      let rootWrite;
      try { fs.writeFileSync('/escape', 'x'); rootWrite = 'written'; }
      catch (e) { rootWrite = e.code; }
      return {
        uidMap: fs.readFileSync('/proc/self/uid_map', 'utf8').trim().split(/\\s+/).map(Number),
        capEff: status.CapEff, noNewPrivs: status.NoNewPrivs,
        interfaces: Object.keys(os.networkInterfaces()),
        rootWrite, root: fs.readdirSync('/').sort(),
        hostFiles: ['/etc/shadow', '/root', '/work', '/var/lib', '/home', '/sys']
          .filter(fs.existsSync),
        hostname: os.hostname(),
      };
    };
    """
    seen = await client.run(tenant_id="acme", steps=[Step("inspect", code)])
    inside, outside, count = seen["uidMap"]
    assert (inside, count) == (1000, 1)
    assert outside >= 200_000
    assert seen["capEff"] == "0000000000000000"
    assert seen["noNewPrivs"] == "1"
    assert seen["interfaces"] == ["lo"]
    assert seen["rootWrite"] == "EROFS"
    assert seen["root"] == ["dev", "etc", "lib", "lib64", "proc", "sandboxd", "tmp", "usr"]
    assert seen["hostFiles"] == []
    assert seen["hostname"] == "sandbox"


async def test_concurrent_executions_each_get_their_own_result(client: SandboxClient) -> None:
    code = """
    module.exports = async (ctx) => {
      await new Promise((resolve) => setTimeout(resolve, 50));
      return { n: ctx.input.n, pid: process.pid, tenant: ctx.execution.tenantId };
    };
    """

    async def one(n: int) -> object:
        return await client.run(tenant_id=f"t{n % 3}", steps=[Step("echo", code)], input={"n": n})

    results = await asyncio.gather(*(one(n) for n in range(12)))
    assert results == [{"n": n, "pid": 1, "tenant": f"t{n % 3}"} for n in range(12)]


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([], "an execution needs at least one step"),
        (
            [Step("a", "module.exports = () => 1"), Step("a", "module.exports = () => 2")],
            "step 1: duplicate step name 'a'",
        ),
        ([Step("bad name!", "module.exports = () => 1")], "step 0: name 'bad name!' must match"),
    ],
)
async def test_bad_requests_are_invalid(
    client: SandboxClient, steps: list[Step], message: str
) -> None:
    with pytest.raises(SandboxError) as caught:
        await client.run(tenant_id="acme", steps=steps)
    assert caught.value.kind is ErrorKind.INVALID_REQUEST
    assert message in caught.value.message


async def test_oversized_input_is_invalid_and_daemon_keeps_serving(client: SandboxClient) -> None:
    big = b'"' + b"x" * (65 * 1024 * 1024) + b'"'
    with pytest.raises(SandboxError) as caught:
        await client.run(
            tenant_id="acme", steps=[Step("a", "module.exports = () => 1")], input_json=big
        )
    assert caught.value.kind is ErrorKind.INVALID_REQUEST
    assert "over the limit of 67108864 bytes" in caught.value.message
    assert await client.run(tenant_id="acme", steps=[Step("a", "module.exports = () => 1")]) == 1


async def test_syntax_error_is_user_error(client: SandboxClient) -> None:
    with pytest.raises(SandboxError) as caught:
        await client.run(tenant_id="acme", steps=[Step("broken", "module.exports = async () => {")])
    assert caught.value.kind is ErrorKind.USER_ERROR
    assert "SyntaxError" in caught.value.message


async def test_invalid_request_carries_grpc_status(daemon: object) -> None:
    from sandbox_client.v1 import sandbox_pb2_grpc

    target = daemon.target  # type: ignore[attr-defined]
    async with grpc.aio.insecure_channel(target) as channel:
        stub = sandbox_pb2_grpc.SandboxServiceStub(channel)
        call = stub.Execute(pb.ExecuteRequest(tenant_id="acme"))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call:
                pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "an execution needs at least one step"
    details = {
        key: value
        for key, value in caught.value.trailing_metadata()
        if key == "grpc-status-details-bin"
    }
    status = status_pb2.Status.FromString(details["grpc-status-details-bin"])
    info, bad_request = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    assert status.details[0].Unpack(info)
    assert (info.reason, info.domain) == ("INVALID_REQUEST", "sandboxd")
    assert status.details[1].Unpack(bad_request)
    assert [v.field for v in bad_request.field_violations] == ["steps"]


async def test_client_reads_the_standard_error_details(client: SandboxClient) -> None:
    with pytest.raises(SandboxError) as caught:
        await client.run(tenant_id="acme", steps=[Step("bad name", "module.exports = 1")])
    assert caught.value.kind is ErrorKind.INVALID_REQUEST
    assert caught.value.field == "steps[0].name"
    assert caught.value.message.startswith("step 0: name 'bad name' must match")


async def test_usage_counts_each_step_within_the_execution(client: SandboxClient) -> None:
    # Each step spins until Node says it used 100 ms of CPU, and returns what it measured.
    spin = (
        "module.exports = () => { const start = process.cpuUsage(); let used = 0;"
        " while (used < 100000) { const u = process.cpuUsage(start); used = u.user + u.system; }"
        " return used; }"
    )
    events = await collect(client, [Step("a", spin), Step("b", spin)])
    steps = [event.step_finished for event in events if event.HasField("step_finished")]
    finished = events[-1].execution_finished
    assert finished.status == pb.EXECUTION_STATUS_SUCCEEDED
    for step in steps:
        assert step.usage.cpu_time_us >= json.loads(step.json) >= 100_000
        assert 0 < step.usage.peak_memory_bytes <= finished.usage.peak_memory_bytes
    # The execution's CPU holds both steps' (their intervals do not overlap) and its own start.
    assert finished.usage.cpu_time_us >= sum(step.usage.cpu_time_us for step in steps)
    assert finished.usage.duration_us >= sum(step.usage.duration_us for step in steps)
