"""Catalogue: Resources. Every limit has an attack that hits it and gets its precise outcome.

Limits that are the jail's own (memory, pids, cpu time, open files, file size, tmpfs) are set per
execution through `limits=`; the pool then starts a jail with exactly those limits.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import psutil
import pytest

from sandbox_client import ErrorKind, Limits, SandboxClient, SandboxError, Step
from tests.conftest import ROOTFS
from tests.security.conftest import (
    MARKER,
    Outcome,
    SecurityDaemon,
    execute,
    js,
    marked_processes,
    process_cgroup_dirs,
    wait_for,
)

MiB = 1024 * 1024
# --- processes and threads ------------------------------------------------------------------------

FORK_LOOP = js(r"""
module.exports = async (ctx) => {
  const children = [];
  for (let i = 0; i < 1000; i++) {
    const child = spawnMarked('fork-' + i, 'setInterval(() => {}, 1000)');
    const failure = await new Promise((resolve) => {
      child.on('spawn', () => resolve(null));
      child.on('error', resolve);
    });
    if (failure !== null) {
      if (ctx.input.rethrow) throw failure;
      return { code: failure.code, syscall: failure.syscall, started: children.length };
    }
    children.push(child);
  }
  return 'no limit';
};
""")

WORKER_LOOP = js(r"""
const { Worker } = require('worker_threads');
module.exports = async (ctx) => {
  const workers = [];
  for (let i = 0; i < 1000; i++) {
    let worker;
    let failure;
    try {
      worker = new Worker('setInterval(() => {}, 1000)', { eval: true });
      failure = await new Promise((resolve) => {
        worker.on('online', () => resolve(null));
        worker.on('error', resolve);
      });
    } catch (e) {
      failure = e;  // the thread could not even be created
    }
    if (failure !== null) {
      if (ctx.input.rethrow) throw failure;
      return { message: failure.message, started: workers.length };
    }
    workers.push(worker);
  }
  return 'no limit';
};
""")

PIDS = Limits(pids=32)


async def test_fork_loop_is_stopped_by_the_pids_limit_with_eagain(client: SandboxClient) -> None:
    outcome = await execute(client, FORK_LOOP, input={"rethrow": False}, limits=PIDS)
    seen = outcome.value
    assert (seen["code"], seen["syscall"]) == ("EAGAIN", "spawn /usr/local/bin/node")
    # Each node child has ~7 threads, and the runner's own count too: far fewer than 32 run.
    assert 0 < seen["started"] < 32


async def test_worker_loop_is_stopped_by_the_pids_limit(client: SandboxClient) -> None:
    outcome = await execute(client, WORKER_LOOP, input={"rethrow": False}, limits=PIDS)
    seen = outcome.value
    assert seen["message"] == "EAGAIN"
    assert 0 < seen["started"] < 32


@pytest.mark.parametrize("loop", [FORK_LOOP, WORKER_LOOP], ids=["fork", "worker"])
async def test_pids_limit_reached_is_resource_limit(client: SandboxClient, loop: str) -> None:
    outcome = await execute(client, loop, input={"rethrow": True}, limits=PIDS)
    assert outcome.kind is ErrorKind.RESOURCE_LIMIT
    assert outcome.message.startswith("the jail reached its process/thread limit")


async def test_fork_bomb_leaves_the_daemon_and_other_executions_unharmed(
    client: SandboxClient,
) -> None:
    bomb = js(r"""
    module.exports = async () => {
      let failures = 0;
      const deadline = Date.now() + 1500;
      while (Date.now() < deadline) {
        const child = spawnMarked('bomb', 'setInterval(() => {}, 1000)');
        await new Promise((resolve) => {
          child.on('spawn', resolve);
          child.on('error', () => { failures += 1; resolve(); });
        });
      }
      return failures > 0;
    };
    """)
    normal = "module.exports = async (ctx) => ctx.input.n * 2"
    running = asyncio.create_task(execute(client, bomb, limits=PIDS))
    await asyncio.sleep(0.5)
    others = await asyncio.gather(*(execute(client, normal, input={"n": n}) for n in range(3)))
    assert [other.value for other in others] == [0, 2, 4]
    assert (await running).value is True


# --- memory ---------------------------------------------------------------------------------------

BALLOONS = {
    "buffer": "const kept = []; for (;;) kept.push(Buffer.alloc(8 << 20, 1));",
    "array": "const kept = []; for (let i = 0; ; i++) kept.push({ i, s: 'x' + i, a: [i, i, i] });",
    "string": "const kept = []; for (let i = 0; ; i++) kept.push('y'.repeat(1 << 20) + i);",
    "wasm": (
        "const kept = []; for (;;) { const m = new WebAssembly.Memory({ initial: 128 });"
        " new Uint8Array(m.buffer).fill(1); kept.push(m); }"
    ),
}
MEMORY = Limits(memory_bytes=128 * MiB)


@pytest.mark.parametrize("balloon", sorted(BALLOONS))
async def test_memory_balloon_is_memory_limit(client: SandboxClient, balloon: str) -> None:
    code = f"module.exports = async () => {{ {BALLOONS[balloon]} }};"
    outcome = await execute(client, code, limits=MEMORY)
    assert outcome.kind is ErrorKind.MEMORY_LIMIT
    assert outcome.message == "the jail ran out of memory (its memory limit)"
    finished = outcome.finished
    assert finished is not None
    assert finished.usage.peak_memory_bytes <= 128 * MiB


def _cgroup_files(pid: int) -> dict[str, str]:
    """The memory, swap and pids limits of the cgroup that holds `pid`, as the host sees them."""
    dirs = process_cgroup_dirs(pid)
    wanted = [
        (dirs.get("memory"), "memory.limit_in_bytes"),
        (dirs.get("memory"), "memory.memsw.limit_in_bytes"),
        (dirs.get("pids"), "pids.max"),
        (dirs.get("unified"), "memory.max"),
        (dirs.get("unified"), "memory.swap.max"),
        (dirs.get("unified"), "pids.max"),
    ]
    values = {}
    for directory, name in wanted:
        if directory is not None and os.path.exists(os.path.join(directory, name)):
            with open(os.path.join(directory, name)) as handle:
                values[name] = handle.read().strip()
    return values


async def test_jail_cgroup_has_the_limits_and_no_swap(client: SandboxClient) -> None:
    code = js(r"""
    module.exports = async () => {
      spawnMarked('cgroup', 'setInterval(() => {}, 1000)');
      console.log('ready');
      await new Promise(() => {});  // until cancelled
    };
    """)
    execution_id = f"{MARKER}-cgroup"
    limits = Limits(memory_bytes=96 * MiB, pids=40)
    events = client.execute(
        tenant_id="sec-acme", steps=[Step("attack", code)], limits=limits, execution_id=execution_id
    )
    seen: dict[str, str] = {}
    kind = None
    async for event in events:
        if event.HasField("log") and event.log.text == "ready":
            (process,) = wait_for(lambda: marked_processes(f"{MARKER}-cgroup"))
            seen = _cgroup_files(process.pid)
            assert await client.cancel("sec-acme", execution_id)
        if event.HasField("execution_finished"):
            kind = ErrorKind.from_proto(event.execution_finished.error_kind)
    assert kind is ErrorKind.CANCELLED
    limit = str(96 * MiB)
    if "memory.limit_in_bytes" in seen:  # cgroup v1
        assert seen["memory.limit_in_bytes"] == limit
        # memory + swap capped at memory: nothing can go to swap.
        assert seen.get("memory.memsw.limit_in_bytes", limit) == limit
    else:
        assert seen["memory.max"] == limit
        assert seen.get("memory.swap.max", "0") == "0"
    assert seen["pids.max"] == "40"


# --- time -----------------------------------------------------------------------------------------

SPINNERS = {
    "busy loop": "module.exports = async () => { for (;;) {} };",
    "promise that never settles": "module.exports = () => new Promise(() => {});",
    "catastrophic regex": ("module.exports = async () => /^(a+)+$/.test('a'.repeat(64) + '!');"),
    "SIGTERM ignored": (
        "module.exports = async () => { for (const s of ['SIGTERM', 'SIGINT', 'SIGHUP'])"
        " process.on(s, () => {}); for (;;) {} };"
    ),
    "timers forever": ("module.exports = () => new Promise(() => { setInterval(() => {}, 1); });"),
}
TIMEOUT_MS = 700


async def _run_spinners(client: SandboxClient) -> dict[str, Outcome]:
    limits = Limits(timeout_ms=TIMEOUT_MS)
    outcomes = await asyncio.gather(
        *(execute(client, code, limits=limits) for code in SPINNERS.values())
    )
    return dict(zip(SPINNERS, outcomes, strict=True))


_SPUN: dict[str, Outcome] = {}


@pytest.mark.parametrize("spinner", list(SPINNERS))
async def test_steps_that_never_end_are_timeout(client: SandboxClient, spinner: str) -> None:
    if not _SPUN:
        _SPUN.update(await _run_spinners(client))
    outcome = _SPUN[spinner]
    assert outcome.kind is ErrorKind.TIMEOUT
    assert outcome.message == f"step 'attack' ran past its time limit of {TIMEOUT_MS} ms"


async def test_cpu_time_limit_is_timeout(client: SandboxClient) -> None:
    code = "module.exports = async () => { for (;;) {} };"
    outcome = await execute(client, code, limits=Limits(cpu_time_ms=1000, timeout_ms=20_000))
    assert outcome.kind is ErrorKind.TIMEOUT
    assert outcome.message == "the jail used up its cpu time limit"


# --- disk -----------------------------------------------------------------------------------------

FILL = js(r"""
module.exports = async (ctx) => {
  const out = {};
  // Inodes first, on the fresh tmpfs: nr_inodes=16384, one of them the root directory's.
  let tiny = 0;
  try { for (;;) { fs.writeFileSync(`/tmp/t${tiny}`, ''); tiny += 1; } }
  catch (e) { out.inodes = codeOf(e); out.tinyFiles = tiny; }
  for (let i = 0; i < tiny; i++) fs.unlinkSync(`/tmp/t${i}`);
  const chunk = Buffer.alloc(1 << 20, 7);
  let files = 0;
  try {
    for (;;) { fs.writeFileSync(`/tmp/${MARKER}-fill-${files}`, chunk); files += 1; }
  } catch (e) { out.space = codeOf(e); out.megabytes = files; }
  for (let i = 0; i < files; i++) fs.unlinkSync(`/tmp/${MARKER}-fill-${i}`);
  const fd = fs.openSync(`/tmp/${MARKER}-big`, 'w');
  let written = 0;
  try { for (;;) written += fs.writeSync(fd, chunk); }
  catch (e) { out.fileSize = codeOf(e); out.bigFileBytes = fs.fstatSync(fd).size; }
  if (ctx.input.rethrow) fs.writeSync(fd, chunk);
  return out;
};
""")
DISK = Limits(tmpfs_bytes=8 * MiB, file_size_bytes=3 * MiB)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("space", "ENOSPC"),
        ("megabytes", 8),  # 8 MiB of tmpfs hold 8 whole 1 MiB files
        ("inodes", "ENOSPC"),
        ("tinyFiles", 16383),
        ("fileSize", "EFBIG"),
        ("bigFileBytes", 3 * MiB),
    ],
)
async def test_tmpfs_and_file_size_limits_fail_inside_the_jail(
    client: SandboxClient, key: str, expected: Any
) -> None:
    if "disk" not in _DISK:
        _DISK["disk"] = (await execute(client, FILL, input={"rethrow": False}, limits=DISK)).value
    assert _DISK["disk"][key] == expected


_DISK: dict[str, Any] = {}


async def test_jail_files_never_reach_the_host_disk(client: SandboxClient) -> None:
    if "disk" not in _DISK:
        _DISK["disk"] = (await execute(client, FILL, input={"rethrow": False}, limits=DISK)).value
    for directory in ("/tmp", f"{ROOTFS}/tmp", "/var/tmp"):
        assert [name for name in os.listdir(directory) if name.startswith(f"{MARKER}-big")] == []


OPEN_FILES = js(r"""
const dgram = require('dgram');
module.exports = async (ctx) => {
  const out = {};
  const fds = [];
  try { for (;;) fds.push(fs.openSync('/dev/null', 'r')); }
  catch (e) { out.files = codeOf(e); out.opened = fds.length; }
  for (const fd of fds) fs.closeSync(fd);
  const sockets = [];
  try {
    for (;;) {
      const socket = dgram.createSocket('udp4');
      await new Promise((resolve, reject) => {
        socket.once('error', reject);
        socket.bind(0, '127.0.0.1', resolve);
      });
      sockets.push(socket);
    }
  } catch (e) { out.sockets = codeOf(e); }
  for (const socket of sockets) socket.close();
  if (ctx.input.rethrow) for (;;) fds.push(fs.openSync('/dev/null', 'r'));
  return out;
};
""")
FILES = Limits(open_files=64)


async def test_open_files_and_sockets_in_a_loop_get_emfile(client: SandboxClient) -> None:
    seen = (await execute(client, OPEN_FILES, input={"rethrow": False}, limits=FILES)).value
    assert seen["files"] == "EMFILE"
    assert seen["sockets"] == "EMFILE"
    assert 0 < seen["opened"] < 64  # node holds some of the 64 itself


@pytest.mark.parametrize(
    ("code", "limits"), [(OPEN_FILES, FILES), (FILL, DISK)], ids=["EMFILE", "EFBIG"]
)
async def test_errno_limits_that_end_the_step_are_resource_limit(
    client: SandboxClient, code: str, limits: Limits
) -> None:
    outcome = await execute(client, code, input={"rethrow": True}, limits=limits)
    assert outcome.kind is ErrorKind.RESOURCE_LIMIT


# --- output ---------------------------------------------------------------------------------------

LOG_LIMIT = 64 * 1024


async def test_many_log_lines_are_truncated_with_one_marker_and_the_step_ends(
    client: SandboxClient,
) -> None:
    code = """
    module.exports = async () => {
      for (let i = 0; i < 800; i++) console.log('line ' + i + ' ' + 'x'.repeat(100));
      return 'done';
    };
    """
    outcome = await execute(client, code, limits=Limits(log_bytes=LOG_LIMIT))
    assert outcome.value == "done"
    *lines, marker = outcome.logs
    assert (marker.truncated, marker.text) == (
        True,
        f"[log truncated: the step's limit of {LOG_LIMIT} bytes was reached]",
    )
    assert not any(line.truncated for line in lines)
    assert sum(len(line.text.encode()) for line in lines) <= LOG_LIMIT


async def test_too_many_log_entries_are_truncated_with_one_marker(client: SandboxClient) -> None:
    code = (
        "module.exports = async () => { for (let i = 0; i < 300; i++) console.log(i); return 1; }"
    )
    outcome = await execute(client, code, limits=Limits(log_lines=100))
    assert outcome.value == 1
    assert [log.text for log in outcome.logs[:100]] == [str(i) for i in range(100)]
    assert [(log.truncated, log.text) for log in outcome.logs[100:]] == [
        (True, "[log truncated: the step's limit of 100 lines was reached]")
    ]


async def test_a_line_past_the_limit_is_cut_and_the_step_goes_on(client: SandboxClient) -> None:
    code = "module.exports = async () => { console.log('y'.repeat(80 << 10)); return 'done'; };"
    outcome = await execute(client, code, limits=Limits(log_bytes=LOG_LIMIT))
    assert outcome.value == "done"
    line, marker = outcome.logs
    assert line.text == "y" * LOG_LIMIT
    assert marker.truncated


async def test_one_gigantic_line_is_output_limit(client: SandboxClient) -> None:
    code = "module.exports = async () => { console.log('y'.repeat(8 << 20)); return 'done'; };"
    outcome = await execute(client, code, limits=Limits(log_bytes=LOG_LIMIT))
    assert outcome.kind is ErrorKind.OUTPUT_LIMIT
    line, marker = outcome.logs
    assert line.text == "y" * LOG_LIMIT
    assert marker.truncated


async def test_invalid_utf8_on_stdout_becomes_replacement_characters(
    client: SandboxClient,
) -> None:
    code = js(r"""
    module.exports = async () => {
      process.stdout.write(Buffer.from([0xff, 0xfe, 0x41, 0xc3]));
      fs.writeSync(2, Buffer.from([0x80, 0x42, 0x0a]));
      await sleep(200);  // raw stderr is read on its own pipe: let it arrive first
      return 'done';
    };
    """)
    outcome = await execute(client, code)
    assert outcome.value == "done"
    assert sorted(log.text for log in outcome.logs) == ["\ufffdB\n", "\ufffd\ufffdA\ufffd"]


JUNK = js(r"""
// Binary junk written straight to stdout, past the runner, for as long as the jail lives.
module.exports = async (ctx) => {
  const junk = Buffer.alloc(256 << 10);
  for (let i = 0; i < junk.length; i++) junk[i] = (i * 131 + 7) & 0xff;
  for (;;) {
    let done = 0;
    while (done < junk.length) {
      try { done += fs.writeSync(ctx.input.fd, junk, done); }
      catch (e) { if (e.code !== 'EAGAIN') throw e; blockFor(1); }
    }
  }
};
""")


@pytest.mark.parametrize("fd", [1, 2], ids=["stdout", "stderr"])
async def test_endless_raw_output_is_output_limit_with_bounded_daemon_memory(
    client: SandboxClient, daemon: SecurityDaemon, fd: int
) -> None:
    daemon_process = psutil.Process(daemon.pid)
    before = daemon_process.memory_info().rss
    outcome = await execute(client, JUNK, input={"fd": fd}, limits=Limits(log_bytes=LOG_LIMIT))
    assert outcome.kind is ErrorKind.OUTPUT_LIMIT
    assert outcome.message == f"step wrote more than {LOG_LIMIT} bytes of logs"
    delivered = sum(len(log.text.encode()) for log in outcome.logs if not log.truncated)
    assert delivered <= LOG_LIMIT * 3  # U+FFFD takes 3 bytes where the junk took 1
    assert daemon_process.memory_info().rss - before < 64 * MiB


async def test_endless_console_log_is_cut_then_output_limit(client: SandboxClient) -> None:
    code = "module.exports = async () => { for (;;) console.log('z'.repeat(1000)); };"
    outcome = await execute(client, code, limits=Limits(log_bytes=LOG_LIMIT, timeout_ms=10_000))
    assert outcome.kind is ErrorKind.OUTPUT_LIMIT
    assert outcome.message == f"the step kept logging past its limit of {LOG_LIMIT} bytes"
    *lines, marker = outcome.logs
    assert marker.truncated
    assert sum(len(line.text.encode()) for line in lines) <= LOG_LIMIT


# --- results --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "limits", "kind", "message"),
    [
        (
            "module.exports = async () => Buffer.alloc(300 << 20);",
            None,
            ErrorKind.RESULT_TOO_LARGE,
            "ResultTooLarge: Step result is 314572800 bytes, over the limit of 67108864 bytes",
        ),
        (
            "module.exports = async () => 'z'.repeat(2 << 20);",
            Limits(result_bytes=MiB),
            ErrorKind.RESULT_TOO_LARGE,
            "ResultTooLarge: Step result is 2097154 bytes, over the limit of 1048576 bytes",
        ),
        (
            "module.exports = async () => { const a = {}; a.self = a; return a; };",
            None,
            ErrorKind.USER_ERROR,
            "TypeError: Step result cannot be serialized to JSON: Converting circular structure"
            " to JSON\n    --> starting at object with constructor 'Object'\n"
            "    --- property 'self' closes the circle",
        ),
        (
            "module.exports = async () => ({ n: 10n });",
            None,
            ErrorKind.USER_ERROR,
            "TypeError: Step result cannot be serialized to JSON: Do not know how to serialize"
            " a BigInt",
        ),
        (
            "module.exports = async () => { const root = {}; let o = root;"
            " for (let i = 0; i < 200000; i++) { o.c = {}; o = o.c; } return root; };",
            None,
            ErrorKind.USER_ERROR,
            "RangeError: Step result cannot be serialized to JSON: Maximum call stack size"
            " exceeded",
        ),
    ],
    ids=["300MB", "over-limit", "circular", "bigint", "deep"],
)
async def test_results_that_cannot_be_returned_have_a_clear_error(
    client: SandboxClient, code: str, limits: Limits | None, kind: ErrorKind, message: str
) -> None:
    outcome = await execute(client, code, limits=limits)
    assert (outcome.kind, outcome.message) == (kind, message)


async def test_limits_above_the_operators_ceiling_are_refused(client: SandboxClient) -> None:
    with pytest.raises(SandboxError) as caught:
        await client.run(
            tenant_id="sec-acme",
            steps=[Step("attack", "module.exports = () => 1")],
            limits=Limits(memory_bytes=64 * 1024 * MiB, pids=100_000),
        )
    assert caught.value.kind is ErrorKind.INVALID_REQUEST
    assert caught.value.message == (
        f"limit memory_bytes={64 * 1024 * MiB} is above the ceiling {4096 * MiB}"
    )
