"""The real runner (images/node/runner.js) on the real `node`, spoken to over real pipes.

No jail here: node is spawned with fd 3 (work) and fd 4 (events) as pipes and an empty
environment, and every test checks the exact frames of docs/channel.md that come back.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sandboxd.jail.net import set_up_jail_network

ROOT = Path(__file__).resolve().parents[2]
RUNNER = ROOT / "images" / "node" / "runner.js"
BUILD_ROOTFS = ROOT / "images" / "node" / "build-rootfs.sh"
NODE = shutil.which("node")
MAX_BODY = 64 * 1024 * 1024
TIMEOUT = 10.0

EXEC = {
    "t": "exec",
    "id": "ex-1",
    "tenant": "acme",
    "attempt": 2,
    "configVars": {"region": "eu"},
    "credentials": {"apiKey": "k-123"},
}


PREFIX = struct.Struct(">II")  # header_len | body_len, as docs/channel.md says


@dataclass(frozen=True)
class Frame:
    """A frame as docs/channel.md defines it; decoded here, apart from the daemon's own code."""

    header: dict[str, Any]
    body: bytes = b""

    @property
    def type(self) -> str:
        return str(self.header["t"])


def encode(header: dict[str, Any], body: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return PREFIX.pack(len(raw), len(body)) + raw + body


def _high(fd: int) -> int:
    """A close-on-exec duplicate of fd numbered 10 or more, so dup2 onto 0..4 cannot clobber it."""
    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)


class Runner:
    """node runner.js with fd 3 and fd 4 on pipes; frames are written and read synchronously."""

    def __init__(self, argv: list[str] | None = None) -> None:
        assert NODE is not None, "node is not on PATH: these tests run the real runner"
        argv = argv or [NODE, str(RUNNER)]
        work_read, self.work = os.pipe()
        self.events, events_write = os.pipe()
        # The runner's raw stdout and stderr, in an unlinked temporary file.
        self.output, path = tempfile.mkstemp(prefix="runner-output-")
        os.unlink(path)
        child_work, child_events, child_output = (
            _high(work_read),
            _high(events_write),
            _high(self.output),
        )
        for fd in (work_read, events_write):
            os.close(fd)
        try:
            self.pid = os.posix_spawn(
                argv[0],
                argv,
                {"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, child_output, 1),
                    (os.POSIX_SPAWN_DUP2, child_output, 2),
                    (os.POSIX_SPAWN_DUP2, child_work, 3),
                    (os.POSIX_SPAWN_DUP2, child_events, 4),
                ],
            )
        finally:
            for fd in (child_work, child_events, child_output):
                os.close(fd)
        self.returncode: int | None = None

    # -- frames -------------------------------------------------------------------------------

    def send(self, header: dict[str, Any], body: bytes = b"") -> None:
        self.send_bytes(encode(header, body))

    def send_bytes(self, data: bytes) -> None:
        while data:
            data = data[os.write(self.work, data) :]

    def _read_exact(self, size: int, deadline: float) -> bytes:
        buf = bytearray()
        while len(buf) < size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no frame from the runner; its output: {self.raw_output()!r}")
            if not select.select([self.events], [], [], remaining)[0]:
                continue
            chunk = os.read(self.events, size - len(buf))
            if not chunk:
                break
            buf += chunk
        return bytes(buf)

    def read(self) -> Frame | None:
        """The next frame, or None at the end of fd 4."""
        deadline = time.monotonic() + TIMEOUT
        prefix = self._read_exact(PREFIX.size, deadline)
        if not prefix:
            return None
        assert len(prefix) == PREFIX.size, "stream ended inside a frame prefix"
        header_len, body_len = PREFIX.unpack(prefix)
        assert body_len <= MAX_BODY, f"a body of {body_len} bytes"
        header = json.loads(self._read_exact(header_len, deadline))
        assert isinstance(header, dict) and isinstance(header.get("t"), str), header
        body = self._read_exact(body_len, deadline)
        assert len(body) == body_len, "stream ended inside a frame"
        return Frame(header, body)

    def step(
        self,
        seq: int,
        name: str,
        code: str,
        *,
        return_result: bool = True,
        log_bytes: int = 1 << 20,
        result_bytes: int = 1 << 20,
    ) -> None:
        header = {
            "t": "step",
            "seq": seq,
            "name": name,
            "returnResult": return_result,
            "logBytes": log_bytes,
            "resultBytes": result_bytes,
        }
        self.send(header, code.encode())

    def outcome(self) -> tuple[list[Frame], Frame]:
        """Frames up to and including the step's `result` or `error`."""
        before: list[Frame] = []
        while True:
            frame = self.read()
            assert frame is not None, f"fd 4 ended; runner output: {self.raw_output()!r}"
            if frame.type in ("result", "error"):
                return before, frame
            before.append(frame)

    def run(self, seq: int, name: str, code: str, **limits: Any) -> tuple[list[Frame], Frame]:
        self.step(seq, name, code, **limits)
        return self.outcome()

    # -- process ------------------------------------------------------------------------------

    def wait(self) -> int:
        deadline = time.monotonic() + TIMEOUT
        while self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
            elif time.monotonic() > deadline:
                raise TimeoutError("the runner did not exit")
            else:
                time.sleep(0.005)
        return self.returncode

    def raw_output(self) -> bytes:
        return os.pread(self.output, 1 << 20, 0)

    def close_work(self) -> None:
        """EOF on the runner's fd 3."""
        os.close(self.work)
        self.work = -1

    def close(self) -> None:
        if self.returncode is None:
            os.kill(self.pid, signal.SIGKILL)
            self.wait()
        for fd in (self.work, self.events, self.output):
            if fd >= 0:
                os.close(fd)


@pytest.fixture
def started() -> Iterator[Runner]:
    """A runner that has not said anything yet."""
    runner = Runner()
    try:
        yield runner
    finally:
        runner.close()


@pytest.fixture
def runner(started: Runner) -> Runner:
    """A runner past `ready` that has received EXEC with input {"n": 5}."""
    ready = started.read()
    assert ready is not None and ready.type == "ready"
    started.send(EXEC, b'{"n": 5}')
    return started


def js(value: Frame) -> Any:
    assert value.header["encoding"] == "json"
    return json.loads(value.body)


def assert_result(frame: Frame, seq: int, body: bytes, encoding: str = "json") -> None:
    expected = {
        "t": "result",
        "seq": seq,
        "encoding": encoding,
        "size": len(body),
        "kept": False,
    }
    assert frame.header == expected
    assert frame.body == body


def assert_user_error(frame: Frame, seq: int, name: str, message: str) -> None:
    assert frame.header["t"] == "error"
    assert frame.header["seq"] == seq
    assert frame.header["kind"] == "USER_ERROR"
    assert frame.header["name"] == name
    assert frame.header["message"] == message
    assert frame.body == b""


def logs(frames: list[Frame]) -> list[tuple[str, str]]:
    assert all(f.type == "log" for f in frames), [f.header for f in frames]
    return [(f.header["level"], f.body.decode()) for f in frames]


# ---------------------------------------------------------------------------------------------
# Start and end
# ---------------------------------------------------------------------------------------------


def test_ready_names_the_node_version(started: Runner) -> None:
    version = subprocess.run([NODE or "node", "--version"], capture_output=True, check=True)
    ready = started.read()
    assert ready == Frame({"t": "ready", "node": version.stdout.decode().strip()}, b"")


def test_frames_sent_before_ready_find_the_runner_whole(started: Runner) -> None:
    # The runner loads its console, streams and egress connector after `ready`; frames already
    # waiting on fd 3 when it starts must still meet all of them.
    started.send(EXEC, b'{"n": 5}')
    started.step(
        0,
        "early",
        """module.exports = () => {
          console.log('via console');
          process.stdout.write('via stdout\\n');
          setTimeout(() => { throw new Error('from a timer'); }, 0);
          return new Promise(() => {});
        };""",
    )
    started.step(
        1,
        "wiring",
        """module.exports = () => ({
          http: require('http').Agent.prototype.createConnection.name,
          https: require('https').Agent.prototype.createConnection.name,
          globalHttps: require('https').globalAgent.createConnection.name,
          fetch: fetch.name,
        });""",
    )
    ready = started.read()
    assert ready is not None and ready.type == "ready"
    before, outcome = started.outcome()
    assert logs(before) == [("info", "via console"), ("info", "via stdout")]
    assert_user_error(outcome, 0, "Error", "from a timer")
    wiring = js(started.outcome()[1])
    assert wiring == {
        "http": "createHttpConnection",
        "https": "createHttpsConnection",
        "globalHttps": "createHttpsConnection",
        "fetch": "fetch",
    }


def test_end_exits_zero_after_the_steps_sent_before_it(runner: Runner) -> None:
    # Sent back to back: `end` waits for the step, which itself waits on a timer.
    runner.step(0, "slow", "module.exports = () => new Promise(r => setTimeout(() => r(1), 50))")
    runner.send({"t": "end"})
    assert_result(runner.outcome()[1], 0, b"1")
    assert runner.read() is None
    assert runner.wait() == 0
    assert runner.raw_output() == b""


def test_eof_on_fd_3_exits_zero(runner: Runner) -> None:
    runner.close_work()
    assert runner.read() is None
    assert runner.wait() == 0


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


def test_json_result_with_input_and_builtin_require(runner: Runner) -> None:
    code = """
    const crypto = require('crypto');
    module.exports = async (context) => ({
      doubled: context.input.n * 2,
      list: [true, null, 'é'],
      md5: crypto.createHash('md5').update('x').digest('hex'),
    });
    """
    before, result = runner.run(0, "calc", code)
    assert before == []
    body = '{"doubled":10,"list":[true,null,"é"],"md5":"9dd4e461268c8034f5c8564e155c67a6"}'
    assert_result(result, 0, body.encode())


def test_later_step_sees_the_same_object_in_context_steps(runner: Runner) -> None:
    first = "module.exports = async () => { globalThis.__keep = {n: 1}; return globalThis.__keep; }"
    assert_result(runner.run(0, "a", first)[1], 0, b'{"n":1}')
    second = """
    module.exports = async (context) =>
      [context.steps.a === globalThis.__keep, context.steps.a.n, Object.keys(context.steps)];
    """
    assert_result(runner.run(1, "b", second)[1], 1, b'[true,1,["a"]]')


def test_esm_default_export_with_imports_and_top_level_await(runner: Runner) -> None:
    code = """
    import { join } from 'node:path';
    import fs from 'fs';
    const base = await Promise.resolve('steps');
    export default async (context) => [join(base, String(context.input.n)), typeof fs.readFileSync];
    """
    before, result = runner.run(0, "esm", code)
    assert before == []
    assert_result(result, 0, b'["steps/5","function"]')


def test_esm_steps_with_the_same_code_get_their_own_module(runner: Runner) -> None:
    code = "let calls = 0; export default () => ++calls;"
    assert_result(runner.run(0, "one", code)[1], 0, b"1")
    assert_result(runner.run(1, "two", code)[1], 1, b"1")


def test_binary_results_buffer_and_uint8array_view(runner: Runner) -> None:
    buffer = "module.exports = () => Buffer.from([0, 1, 2, 255])"
    assert_result(runner.run(0, "buf", buffer)[1], 0, b"\x00\x01\x02\xff", "binary")
    view = "module.exports = () => new Uint8Array([9, 8, 7, 6]).subarray(1, 3)"
    assert_result(runner.run(1, "view", view)[1], 1, b"\x08\x07", "binary")


def test_large_input_code_and_results(started: Runner) -> None:
    assert started.read() is not None
    started.send(EXEC, json.dumps({"text": "é" * 300_000}).encode())
    padding = "// " + "p" * 500_000 + "\n"
    code = padding + "module.exports = (c) => c.input.text.toUpperCase()"
    _, result = started.run(0, "upper", code, result_bytes=1 << 21)
    assert_result(result, 0, json.dumps("É" * 300_000, ensure_ascii=False).encode())
    blob = "module.exports = () => Buffer.alloc(200000, 7)"
    assert_result(started.run(1, "blob", blob)[1], 1, b"\x07" * 200_000, "binary")
    chatty = "module.exports = () => { for (let i = 0; i < 5000; i++) console.log(i); return 1; }"
    before, result = started.run(2, "chatty", chatty)
    assert [f.body for f in before] == [str(i).encode() for i in range(5000)]
    assert_result(result, 2, b"1")


def test_a_large_frame_that_arrives_in_pieces_is_read_whole(started: Runner) -> None:
    """The runner sizes its buffer from a frame's prefix: a prefix split across reads, and a
    large frame that begins after a small one in the same read, still give whole frames."""
    assert started.read() is not None
    text = "".join(chr(0x61 + i % 26) for i in range(3 << 20))
    exec_frame = encode(EXEC, json.dumps({"text": text}).encode())
    pieces = [exec_frame[:3], exec_frame[3:5000]]
    pieces += [exec_frame[at : at + (256 << 10)] for at in range(5000, len(exec_frame), 256 << 10)]
    for piece in pieces:
        started.send_bytes(piece)
        time.sleep(0.01)  # each piece a read of its own
    code = "module.exports = (c) => [c.input.text.length, c.input.text.slice(-3)]"
    _, result = started.run(0, "count", code)
    assert_result(result, 0, json.dumps([len(text), text[-3:]], separators=(",", ":")).encode())
    # A small frame and the start of a large one in one read; the large one replaces its input.
    small = encode({"t": "input", "seq": 1}, b'"s"')
    large = encode({"t": "input", "seq": 1}, json.dumps(text[::-1]).encode())
    started.send_bytes(small + large[:100])
    time.sleep(0.01)
    started.send_bytes(large[100:])
    _, result = started.run(1, "tail", "module.exports = (c) => [c.input.length, c.input[0]]")
    assert_result(result, 1, json.dumps([len(text), text[-1]], separators=(",", ":")).encode())


def test_the_runners_rehearsal_leaves_no_trace_for_the_first_step(runner: Runner) -> None:
    # The runner rehearses a step named "_" before work arrives (see rehearseStep).
    code = """
    module.exports = (context) => [
      Object.keys(context.steps),
      Object.keys(require.cache).filter((name) => name.startsWith('/steps')),
      module.filename,
      context.execution.stepName,
      context.input,
    ];
    """
    _, result = runner.run(0, "_", code)
    assert_result(result, 0, b'[[],[],"/steps/_.js","_",{"n":5}]')


def test_undefined_result_is_null(runner: Runner) -> None:
    assert_result(runner.run(0, "nothing", "module.exports = async () => {}")[1], 0, b"null")


def test_return_result_false_keeps_the_value_and_reports_its_size(runner: Runner) -> None:
    code = "module.exports = () => ({ items: ['a', 'b'] })"
    _, kept = runner.run(0, "big", code, return_result=False)
    size = len(b'{"items":["a","b"]}')
    assert kept.header == {
        "t": "result",
        "seq": 0,
        "encoding": "json",
        "size": size,
        "kept": True,
    }
    assert kept.body == b""
    _, binary = runner.run(
        1, "bytes", "module.exports = () => Buffer.alloc(3)", return_result=False
    )
    assert binary.header == {
        "t": "result",
        "seq": 1,
        "encoding": "binary",
        "size": 3,
        "kept": True,
    }
    reader = "module.exports = (c) => [c.steps.big.items[1], c.steps.bytes.length]"
    assert_result(runner.run(2, "reader", reader)[1], 2, b'["b",3]')


# Strings and the exact JSON.stringify text of each, as UTF-8: the runner measures and encodes
# a string with nothing to escape without JSON.stringify, and every other one with it.
STRING_RESULTS = [
    ("", b'""'),
    ("plain text", b'"plain text"'),
    ("\u00e9\u4e2d\U0001f600", '"\u00e9\u4e2d\U0001f600"'.encode()),
    ('say "hi"', b'"say \\"hi\\""'),
    ("a \\ backslash", b'"a \\\\ backslash"'),
    ("\n\t\b\f\r\x00\x1f\x7f", b'"\\n\\t\\b\\f\\r\\u0000\\u001f\x7f"'),
    ("\ud800", b'"\\ud800"'),
    ("a\udc00b\ud83d", b'"a\\udc00b\\ud83d"'),
    ("x" * 100_000, b'"' + b"x" * 100_000 + b'"'),
    ("\u00e9" * 50_000 + "\n", b'"' + "\u00e9".encode() * 50_000 + b'\\n"'),
]


def _returns(value: str) -> str:
    """Step code returning value: json.dumps makes a JS literal of it, lone surrogates too."""
    return f"module.exports = () => {json.dumps(value)}"


def test_string_results_are_their_exact_json_sent_or_kept(runner: Runner) -> None:
    seq = 0
    for value, text in STRING_RESULTS:
        assert_result(
            runner.run(seq, f"sent{seq}", _returns(value), result_bytes=1 << 21)[1], seq, text
        )
        _, kept = runner.run(seq + 1, f"kept{seq}", _returns(value), return_result=False)
        assert kept.header == {
            "t": "result",
            "seq": seq + 1,
            "encoding": "json",
            "size": len(text),
            "kept": True,
        }, value[:20]
        assert kept.body == b""
        seq += 2
    reader = "module.exports = (c) => c.steps.kept0 === '' && c.steps.kept16.length"
    assert_result(runner.run(seq, "reader", reader)[1], seq, b"100000")


def test_a_kept_string_over_result_bytes_is_result_too_large(runner: Runner) -> None:
    code = "module.exports = () => 'x'.repeat(10)"  # 12 bytes of JSON
    _, fits = runner.run(0, "fits", code, return_result=False, result_bytes=12)
    assert (fits.header["t"], fits.header["size"], fits.header["kept"]) == ("result", 12, True)
    _, error = runner.run(1, "large", code, return_result=False, result_bytes=11)
    assert error.header == {
        "t": "error",
        "seq": 1,
        "kind": "RESULT_TOO_LARGE",
        "name": "ResultTooLarge",
        "message": "Step result is 12 bytes, over the limit of 11 bytes",
        "stack": "",
    }


def test_replaced_string_builtins_do_not_change_string_results(runner: Runner) -> None:
    tamper = """
    module.exports = () => {
      String.prototype.toJSON = () => 'polluted';
      String.prototype.isWellFormed = () => true;
      RegExp.prototype.exec = function (text) { this.lastIndex = text.length; return [text]; };
      RegExp.prototype[Symbol.match] = () => null;
      Buffer.byteLength = () => 1;
      TextEncoder.prototype.encodeInto = () => ({ read: 0, written: 0 });
      TextEncoder.prototype.encode = () => new Uint8Array(1);
      return 'tampered';
    };
    """
    assert_result(runner.run(0, "tamper", tamper)[1], 0, b'"tampered"')
    for seq, (value, text) in enumerate(STRING_RESULTS[:8], start=1):
        assert_result(runner.run(seq, f"s{seq}", _returns(value))[1], seq, text)
        _, kept = runner.run(100 + seq, f"k{seq}", _returns(value), return_result=False)
        assert (kept.header["size"], kept.body) == (len(text), b""), value


def test_result_over_result_bytes_is_result_too_large(runner: Runner) -> None:
    code = "module.exports = () => 'x'.repeat(10)"  # 12 bytes of JSON
    assert_result(runner.run(0, "fits", code, result_bytes=12)[1], 0, b'"xxxxxxxxxx"')
    _, error = runner.run(1, "large", code, result_bytes=11)
    assert error.header == {
        "t": "error",
        "seq": 1,
        "kind": "RESULT_TOO_LARGE",
        "name": "ResultTooLarge",
        "message": "Step result is 12 bytes, over the limit of 11 bytes",
        "stack": "",
    }
    _, binary = runner.run(2, "blob", "module.exports = () => Buffer.alloc(5)", result_bytes=4)
    assert binary.header["kind"] == "RESULT_TOO_LARGE"
    assert binary.header["message"] == "Step result is 5 bytes, over the limit of 4 bytes"
    # A step that failed leaves nothing in context.steps.
    check = "module.exports = (c) => Object.keys(c.steps)"
    assert_result(runner.run(3, "check", check)[1], 3, b'["fits"]')


def test_circular_result_is_a_user_error(runner: Runner) -> None:
    code = "module.exports = () => { const o = {}; o.self = o; return o; }"
    _, error = runner.run(0, "loop", code)
    assert error.header["kind"] == "USER_ERROR"
    assert error.header["name"] == "TypeError"
    assert error.header["message"] == (
        "Step result cannot be serialized to JSON: Converting circular structure to JSON\n"
        "    --> starting at object with constructor 'Object'\n"
        "    --- property 'self' closes the circle"
    )


def test_bigint_result_is_a_user_error(runner: Runner) -> None:
    _, error = runner.run(0, "big", "module.exports = () => ({ n: 10n })")
    assert error.header["kind"] == "USER_ERROR"
    assert error.header["name"] == "TypeError"
    assert error.header["message"] == (
        "Step result cannot be serialized to JSON: Do not know how to serialize a BigInt"
    )


# ---------------------------------------------------------------------------------------------
# Logs
# ---------------------------------------------------------------------------------------------


def test_console_and_logger_levels_in_order_before_the_result(runner: Runner) -> None:
    code = """
    module.exports = async (context) => {
      console.log('a', 1, {k: 'v'});
      console.info('b');
      console.debug('c');
      console.warn('d');
      console.error(new Error('e').message);
      context.logger.debug('f');
      context.logger.info('g %d', 7);
      context.logger.warn('h');
      context.logger.error('i');
      await new Promise((r) => setTimeout(r, 5));
      console.log('after await');
      return 'ok';
    };
    """
    since = int(time.time() * 1000)
    before, result = runner.run(0, "noisy", code)
    until = int(time.time() * 1000)
    assert logs(before) == [
        ("info", "a 1 { k: 'v' }"),
        ("info", "b"),
        ("debug", "c"),
        ("warn", "d"),
        ("error", "e"),
        ("debug", "f"),
        ("info", "g 7"),
        ("warn", "h"),
        ("error", "i"),
        ("info", "after await"),
    ]
    for frame in before:
        assert set(frame.header) == {"t", "seq", "level", "ts"}
        assert frame.header["seq"] == 0
        assert since <= frame.header["ts"] <= until
    assert_result(result, 0, b'"ok"')


def test_console_trace_is_debug_with_the_stack(runner: Runner) -> None:
    before, _ = runner.run(0, "tracer", "module.exports = () => { console.trace('here %s', 'x'); }")
    # The stack ends with the step's own frames: the runner's are cut off.
    assert logs(before) == [
        ("debug", "Trace: here x\n    at module.exports (/steps/tracer.js:1:34)")
    ]


def test_process_stdout_and_stderr_writes_are_logs(runner: Runner) -> None:
    code = """
    module.exports = () => {
      process.stdout.write('out line\\n');
      process.stderr.write(Buffer.from('err bytes'));
      process.stdout.write('cb', () => {});
      process.stdout.write('');
      process.stdout.write('\\n');
      console.dir({ deep: [1] });
      return null;
    };
    """
    before, result = runner.run(0, "streams", code)
    assert logs(before) == [
        ("info", "out line"),
        ("error", "err bytes"),
        ("info", "cb"),
        ("info", ""),
        ("info", "{ deep: [ 1 ] }"),
    ]
    assert_result(result, 0, b"null")
    assert runner.raw_output() == b""


def test_log_bytes_limit_cuts_once_and_sends_one_truncated(runner: Runner) -> None:
    code = """
    module.exports = () => {
      for (let i = 0; i < 4; i++) console.log('x'.repeat(40));
      process.stdout.write('dropped too');
      return 'done';
    };
    """
    before, result = runner.run(0, "chatty", code, log_bytes=100)
    assert [f.header["t"] for f in before] == ["log", "log", "log", "truncated"]
    assert [f.body for f in before[:3]] == [b"x" * 40, b"x" * 40, b"x" * 20]
    assert before[3] == Frame({"t": "truncated", "seq": 0}, b"")
    assert_result(result, 0, b'"done"')
    # The limit is per step: the next one logs again.
    before, _ = runner.run(1, "quiet", "module.exports = () => console.log('fresh')", log_bytes=100)
    assert logs(before) == [("info", "fresh")]


def test_a_step_that_logs_past_twice_its_limit_is_stopped(runner: Runner) -> None:
    code = "module.exports = () => { for (;;) { try { console.log('y'.repeat(30)); } catch {} } }"
    before, outcome = runner.run(0, "flood", code, log_bytes=100)
    assert [f.header["t"] for f in before] == ["log", "log", "log", "log", "truncated"]
    assert (outcome.header["t"], outcome.header["kind"]) == ("error", "OUTPUT_LIMIT")
    assert outcome.header["message"] == "the step kept logging past its limit of 100 bytes"
    assert runner.wait() == 0  # the runner ends itself: the step may never stop logging


def test_log_cut_keeps_whole_utf8_characters(runner: Runner) -> None:
    before, _ = runner.run(0, "utf8", "module.exports = () => console.log('ééé')", log_bytes=5)
    assert [(f.header["t"], f.body) for f in before] == [
        ("log", "éé".encode()),
        ("truncated", b""),
    ]


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def test_thrown_error_has_message_and_stack_with_the_step_file(runner: Runner) -> None:
    code = "module.exports = async () => {\n  throw new TypeError('bad thing');\n};\n"
    _, error = runner.run(0, "explode", code)
    assert_user_error(error, 0, "TypeError", "bad thing")
    expected = "TypeError: bad thing\n    at module.exports (/steps/explode.js:2:9)"
    assert error.header["stack"] == expected


def test_esm_error_stack_names_the_step_file(runner: Runner) -> None:
    code = "export default async () => {\n  throw new RangeError('esm bad');\n};\n"
    before, error = runner.run(0, "modular", code)
    assert before == []  # in particular no Node warning about "type": "module"
    assert_user_error(error, 0, "RangeError", "esm bad")
    assert error.header["stack"] == "RangeError: esm bad\n    at default (/steps/modular.js:2:9)"


def test_esm_import_error_names_the_step_file_not_its_data_url(runner: Runner) -> None:
    code = "import x from 'no-such-package';\nexport default () => x;\n"
    before, error = runner.run(0, "deps", code)
    assert before == []
    assert_user_error(
        error,
        0,
        "TypeError",
        'Failed to resolve module specifier "no-such-package" from "/steps/deps.js": '
        "Invalid relative URL or base scheme is not hierarchical.",
    )
    assert "data:" not in error.header["stack"]


@pytest.mark.parametrize(
    ("thrown", "message"),
    [
        ("null", "Step threw a non-Error value: null"),
        ("42", "Step threw a non-Error value: 42"),
        ("undefined", "Step threw a non-Error value: undefined"),
        (
            "{ toString() { throw 1; } }",
            "Step threw a non-Error value: { toString: [Function: toString] }",
        ),
        ("'plain text'", "plain text"),
    ],
)
def test_non_error_throws_give_readable_messages(runner: Runner, thrown: str, message: str) -> None:
    _, error = runner.run(0, "odd", f"module.exports = async () => {{ throw {thrown}; }}")
    assert error.header == {
        "t": "error",
        "seq": 0,
        "kind": "USER_ERROR",
        "name": "Error",
        "message": message,
        "stack": "",
    }


def test_error_with_throwing_getters_still_reports(runner: Runner) -> None:
    code = """
    module.exports = () => {
      const err = new Error('hidden');
      Object.defineProperty(err, 'name', { get() { throw new Error('no name'); } });
      throw err;
    };
    """
    _, error = runner.run(0, "getter", code)
    assert_user_error(error, 0, "Error", "hidden")


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("module.exports = async (c) => { return 1", "Unexpected end of input"),
        ("export default async () => { return 1", "Unexpected end of input"),
        ("const x = ;", "Unexpected token ';'"),
    ],
)
def test_syntax_error_is_a_user_error(runner: Runner, code: str, message: str) -> None:
    _, error = runner.run(0, "broken", code)
    assert_user_error(error, 0, "SyntaxError", message)


def test_export_that_is_not_a_function_is_a_user_error(runner: Runner) -> None:
    _, error = runner.run(0, "value", "module.exports = 42")
    assert_user_error(
        error,
        0,
        "TypeError",
        "Step code must export a function: module.exports = async (context) => { ... } "
        "or export default async (context) => { ... }",
    )


def test_throw_from_a_timer_fails_the_running_step(runner: Runner) -> None:
    code = """
    module.exports = () => new Promise(() => {
      setTimeout(() => { throw new Error('from timer'); }, 1);
    });
    """
    _, error = runner.run(0, "timer", code)
    assert_user_error(error, 0, "Error", "from timer")
    # The runner goes on with the next step.
    assert_result(runner.run(1, "next", "module.exports = () => 'alive'")[1], 1, b'"alive"')


def test_unhandled_rejection_fails_the_running_step(runner: Runner) -> None:
    code = """
    module.exports = async () => {
      Promise.reject(new Error('nobody handles me'));
      await new Promise((r) => setTimeout(r, 20));
      return 'too late';
    };
    """
    _, error = runner.run(0, "reject", code)
    assert_user_error(error, 0, "Error", "nobody handles me")


def test_throw_after_the_step_finished_is_only_written_to_stderr(runner: Runner) -> None:
    first = (
        "module.exports = () => { setTimeout(() => { throw new Error('late'); }, 1); return 1; }"
    )
    assert_result(runner.run(0, "first", first)[1], 0, b"1")
    deadline = time.monotonic() + TIMEOUT
    while b"late" not in runner.raw_output():  # the timer fires while no step runs
        assert time.monotonic() < deadline, "the late throw was not reported"
        time.sleep(0.01)
    second = "module.exports = () => new Promise((r) => setTimeout(() => r(2), 10))"
    before, result = runner.run(1, "second", second)
    assert before == []
    assert_result(result, 1, b"2")
    assert runner.raw_output().startswith(
        b"sandboxd runner: uncaught exception outside a step: Error: late\n    at Timeout."
    )


# ---------------------------------------------------------------------------------------------
# Context and customer code that tampers with builtins
# ---------------------------------------------------------------------------------------------


def test_context_fields(runner: Runner) -> None:
    code = """
    module.exports = (context) => ({
      keys: Object.keys(context),
      input: context.input,
      configVars: context.configVars,
      credentials: context.credentials,
      execution: context.execution,
      logger: Object.keys(context.logger),
    });
    """
    assert js(runner.run(3, "inspect", code)[1]) == {
        "keys": ["input", "steps", "configVars", "credentials", "logger", "execution"],
        "input": {"n": 5},
        "configVars": {"region": "eu"},
        "credentials": {"apiKey": "k-123"},
        "execution": {"id": "ex-1", "tenantId": "acme", "stepName": "inspect", "attempt": 2},
        "logger": ["debug", "info", "warn", "error"],
    }


def test_empty_exec_body_is_null_input(started: Runner) -> None:
    assert started.read() is not None
    started.send({**EXEC, "attempt": 0}, b"")
    assert_result(started.run(0, "in", "module.exports = (c) => c.input")[1], 0, b"null")


def test_replaced_builtins_do_not_change_the_frames(runner: Runner) -> None:
    first = """
    const origLog = console.log;
    module.exports = (context) => {
      JSON.stringify = () => 'garbage';
      JSON.parse = () => ({ t: 'garbage' });
      Object.prototype.toJSON = function () { return 'polluted'; };
      Array.prototype.push = () => { throw new Error('push is gone'); };
      Array.prototype[Symbol.iterator] = function* () { yield 'polluted'; };
      Uint8Array.prototype.constructor = function () { throw new Error('species'); };
      Buffer.prototype.utf8Write = () => 0;
      Buffer.prototype.toString = () => 'polluted';
      String.prototype.slice = () => 'polluted';
      Promise.prototype.then = function () { throw new Error('then is gone'); };
      console.log = (...args) => origLog('patched:', args.length);
      console.log('hello', 'world');
      context.logger.info('via logger');
      process.stdout.write('raw\\n');
      return { a: [1, 2], when: new Date(0) };
    };
    """
    before, result = runner.run(0, "tamper", first)
    assert logs(before) == [("info", "patched: 2"), ("info", "via logger"), ("info", "raw")]
    assert_result(result, 0, b'{"a":[1,2],"when":"1970-01-01T00:00:00.000Z"}')

    second = """
    module.exports = async (context) => {
      console.log('second');
      process.stderr.write('err');
      return [context.steps.tamper.a.length, {}.toJSON(), Buffer.from([1]).toString()];
    };
    """
    before, result = runner.run(1, "after", second)
    assert logs(before) == [("info", "patched: 1"), ("error", "err")]
    assert_result(result, 1, b'[2,"polluted","polluted"]')
    # (Buffer.from(string) itself is broken now: the step replaced utf8Write.)
    bytes_code = (
        "module.exports = () => { const b = Buffer.alloc(2); b[0] = 97; b[1] = 98; return b; }"
    )
    _, binary = runner.run(2, "bytes", bytes_code)
    assert_result(binary, 2, b"ab", "binary")
    runner.send({"t": "end"})
    assert runner.wait() == 0


# ---------------------------------------------------------------------------------------------
# The root filesystem image
# ---------------------------------------------------------------------------------------------


def _build(dest: Path) -> str:
    done = subprocess.run(
        ["bash", str(BUILD_ROOTFS), str(dest)],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "NODE": NODE or ""},
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def test_build_rootfs_layout_and_rebuild(tmp_path: Path) -> None:
    dest = tmp_path / "rootfs"
    _build(dest)
    inode = (dest / "usr/local/bin/node").stat().st_ino
    out = _build(dest)  # a re-run replaces the image whole
    assert out.startswith(f"build-rootfs: {dest}: ")
    assert (dest / "usr/local/bin/node").stat().st_ino != inode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rootfs"]  # no temp dirs left

    top = sorted(p.name for p in dest.iterdir())
    assert {"usr", "sandboxd", "tmp", "proc", "dev", "etc"} <= set(top)
    assert "sys" not in top
    assert sorted(p.name for p in (dest / "dev").iterdir()) == ["null", "random", "urandom", "zero"]
    assert sorted(p.name for p in (dest / "etc").iterdir()) == [
        "group",
        "hostname",
        "hosts",
        "passwd",
    ]
    assert (dest / "etc/hosts").read_text() == "127.0.0.1 localhost sandbox\n::1 localhost\n"
    assert (dest / "etc/hostname").read_text() == "sandbox\n"
    passwd = (dest / "etc/passwd").read_text().splitlines()
    assert "sandbox:x:1000:1000::/tmp:/sbin/nologin" in passwd
    assert (dest / "sandboxd/runner.js").read_bytes() == RUNNER.read_bytes()

    ldd = subprocess.run(["ldd", NODE or "node"], capture_output=True, text=True, check=True)
    for line in ldd.stdout.splitlines():
        fields = line.split()
        library = fields[2] if len(fields) > 2 and fields[1] == "=>" else fields[0]
        if library.startswith("/"):
            assert (dest / library.lstrip("/")).is_file(), library

    for path in [dest, *dest.rglob("*")]:
        mode = path.lstat().st_mode
        assert not path.is_symlink(), path
        assert mode & 0o022 == 0, path  # writable by the owner only
        if os.geteuid() == 0:
            assert path.lstat().st_uid == 0, path
        if path.is_dir():
            assert mode & 0o777 == 0o755, path
    assert (dest / "usr/local/bin/node").stat().st_mode & 0o777 == 0o755
    assert (dest / "sandboxd/runner.js").stat().st_mode & 0o777 == 0o644


def test_runner_runs_inside_the_built_rootfs(tmp_path: Path) -> None:
    chroot = shutil.which("chroot")
    if os.geteuid() != 0 or chroot is None:
        pytest.skip("chroot needs root")
    dest = tmp_path / "rootfs"
    _build(dest)
    runner = Runner([chroot, str(dest), "/usr/local/bin/node", "/sandboxd/runner.js"])
    try:
        ready = runner.read()
        assert ready is not None and ready.type == "ready"
        runner.send(EXEC, b"[1, 2]")
        code = "module.exports = (c) => [c.input.length, require('zlib').gzipSync('x').length > 0]"
        assert_result(runner.run(0, "inside", code)[1], 0, b"[2,true]")
        runner.send({"t": "end"})
        assert runner.wait() == 0
    finally:
        runner.close()


# ---------------------------------------------------------------------------------------------
# Egress: what the connector makes of each answer of the proxy
# ---------------------------------------------------------------------------------------------


@dataclass
class ScriptedProxy:
    """Accepts on an egress socket and answers every CONNECT with the same bytes, then closes
    (with a reset when `reset`); records each request head."""

    listener: socket.socket
    answer: bytes
    reset: bool = False
    heads: list[bytes] = field(default_factory=list)

    def serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return  # closed: the test is over
            with connection:
                head = b""
                while b"\r\n\r\n" not in head and (chunk := connection.recv(4096)):
                    head += chunk
                self.heads.append(head)
                connection.sendall(self.answer)
                if self.reset:
                    connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )


@contextlib.contextmanager
def proxied_runner(answer: bytes, *, reset: bool = False) -> Iterator[tuple[Runner, ScriptedProxy]]:
    """A runner in a network namespace of its own (unshare), whose egress socket the test serves,
    made the way the fork server makes a jail's (sandboxd/jail/net.py)."""
    if os.geteuid() != 0:
        pytest.skip("a network namespace needs root")
    runner = Runner(["/usr/bin/unshare", "--net", "--", NODE or "node", str(RUNNER)])
    own_netns = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        ready = runner.read()  # by now unshare has made the namespace and executed node
        assert ready is not None and ready.type == "ready"
        listener = socket.socket(fileno=set_up_jail_network(runner.pid, own_netns))
        proxy = ScriptedProxy(listener, answer, reset)
        serving = threading.Thread(target=proxy.serve, daemon=True)
        serving.start()
        runner.send(EXEC)
        try:
            yield runner, proxy
        finally:
            listener.shutdown(socket.SHUT_RDWR)
            listener.close()
            serving.join(TIMEOUT)
    finally:
        os.close(own_netns)
        runner.close()


# fetch and http.get of the same URL; each reports its error's code and message.
BOTH_CLIENTS = """
const http = require('http');
module.exports = async () => ({
  fetch: await fetch('http://partner.test/x').then(
    async (res) => ['OK', await res.text()], (err) => [err.cause.code, err.cause.message]),
  http: await new Promise((resolve) => {
    http.get('http://partner.test/x', (res) => {
      let text = '';
      res.on('data', (chunk) => { text += chunk; });
      res.on('end', () => resolve(['OK', text]));
    }).on('error', (err) => resolve([err.code, err.message]));
  }),
});
"""

TARGET = "egress to partner.test:80"


FAILED = f"{TARGET} failed: the egress proxy"


@pytest.mark.parametrize(
    ("answer", "code", "message"),
    [
        (
            b"HTTP/1.1 200 OK\r\n",
            "EGRESS_FAILED",
            f"{FAILED} closed the connection before answering",
        ),
        (b"SSH-2.0-OpenSSH\r\n\r\n", "EGRESS_FAILED", f"{FAILED} sent a malformed answer"),
        (
            b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n",
            "EGRESS_FAILED",
            f"{FAILED} answered 407 Proxy Authentication Required",
        ),
        # A 403 is a denial only when the proxy says why.
        (
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n",
            "EGRESS_FAILED",
            f"{FAILED} answered 403 Forbidden",
        ),
        (
            b"HTTP/1.1 403 Forbidden\r\nx-sandboxd-egress-denied:  not allowed \r\n\r\n",
            "EGRESS_DENIED",
            f"{TARGET} denied by the egress policy: not allowed",
        ),
        (
            b"HTTP/1.1 504 Gateway Timeout\r\nX-Sandboxd-Egress-Error: connect timed out\r\n\r\n",
            "EGRESS_FAILED",
            f"{FAILED} answered 504 Gateway Timeout: connect timed out",
        ),
        (
            b"HTTP/1.1 200 OK\r\nX-Padding: " + b"a" * 20000,
            "EGRESS_FAILED",
            f"{FAILED}'s answer is larger than 16384 bytes",
        ),
    ],
)
def test_each_answer_of_the_proxy_becomes_a_precise_error(
    answer: bytes, code: str, message: str
) -> None:
    with proxied_runner(answer) as (runner, proxy):
        result = js(runner.run(0, "egress", BOTH_CLIENTS)[1])
    assert result == {"fetch": [code, message], "http": [code, message]}
    connect = b"CONNECT partner.test:80 HTTP/1.1\r\nHost: partner.test:80\r\n\r\n"
    assert proxy.heads == [connect, connect]


def test_a_reset_before_the_answer_is_egress_failed() -> None:
    with proxied_runner(b"", reset=True) as (runner, _):
        result = js(runner.run(0, "egress", BOTH_CLIENTS)[1])
    expected = [
        "EGRESS_FAILED",
        f"{TARGET} failed: the connection to the egress proxy failed: ECONNRESET",
    ]
    assert result == {"fetch": expected, "http": expected}


def test_bytes_right_after_the_answer_belong_to_the_tunnel() -> None:
    # The proxy's 200 and the partner's response in one write: the response is not lost.
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\npartner"
    with proxied_runner(b"HTTP/1.1 200 Connection established\r\n\r\n" + response) as (
        runner,
        _,
    ):
        result = js(runner.run(0, "egress", BOTH_CLIENTS)[1])
    assert result == {"fetch": ["OK", "partner"], "http": ["OK", "partner"]}
