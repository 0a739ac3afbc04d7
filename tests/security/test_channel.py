"""Catalogue: the channel between runner and daemon. Every byte from the jail is hostile.

Steps write their own frames to the runner's event pipe (fd 4), break the framing, flood it,
forge error kinds, close the pipes, stop reading their work, and exit in every way Node offers.
For each class the daemon must end that execution with the exact kind and message, quickly
(never by running into the step's time limit), send the caller a bounded number of events and
exactly one ExecutionFinished, and then serve the next execution cleanly (checked after every
case below, and on the host after the module).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import pytest

from sandbox_client import ErrorKind, Limits, SandboxClient, SandboxError, Step
from tests.security.conftest import Outcome, execute, js

# The steps below wait this long after their attack: an execution that ends sooner was ended by
# what it sent, not by its time limit (10 s by default).
WAIT_MS = 60_000
# "At once": the daemon ends the step within a second of the offending bytes; the machine is
# shared and loaded, so the tests allow more (the report has the measured figures).
PROMPT_S = 3.0
DEFAULT_LOG_BYTES = 1024 * 1024


def writing(frames: str) -> str:
    """A step that writes `frames` (a JS expression: a Buffer) to fd 4, then waits."""
    return js(
        f"""
        module.exports = async () => {{
          fs.writeSync(4, {frames});
          await sleep({WAIT_MS});
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
LOG = "{ t: 'log', seq: 0, level: 'info', ts: Date.now() }"
CLEAN = js(
    "module.exports = async (ctx) => { console.log('clean', ctx.input.n); return ctx.input; };"
)


@dataclass
class Timed:
    outcome: Outcome
    seconds: float

    @property
    def event_count(self) -> int:
        return len(self.outcome.events)

    @property
    def finished_count(self) -> int:
        return sum(1 for e in self.outcome.events if e.HasField("execution_finished"))


async def run(client: SandboxClient, code: str | list[Step], **kwargs: object) -> Timed:
    began = time.monotonic()
    outcome = await execute(client, code, **kwargs)  # type: ignore[arg-type]
    return Timed(outcome, time.monotonic() - began)


async def serves_cleanly(client: SandboxClient) -> None:
    """The next execution on the daemon runs as if nothing had happened."""
    clean = await execute(client, CLEAN, input={"n": 7})
    assert clean.value == {"n": 7}
    assert [log.text for log in clean.logs] == ["clean 7"]


def ended_promptly(timed: Timed, kind: ErrorKind, message: str) -> None:
    """The exact kind and message, through one ExecutionFinished, long before any time limit."""
    assert timed.outcome.rpc_error is None
    assert (timed.outcome.kind, timed.outcome.message) == (kind, message)
    assert timed.finished_count == 1
    assert timed.seconds < PROMPT_S, f"took {timed.seconds:.2f} s"
    print(f"MEASURED {kind.name} {timed.seconds:.3f}s {timed.event_count} events: {message[:90]}")


# --- malformed frames: protocol violations --------------------------------------------------------

DEEP_LEVEL = "'{\"t\":\"log\",\"seq\":0,\"level\":' + '['.repeat(100000) + ']'.repeat(100000) + '}'"
PADDED_LOG = '\'{"t":"log",\' + \' \'.repeat(4000) + \'"seq":0,"level":"info","ts":1}\''
HUGE_BODY_PREFIX = (
    f"{PREFIX}(Buffer.byteLength(JSON.stringify({LOG})), 0xffffffff),"
    f" Buffer.from(JSON.stringify({LOG}))"
)


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        ("Buffer.from('garbage garbage garbage')", "header of 1734439522 bytes (limit 204160)"),
        (f"{PREFIX}(0x7fffffff, 0)", "header of 2147483647 bytes (limit 204160)"),
        (f"{PREFIX}(0, 0)", "header of 0 bytes (limit 204160)"),
        (f"frame({PADDED_LOG})", "'log' header of 4041 bytes (limit 256)"),
        (
            f"frame({LOG}, 'x'.repeat(2 * 1024 * 1024))",
            "'log' frame: body of 2097152 bytes (limit 1048576)",
        ),
        (
            f"Buffer.concat([{HUGE_BODY_PREFIX}])",
            "'log' frame: body of 4294967295 bytes (limit 1048576)",
        ),
        (
            "frame({ t: 'truncated', seq: 0 }, 'a body where none belongs')",
            "'truncated' frame: body of 25 bytes (limit 0)",
        ),
        (
            "frame({ t: 'result', seq: 0, encoding: 'json', size: 1, kept: true }, '1')",
            "'result' frame: body of 1 bytes (limit 0)",
        ),
        (
            "frame({ t: 'result', seq: 0, encoding: 'json', size: 5, kept: false }, '1')",
            "'result' frame: body of 1 bytes, but the header says size 5",
        ),
        (
            f"frame({DEEP_LEVEL})",
            "header does not fit the protocol: Expected `str`, got `array` - at `$.level`",
        ),
        (
            "frame({ t: 'log', seq: 0, level: 'info', ts: 1e20 }, 'x')",
            "header does not fit the protocol: Expected `int` <= 253402300799999 - at `$.ts`",
        ),
        (
            "frame({ t: 'log', seq: 0, level: 'info', ts: -1e15 }, 'x')",
            "header does not fit the protocol: Expected `int` >= -62135596800000 - at `$.ts`",
        ),
        (
            "frame({ t: 'log', seq: 0, level: 'info', ts: 1, extra: { a: [1] } }, 'x')",
            "header does not fit the protocol: Object contains unknown field `extra`",
        ),
        (
            "frame({ t: 'result', seq: '0', encoding: 'json', size: 1, kept: false }, '1')",
            "header does not fit the protocol: Expected `int`, got `str` - at `$.seq`",
        ),
        (
            "frame({ t: 'log', seq: -1, level: 'info', ts: 1 })",
            "header does not fit the protocol: Expected `int` >= 0 - at `$.seq`",
        ),
        ("frame([1, 2])", "header does not fit the protocol: Expected `object`, got `array`"),
        (
            "frame({ t: 5, seq: 0 })",
            "header does not fit the protocol: Expected `str` - at `$.t`",
        ),
        ("frame('null')", "header does not fit the protocol: Expected `object`, got `null`"),
        (
            "frame({ t: 'exec', seq: 0 })",
            "header does not fit the protocol: Invalid value 'exec' - at `$.t`",
        ),
        (
            "frame('{nope')",
            "header is not JSON: JSON is malformed: object keys must be strings (byte 1)",
        ),
        (
            f"Buffer.concat([{PREFIX}(4, 0), Buffer.from([0x7b, 0xff, 0xfe, 0x7d])])",
            "header is not JSON: JSON is malformed: object keys must be strings (byte 1)",
        ),
        (
            "frame({ t: 'result', seq: 1, encoding: 'json', size: 1, kept: false }, '1')",
            "'result' frame for step 1 while step 0 runs",
        ),
        ("frame({ t: 'ready', node: 'v0' })", "'ready' again, from a runner that was ready"),
    ],
    ids=[
        "garbage",
        "huge-header",
        "empty-header",
        "padded-log-header",
        "log-body-over-log-limit",
        "log-body-of-4-GiB",
        "body-where-none-belongs",
        "kept-result-with-body",
        "result-size-mismatch",
        "nested-json-header",
        "ts-after-year-9999",
        "ts-before-year-1",
        "unknown-nested-field",
        "seq-string",
        "seq-negative",
        "array-header",
        "numeric-type",
        "null-header",
        "daemon-frame-type",
        "not-json",
        "not-utf8",
        "next-step",
        "ready-again",
    ],
)
async def test_malformed_frames_are_protocol_violations(
    client: SandboxClient, frames: str, message: str
) -> None:
    timed = await run(client, writing(frames))
    ended_promptly(timed, ErrorKind.USER_ERROR, f"protocol violation: frame 1: {message}")
    assert timed.event_count == 4  # started, step started, step failed, finished
    await serves_cleanly(client)


async def test_a_result_that_is_not_json_is_a_protocol_violation(client: SandboxClient) -> None:
    forged = "frame({ t: 'result', seq: 0, encoding: 'json', size: 8, kept: false }, 'not json')"
    timed = await run(client, [Step("forge", writing(forged)), Step("next", "module.exports = 2")])
    message = (
        "protocol violation: 'result' frame: body is not JSON:"
        " Expecting value: line 1 column 1 (char 0)"
    )
    ended_promptly(timed, ErrorKind.USER_ERROR, message)
    finished = timed.outcome.finished
    assert finished is not None and (finished.failed_step, finished.steps_completed) == ("forge", 0)
    await serves_cleanly(client)


@pytest.mark.parametrize(
    "code",
    [
        writing(
            "frame({ t: 'result', seq: 0, encoding: 'json', size: 200000, kept: false },"
            " '['.repeat(100000) + ']'.repeat(100000))"
        ),
        "module.exports = async () => {"
        " let v = 1; for (let i = 0; i < 3000; i++) v = [v]; return v; };",
    ],
    ids=["forged", "returned"],
)
async def test_a_deeply_nested_result_is_user_error(client: SandboxClient, code: str) -> None:
    timed = await run(client, code)
    ended_promptly(
        timed, ErrorKind.USER_ERROR, "the step's result is nested too deeply to be checked"
    )
    await serves_cleanly(client)


async def test_a_frame_after_the_steps_result_is_a_protocol_violation(
    client: SandboxClient,
) -> None:
    late = js(
        "module.exports = async () => { setTimeout(() => fs.writeSync(4,"
        " frame({ t: 'log', seq: 0, level: 'info', ts: 1 }, 'late')), 50); return 1; };"
    )
    wait = js(f"module.exports = async () => {{ await sleep({WAIT_MS}); }};")
    timed = await run(client, [Step("first", late), Step("second", wait)])
    ended_promptly(
        timed,
        ErrorKind.USER_ERROR,
        "protocol violation: frame 2: 'log' frame for step 0 while step 1 runs",
    )
    assert timed.outcome.results == [1]
    await serves_cleanly(client)


async def test_a_protocol_violation_ends_a_session(client: SandboxClient) -> None:
    async with client.session(tenant_id="sec-acme") as session:
        with pytest.raises(SandboxError) as violated:
            await session.step("forge", writing("frame({ t: 'bogus', seq: 0 })"))
        assert violated.value.kind is ErrorKind.USER_ERROR
        assert violated.value.message == (
            "protocol violation: frame 1: header does not fit the protocol:"
            " Invalid value 'bogus' - at `$.t`"
        )
        # The runner cannot be trusted after it: the session is over, not just the step.
        with pytest.raises(SandboxError):
            await session.step("after", "module.exports = () => 1")
    await serves_cleanly(client)


async def test_frames_split_across_writes_and_interleaved_with_raw_output(
    client: SandboxClient,
) -> None:
    code = js(r"""
    module.exports = async () => {
      const line = frame({ t: 'log', seq: 0, level: 'warn', ts: 1000 }, 'forged \u2713 line');
      for (let i = 0; i < line.length; i++) {
        fs.writeSync(4, line.subarray(i, i + 1));
        fs.writeSync(1, `raw${i};`);
        await sleep(1);
      }
      await sleep(200);  // raw output and frames travel apart: let the last raw line arrive
      return 'ok';
    };
    """)
    timed = await run(client, code)
    outcome = timed.outcome
    assert outcome.value == "ok"
    forged = [log for log in outcome.logs if log.text == "forged \u2713 line"]
    assert len(forged) == 1
    assert forged[0].time.ToMilliseconds() == 1000
    raw = "".join(log.text for log in outcome.logs if log.text != "forged \u2713 line")
    length = len(raw.split(";")) - 1
    assert raw == "".join(f"raw{i};" for i in range(length))
    assert length == 8 + len('{"t":"log","seq":0,"level":"warn","ts":1000}') + len(
        "forged \u2713 line".encode()
    )
    await serves_cleanly(client)


# --- budgets: floods end OUTPUT_LIMIT, with at most one truncation event --------------------------


@pytest.mark.parametrize(
    ("frame", "logs"),
    [
        ("frame({ t: 'log', seq: 0, level: 'info', ts: 1 })", 100),
        ("frame({ t: 'truncated', seq: 0 })", 0),
    ],
    ids=["empty-log-lines", "truncation-markers"],
)
async def test_a_flood_of_small_frames_is_output_limit(
    client: SandboxClient, frame: str, logs: int
) -> None:
    code = js(
        f"module.exports = async () => {{ const f = {frame}; for (;;) fs.writeSync(4, f); }};"
    )
    timed = await run(client, code, limits=Limits(log_lines=100))
    ended_promptly(timed, ErrorKind.OUTPUT_LIMIT, "step sent more than 416 log lines and frames")
    outcome = timed.outcome
    assert [log.truncated for log in outcome.logs] == [False] * logs + [True]
    assert timed.event_count == 4 + logs + 1
    await serves_cleanly(client)


async def test_a_flood_of_empty_log_lines_at_the_default_limits(client: SandboxClient) -> None:
    code = js(
        "module.exports = async () => {"
        " const f = frame({ t: 'log', seq: 0, level: 'info', ts: 1 });"
        " for (;;) fs.writeSync(4, f); };"
    )
    # A time limit far away: the flood must end by its budget, whatever the machine's load.
    timed = await run(client, code, limits=Limits(timeout_ms=120_000))
    outcome = timed.outcome
    assert (outcome.kind, outcome.message) == (
        ErrorKind.OUTPUT_LIMIT,
        "step sent more than 40016 log lines and frames",
    )
    # The line limit (10,000) bounds what reaches the caller; then one truncation marker.
    assert [log.truncated for log in outcome.logs] == [False] * 10_000 + [True]
    assert timed.event_count == 10_005
    print(f"MEASURED OUTPUT_LIMIT {timed.seconds:.3f}s {timed.event_count} events: default limits")
    await serves_cleanly(client)


async def test_forged_log_frames_are_bounded_like_real_ones(client: SandboxClient) -> None:
    code = js(r"""
    module.exports = async () => {
      const line = frame({ t: 'log', seq: 0, level: 'error', ts: 1 }, 'x'.repeat(16 << 10));
      for (;;) {
        try { fs.writeSync(4, line); } catch (e) { blockFor(1); }
      }
    };
    """)
    limit = 64 * 1024
    timed = await run(client, code, limits=Limits(log_bytes=limit))
    ended_promptly(timed, ErrorKind.OUTPUT_LIMIT, f"step wrote more than {limit} bytes of logs")
    lines = [log for log in timed.outcome.logs if not log.truncated]
    assert [len(log.text) for log in lines] == [16 << 10] * 4
    assert [log.truncated for log in timed.outcome.logs].count(True) == 1
    await serves_cleanly(client)


async def test_raw_output_is_bounded_like_logs(client: SandboxClient) -> None:
    code = js(r"""
    module.exports = async () => {
      const chunk = Buffer.alloc(65536, 120);
      for (;;) {
        try { fs.writeSync(1, chunk); } catch (e) { blockFor(1); }
      }
    };
    """)
    limit = 64 * 1024
    timed = await run(client, code, limits=Limits(log_bytes=limit))
    ended_promptly(timed, ErrorKind.OUTPUT_LIMIT, f"step wrote more than {limit} bytes of logs")
    lines = [log for log in timed.outcome.logs if not log.truncated]
    assert sum(len(log.text) for log in lines) <= limit
    assert [log.truncated for log in timed.outcome.logs].count(True) == 1
    await serves_cleanly(client)


async def test_a_real_log_flood_is_stopped_by_the_runner(client: SandboxClient) -> None:
    code = "module.exports = async () => { for (;;) console.log('y'.repeat(1000)); };"
    limit = 64 * 1024
    timed = await run(client, code, limits=Limits(log_bytes=limit))
    ended_promptly(
        timed, ErrorKind.OUTPUT_LIMIT, f"the step kept logging past its limit of {limit} bytes"
    )
    assert sum(len(log.text) for log in timed.outcome.logs if not log.truncated) == limit
    assert [log.truncated for log in timed.outcome.logs].count(True) == 1
    await serves_cleanly(client)


# --- kinds a step cannot forge --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("forged", "message"),
    [
        (
            "{ t: 'error', seq: 0, kind: 'POLICY_DENIED', name: '', message: 'x', stack: '' }",
            "protocol violation: frame 1: header does not fit the protocol:"
            " Invalid enum value 'POLICY_DENIED' - at `$.kind`",
        ),
        (
            "{ t: 'error', seq: 0, kind: 'INTERNAL', name: '', message: 'x', stack: '' }",
            "protocol violation: frame 1: header does not fit the protocol:"
            " Invalid enum value 'INTERNAL' - at `$.kind`",
        ),
        (
            "{ t: 'error', seq: 0, kind: 'USER_ERROR', name: 'E', message: { toString: 1 },"
            " stack: '' }",
            "protocol violation: frame 1: header does not fit the protocol:"
            " Expected `str`, got `object` - at `$.message`",
        ),
        (
            "{ t: 'error', seq: 0, kind: 'USER_ERROR', name: 'Error', message: 'no fds',"
            " stack: '', code: 'EMFILE' }",
            "Error: no fds",
        ),
        (
            "{ t: 'error', seq: 0, kind: 'USER_ERROR', name: 'Error', message: 'no space',"
            " stack: '', code: 'ENOSPC' }",
            "Error: no space",
        ),
    ],
    ids=["policy-denied", "internal", "object-message", "emfile-without-evidence", "enospc"],
)
async def test_a_runner_can_claim_only_its_own_error_kinds(
    client: SandboxClient, forged: str, message: str
) -> None:
    timed = await run(client, writing(f"frame({forged})"))
    ended_promptly(timed, ErrorKind.USER_ERROR, message)
    await serves_cleanly(client)


V8_OOM = "FATAL ERROR: Reached heap limit Allocation failed - JavaScript heap out of memory"


@pytest.mark.parametrize(
    ("code", "kind", "message"),
    [
        (
            js(
                f"module.exports = async () => {{ fs.writeSync(2, '{V8_OOM}\\n');"
                " process.reallyExit(134); };"
            ),
            ErrorKind.USER_ERROR,
            "the step ended the runner (exit code 134)",
        ),
        (
            "module.exports = async () => { process.exit(0); };",
            ErrorKind.USER_ERROR,
            "the step ended the runner (exit code 0)",
        ),
        (
            "module.exports = async () => { process.exitCode = 3; process.exit(); };",
            ErrorKind.USER_ERROR,
            "the step ended the runner (exit code 3)",
        ),
        (
            "module.exports = async () => { process.reallyExit(7); };",
            ErrorKind.USER_ERROR,
            "the step ended the runner (exit code 7)",
        ),
        (
            exiting("frame({ t: 'result', seq: 0 }).subarray(0, 12)"),
            ErrorKind.USER_ERROR,
            "the step ended the runner (exit code 9)",
        ),
        (
            exiting("Buffer.from([0, 0])"),
            ErrorKind.USER_ERROR,
            "the step ended the runner (exit code 9)",
        ),
        (
            "module.exports = async () => { process.abort(); };",
            ErrorKind.CRASHED,
            "the runner died (killed by SIGSEGV)",
        ),
    ],
    ids=["v8-oom-text", "exit0", "exitCode", "reallyExit", "cut-frame", "cut-prefix", "abort"],
)
async def test_ending_the_runner_is_the_steps_own_doing(
    client: SandboxClient, code: str, kind: ErrorKind, message: str
) -> None:
    timed = await run(client, code)
    ended_promptly(timed, kind, message)
    await serves_cleanly(client)


# --- the pipes themselves -------------------------------------------------------------------------


async def test_closing_the_work_pipe_ends_the_execution_with_events(client: SandboxClient) -> None:
    steps = [
        Step("first", js("module.exports = async () => { fs.closeSync(3); return 1; };")),
        Step("second", "module.exports = async () => 2"),
    ]
    timed = await run(client, steps)
    assert timed.outcome.rpc_error is None
    assert timed.finished_count == 1
    finished = timed.outcome.finished
    assert finished is not None and finished.failed_step == "second"
    # Node notices its closed pipe and exits, or lives on without its work: either is the step's.
    assert timed.outcome.kind is ErrorKind.USER_ERROR
    assert timed.outcome.message in (
        "the step closed the runner's work pipe",
        "the step ended the runner (exit code 70)",
    )
    await serves_cleanly(client)


async def test_replacing_the_event_pipe_is_the_steps_doing(client: SandboxClient) -> None:
    code = js("""
    module.exports = async () => {
      fs.closeSync(4);
      const fd = fs.openSync('/dev/null', 'w');  // takes number 4: the "dup2" of a step
      await sleep(60000);
    };
    """)
    timed = await run(client, code)
    ended_promptly(
        timed, ErrorKind.USER_ERROR, "the step closed or replaced the runner's event pipe"
    )
    await serves_cleanly(client)


async def test_a_runner_that_stops_reading_its_work_stalls_only_itself(
    client: SandboxClient,
) -> None:
    # After its result the step blocks the runner's event loop: it reads no more work. The next
    # step's input (4 MiB) does not fit the work pipe, so the daemon's write cannot finish.
    blocker = js(
        "module.exports = async () => { setTimeout(() => blockFor(60000), 10); return 1; };"
    )
    normal = "module.exports = async (ctx) => ctx.input.n * 2"
    async with client.session(tenant_id="sec-acme") as session:
        assert await session.step("block", blocker) == 1
        began = time.monotonic()
        stalled = asyncio.create_task(
            session.step(
                "next", normal, {"n": 1, "pad": "z" * (4 << 20)}, limits=Limits(timeout_ms=1000)
            )
        )
        others = await asyncio.gather(
            *(execute(client, normal, input={"n": n}, tenant=f"sec-tenant-{n}") for n in range(3))
        )
        assert [other.value for other in others] == [0, 2, 4]
        with pytest.raises(SandboxError) as late:
            await stalled
        seconds = time.monotonic() - began
    assert (late.value.kind, late.value.message) == (
        ErrorKind.TIMEOUT,
        "step 'next' ran past its time limit of 1000 ms",
    )
    assert seconds < 1 + PROMPT_S
    print(f"MEASURED TIMEOUT {seconds:.3f}s: a runner that stopped reading its work")
    await serves_cleanly(client)


# --- the runner's own behaviour under hostile steps -----------------------------------------------


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
    assert attacked.kind is ErrorKind.USER_ERROR
    assert [other.value for other in others] == [{"n": 0}, {"n": 1}, {"n": 2}]
