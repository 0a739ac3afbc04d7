"""Catalogue: the channel between runner and daemon. Every byte from the jail is hostile.

Steps write straight to the runner's event pipe (fd 4) and its work pipe (fd 3), forge frames,
break the framing, replace the builtins the runner uses, and exit in every way Node offers. The
daemon must end that execution with a clear error, attribute nothing to another step, and keep
serving everyone else (checked after the module, and concurrently below).
"""

from __future__ import annotations

import asyncio
import json

import pytest

from sandbox_client import ErrorKind, Limits, SandboxClient, Step
from tests.security.conftest import execute, js


def writing(frames: str) -> str:
    """A step that writes `frames` (a JS expression: a Buffer) to fd 4, then waits."""
    return js(
        f"""
        module.exports = async () => {{
          fs.writeSync(4, {frames});
          await sleep(2000);
          return 'not reached';
        }};
        """
    )


def exiting(frames: str) -> str:
    """A step that writes `frames` to fd 4 and exits at once, leaving them unfinished."""
    return js(
        f"module.exports = async () => {{ fs.writeSync(4, {frames}); process.reallyExit(9); }};"
    )


PREFIX = (
    "((h, b) => { const p = Buffer.alloc(8);"
    " p.writeUInt32BE(h, 0); p.writeUInt32BE(b, 4); return p; })"
)


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (
            writing("Buffer.from('garbage garbage garbage')"),
            "frame header of 1734439522 bytes (limit 262144)",
        ),
        (writing(f"{PREFIX}(0x7fffffff, 0)"), "frame header of 2147483647 bytes (limit 262144)"),
        (writing(f"{PREFIX}(0, 0)"), "frame header of 0 bytes (limit 262144)"),
        (writing(f"{PREFIX}(10, 0xffffffff)"), "frame body of 4294967295 bytes (limit 67108864)"),
        (writing("frame([1, 2])"), "frame header is not an object with a string 't'"),
        (writing("frame({ t: 5, seq: 0 })"), "frame header is not an object with a string 't'"),
        (writing("frame('null')"), "frame header is not an object with a string 't'"),
        (
            writing("frame('{nope')"),
            "frame header is not UTF-8 JSON: Expecting property name enclosed in double quotes:"
            " line 1 column 2 (char 1)",
        ),
        (
            writing(
                "Buffer.concat([(" + PREFIX + ")(4, 0), Buffer.from([0x7b, 0xff, 0xfe, 0x7d])])"
            ),
            "frame header is not UTF-8 JSON: 'utf-8' codec can't decode byte 0xff in position 1:"
            " invalid start byte",
        ),
        (exiting("Buffer.from([0, 0])"), "stream ended inside a frame prefix"),
        (exiting("frame({ t: 'result', seq: 0 }).subarray(0, 12)"), "stream ended inside a frame"),
    ],
    ids=[
        "garbage",
        "huge-header",
        "empty-header",
        "huge-body",
        "array-header",
        "numeric-type",
        "null-header",
        "not-json",
        "not-utf8",
        "cut-prefix",
        "cut-frame",
    ],
)
async def test_malformed_frames_end_the_execution_with_a_clear_error(
    client: SandboxClient, code: str, message: str
) -> None:
    outcome = await execute(client, code)
    assert outcome.kind is ErrorKind.CRASHED
    assert outcome.message == f"the runner broke the channel protocol: {message}"


@pytest.mark.parametrize(
    ("forged", "message"),
    [
        (
            "{ t: 'result', seq: 1, encoding: 'json', size: 1 }",
            "runner sent a 'result' frame out of order",
        ),
        (
            "{ t: 'result', seq: '0', encoding: 'json', size: 1 }",
            "runner sent a 'result' frame out of order",
        ),
        ("{ t: 'log', seq: -1, level: 'info' }", "runner sent a 'log' frame out of order"),
        ("{ t: 'ready', node: 'v0' }", "runner sent a 'ready' frame out of order"),
        ("{ t: 'bogus', seq: 0 }", "the runner sent an unexpected 'bogus' frame"),
        ("{ t: 'step', seq: 0, name: 'again' }", "the runner sent an unexpected 'step' frame"),
        ("{ t: 'exec', seq: 0 }", "the runner sent an unexpected 'exec' frame"),
    ],
    ids=["next-step", "seq-string", "seq-negative", "ready", "unknown", "step", "exec"],
)
async def test_frames_out_of_order_or_of_unknown_type_are_refused(
    client: SandboxClient, forged: str, message: str
) -> None:
    outcome = await execute(client, writing(f"frame({forged}, '1')"))
    assert outcome.kind is ErrorKind.CRASHED
    assert outcome.message == message


async def test_a_forged_frame_for_the_next_step_is_attributed_to_no_step(
    client: SandboxClient,
) -> None:
    steps = [
        Step(
            "first",
            writing("frame({ t: 'result', seq: 1, encoding: 'json', size: 7 }, '\"forged\"')"),
        ),
        Step("second", "module.exports = async () => 'second ran'"),
    ]
    outcome = await execute(client, steps)
    assert outcome.kind is ErrorKind.CRASHED
    started = [e.step_started.step for e in outcome.events if e.HasField("step_started")]
    finished = [e.step_finished.step for e in outcome.events if e.HasField("step_finished")]
    assert (started, finished) == (["first"], [])
    assert outcome.finished is not None and outcome.finished.failed_step == "first"


@pytest.mark.parametrize(
    ("forged", "message"),
    [
        ("{ t: 'error', seq: 0, kind: 'POLICY_DENIED', message: 'forged' }", "forged"),
        (
            "{ t: 'error', seq: 0, kind: 'INTERNAL', name: 'Daemon', message: 'down' }",
            "Daemon: down",
        ),
        ("{ t: 'error', seq: 0, kind: 'NOPE', message: 'm' }", "m"),
        (
            "{ t: 'error', seq: 0, kind: 'QUOTA_EXCEEDED', message: { toString: 1 } }",
            "{'toString': 1}",
        ),
    ],
    ids=["policy-denied", "internal", "unknown-kind", "object-message"],
)
async def test_a_runner_can_claim_only_its_own_error_kinds(
    client: SandboxClient, forged: str, message: str
) -> None:
    outcome = await execute(client, writing(f"frame({forged})"))
    assert (outcome.kind, outcome.message) == (ErrorKind.USER_ERROR, message)


async def test_forged_log_frames_are_bounded_like_real_ones(client: SandboxClient) -> None:
    code = js(r"""
    module.exports = async () => {
      const header = { t: 'log', seq: 0, level: 'error', ts: 'not a time' };
      const line = frame(header, 'x'.repeat(16 << 10));
      for (;;) {
        try { fs.writeSync(4, line); } catch (e) { blockFor(1); }
      }
    };
    """)
    limit = 64 * 1024
    outcome = await execute(client, code, limits=Limits(log_bytes=limit))
    assert outcome.kind is ErrorKind.OUTPUT_LIMIT
    assert outcome.message == f"step wrote more than {limit} bytes of logs"
    lines = [log for log in outcome.logs if not log.truncated]
    assert sum(len(log.text) for log in lines) <= limit
    assert [log.truncated for log in outcome.logs].count(True) == 1


async def test_a_forged_log_with_odd_fields_is_a_plain_log_line(client: SandboxClient) -> None:
    code = js(r"""
    module.exports = async () => {
      fs.writeSync(4, frame({ t: 'log', seq: 0, level: { a: 1 }, ts: -5 }, 'hello'));
      fs.writeSync(4, frame({ t: 'truncated', seq: 0 }));
      return 'ok';
    };
    """)
    outcome = await execute(client, code)
    assert outcome.value == "ok"
    assert [(log.text, log.truncated) for log in outcome.logs] == [
        ("hello", False),
        ("[log truncated: the step's limit of 1048576 bytes was reached]", True),
    ]


@pytest.mark.parametrize(
    "forged",
    [
        "frame({ t: 'result', seq: 0, encoding: 'json', size: 'abc' }, '1')",
        "frame({ t: 'result', seq: 0, encoding: 'json', size: 1e300 }, '1')",
        "frame({ t: 'result', seq: 0, encoding: 'json', size: -5 }, '1')",
        "frame({ t: 'result', seq: 0, encoding: 'json', size: 8 }, 'not json')",
        "frame({ t: 'result', seq: 0, encoding: 'weird', size: 3 }, 'abc')",
    ],
    ids=["size-text", "size-huge", "size-negative", "body-not-json", "unknown-encoding"],
)
async def test_forged_results_are_validated(client: SandboxClient, forged: str) -> None:
    outcome = await execute(
        client, [Step("forge", writing(forged)), Step("next", "module.exports = () => 2")]
    )
    # The execution ends through its events, never through an aborted RPC...
    assert outcome.rpc_error is None
    assert outcome.finished is not None
    # ...and what reaches the caller as a JSON result is JSON, with its true size.
    for event in outcome.events:
        if event.HasField("step_finished") and event.step_finished.WhichOneof("result") == "json":
            json.loads(event.step_finished.json)
            assert event.step_finished.result_bytes == len(event.step_finished.json)


async def test_closing_the_work_pipe_ends_the_execution_with_events(client: SandboxClient) -> None:
    steps = [
        Step("first", js("module.exports = async () => { fs.closeSync(3); return 1; };")),
        Step("second", "module.exports = async () => 2"),
    ]
    outcome = await execute(client, steps)
    assert outcome.rpc_error is None
    assert outcome.kind is ErrorKind.CRASHED
    assert outcome.finished is not None and outcome.finished.failed_step == "second"


async def test_replacing_the_event_pipe_with_dev_null_is_crashed(client: SandboxClient) -> None:
    code = js("""
    module.exports = async () => {
      fs.closeSync(4);
      const fd = fs.openSync('/dev/null', 'w');  // takes number 4: the "dup2" of a step
      return fd;
    };
    """)
    outcome = await execute(client, code)
    # The daemon sees its event pipe end at the close, and ends the step there.
    assert outcome.kind is ErrorKind.CRASHED
    assert outcome.message.startswith("the runner died (")


async def test_the_exit_status_of_a_runner_that_exits_is_reported(client: SandboxClient) -> None:
    code = js("""
    module.exports = async () => {
      fs.closeSync(4);  // the daemon sees the end of the event pipe now...
      const until = Date.now() + 300;
      while (Date.now() < until) {}
      process.reallyExit(3);  // ...and the runner's own exit a moment later
    };
    """)
    outcome = await execute(client, code)
    assert (outcome.kind, outcome.message) == (ErrorKind.CRASHED, "the runner died (exit code 3)")


@pytest.mark.parametrize(
    "code",
    [
        "module.exports = async () => { process.exit(0); };",
        "module.exports = async () => { process.exitCode = 0; process.exit(); };",
        "module.exports = async () => { process.reallyExit(0); };",
        "module.exports = async () => { process.abort(); };",
    ],
    ids=["exit0", "exitCode", "reallyExit", "abort"],
)
async def test_a_runner_that_exits_or_aborts_is_crashed(client: SandboxClient, code: str) -> None:
    outcome = await execute(client, code)
    assert outcome.kind is ErrorKind.CRASHED
    # The exact status is racy today: see test_the_exit_status_of_a_runner_that_exits_is_reported.
    assert outcome.message.startswith("the runner died (")


@pytest.mark.parametrize(
    ("thrown", "message"),
    [
        ("null", "Error: Step threw a non-Error value: null"),
        ("42", "Error: Step threw a non-Error value: 42"),
        ("undefined", "Error: Step threw a non-Error value: undefined"),
        ("'plain string'", "Error: plain string"),
        ("Symbol('s')", "Error: Step threw a non-Error value: Symbol(s)"),
        (
            "{ toString() { throw new Error('nope'); } }",
            "Error: Step threw a non-Error value: { toString: [Function: toString] }",
        ),
        (
            "new Proxy({}, { get() { throw new Error('trap'); }, getPrototypeOf() { throw 1; } })",
            "Error: Step threw a non-Error value: {}",
        ),
    ],
    ids=["null", "number", "undefined", "string", "symbol", "toString-throws", "proxy"],
)
async def test_throwing_non_errors_is_user_error_with_a_readable_message(
    client: SandboxClient, thrown: str, message: str
) -> None:
    outcome = await execute(client, f"module.exports = async () => {{ throw {thrown}; }};")
    assert (outcome.kind, outcome.message) == (ErrorKind.USER_ERROR, message)


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (
            "module.exports = () => new Promise(() => {"
            " setTimeout(() => { throw new TypeError('in a timer'); }, 10); });",
            "TypeError: in a timer",
        ),
        (
            "module.exports = () => new Promise(() => {"
            " Promise.reject(new RangeError('nobody')); });",
            "RangeError: nobody",
        ),
    ],
    ids=["timer", "unhandled-rejection"],
)
async def test_errors_escaping_the_promise_chain_fail_the_step(
    client: SandboxClient, code: str, message: str
) -> None:
    outcome = await execute(client, code)
    assert (outcome.kind, outcome.message) == (ErrorKind.USER_ERROR, message)


SABOTEUR = js(r"""
module.exports = async () => {
  const boom = () => { throw new Error('sabotaged'); };
  console.log('logged before');
  JSON.stringify = () => '"forged"';
  JSON.parse = boom;
  Object.prototype.toJSON = () => 'forged';
  Array.prototype.toJSON = () => 'forged';
  for (const name of ['map', 'forEach', 'join', 'push', 'slice', 'concat', 'indexOf', 'filter'])
    Array.prototype[name] = boom;
  for (const name of ['slice', 'indexOf', 'includes', 'replace', 'charCodeAt', 'startsWith'])
    String.prototype[name] = boom;
  // Not Function.prototype.call: node's own net.Socket (the runner reads fd 3 with one) calls
  // it, and the step then fails USER_ERROR with its own error: its own process, its own fault.
  Function.prototype.apply = boom;
  Function.prototype.bind = boom;
  TextEncoder.prototype.encode = () => new Uint8Array(0);
  Buffer.prototype.toString = boom;
  Buffer.prototype.write = boom;
  Uint8Array.prototype.set = boom;
  Object.defineProperty(Object.prototype, 't', { set: boom, get: () => 'log', configurable: true });
  Object.defineProperty(Object.prototype, 'seq', { set: boom, get: () => 99, configurable: true });
  Object.keys = boom;
  Reflect.apply = boom;
  Reflect.defineProperty = boom;
  Promise.prototype.then = boom;
  Promise.resolve = boom;
  fs.writeSync = () => 0;
  console.log('logged after');
  return { list: [1, 'two', { three: 3 }], text: '\u00e9\u2713' };
};
""")


async def test_replaced_builtins_do_not_change_what_the_runner_sends(
    client: SandboxClient,
) -> None:
    outcome = await execute(client, SABOTEUR)
    assert outcome.value == {"list": [1, "two", {"three": 3}], "text": "\u00e9\u2713"}
    assert [log.text for log in outcome.logs] == ["logged before", "logged after"]


async def test_a_protocol_attack_does_not_disturb_a_concurrent_execution(
    client: SandboxClient,
) -> None:
    attack = writing("Buffer.from('garbage garbage garbage')")
    normal = js("module.exports = async (ctx) => { await sleep(300); return ctx.input; };")
    attacked, *others = await asyncio.gather(
        execute(client, attack),
        *(execute(client, normal, input={"n": n}, tenant=f"sec-tenant-{n}") for n in range(3)),
    )
    assert attacked.kind is ErrorKind.CRASHED
    assert [other.value for other in others] == [{"n": 0}, {"n": 1}, {"n": 2}]
