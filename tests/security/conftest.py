"""The security suite's daemon, its JavaScript helpers, and the host checks after every group.

Every test here is a real step, run by a real `sandboxd serve` process over real gRPC in a real
jail, that tries one attack and asserts its precise outcome. The daemon of this package runs its
jails as host uids of its own (SECURITY_UID_BASE ...), apart from every other test daemon, so that
"no process of a jail uid survives" means exactly this daemon's jails.

After each module (one catalogue section) `host_checks` proves that nothing of the attacks is
left on the host: no process of a jail uid but the warm jails' keepers and runners, no process
carrying this run's marker in its argv, no jail cgroup but the warm jails', the host's mount table
unchanged, the jail image and a canary file on the host untouched, and the daemon still serving a
normal step.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import secrets
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import psutil
import pytest

from sandbox_client import ErrorKind, Limits, SandboxClient, SandboxError, Step
from sandbox_client.v1 import sandbox_pb2 as pb
from sandbox_client.v1 import sandbox_pb2_grpc as pb_grpc
from tests.conftest import ROOTFS, DaemonProcess, start_daemon

# Jails of the suite's daemons run as these host uids: far from tests/conftest.py (200_000),
# the queue tests and the benchmarks (300_000 ...), so that other daemons on the host never count.
SECURITY_UID_BASE = 500_000
POOL_SIZE = 2
POOL_MAX = 6
RUNNER_ARGV = ["/usr/local/bin/node", "/sandboxd/runner.js"]

# Every process a step starts carries this in its argv; none may outlive its execution.
MARKER = f"sbxsec{uuid.uuid4().hex[:12]}"

# The daemon runs with these in its environment, as a daemon on ECS would; none may reach a jail.
CANARY_SECRET = f"canary-{secrets.token_hex(8)}"
DAEMON_SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIASANDBOXDCANARY00",
    "AWS_SECRET_ACCESS_KEY": CANARY_SECRET,
    "AWS_SESSION_TOKEN": CANARY_SECRET,
    "ECS_CONTAINER_METADATA_URI_V4": f"http://127.0.0.1:9/v4/{CANARY_SECRET}",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": f"/v2/credentials/{CANARY_SECRET}",
    # Would rename every node process if it leaked into the jail's environment.
    "NODE_OPTIONS": "--title=leaked-node-options",
}

T = TypeVar("T")

SETTLE_TIMEOUT_S = 15.0
CLEAN_TIMEOUT_S = 5.0

# --- JavaScript every attack step starts with ---------------------------------------------------

JS = r"""
const fs = require('fs');
const os = require('os');
const net = require('net');
const cp = require('child_process');
const MARKER = __MARKER__;
// The errno code (EPERM, EROFS, ...) of a failed call, or 'OK'.
function codeOf(e) {
  if (e && e.info && e.info.code) return e.info.code;  // ERR_SYSTEM_ERROR wraps the errno
  return (e && e.code) || String(e);
}
function attempt(fn) {
  try { fn(); return 'OK'; } catch (e) { return codeOf(e); }
}
async function attemptAsync(fn) {
  try { await fn(); return 'OK'; } catch (e) { return codeOf(e); }
}
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
// Blocks the whole thread, event loop included, without using CPU.
function blockFor(ms) { Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms); }
// node -e SCRIPT MARKER-name: a process the host can recognise by its argv.
function spawnMarked(name, script, options) {
  return cp.spawn(process.execPath, ['-e', script, MARKER + '-' + name],
                  { stdio: 'ignore', ...(options || {}) });
}
// 'CONNECTED' or the errno code of a connection attempt.
function connectOutcome(options) {
  return new Promise((resolve) => {
    const socket = net.connect(options);
    socket.on('connect', () => { socket.destroy(); resolve('CONNECTED'); });
    socket.on('error', (e) => resolve(codeOf(e)));
  });
}
// A channel frame (docs/channel.md): u32 header_len | u32 body_len | header JSON | body.
function frame(header, body) {
  const head = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header));
  const rest = Buffer.from(body || '');
  const prefix = Buffer.alloc(8);
  prefix.writeUInt32BE(head.length, 0);
  prefix.writeUInt32BE(rest.length, 4);
  return Buffer.concat([prefix, head, rest]);
}
""".replace("__MARKER__", json.dumps(MARKER))


def js(body: str) -> str:
    """A step's code: the helpers above, then `body` (which sets module.exports)."""
    return JS + body


# --- running steps ------------------------------------------------------------------------------


@dataclass
class Outcome:
    """Everything one execution said: its events, or the error its RPC ended with."""

    events: list[pb.ExecutionEvent]
    rpc_error: SandboxError | None = None

    def __repr__(self) -> str:
        finished = self.finished
        told = (
            f"rpc error {self.rpc_error}"
            if self.rpc_error is not None
            else f"finished {finished.status} {finished.error_kind} {finished.error_message!r}"
            if finished is not None
            else "no ExecutionFinished"
        )
        return f"<Outcome of {len(self.events)} events: {told}>"

    @property
    def finished(self) -> pb.ExecutionFinished | None:
        for event in self.events:
            if event.HasField("execution_finished"):
                return event.execution_finished
        return None

    @property
    def kind(self) -> ErrorKind | None:
        """The error kind of a failed execution, None when it succeeded."""
        if self.rpc_error is not None:
            return self.rpc_error.kind
        finished = self.finished
        assert finished is not None, f"no ExecutionFinished: {self!r}"
        if finished.status == pb.EXECUTION_STATUS_SUCCEEDED:
            return None
        return ErrorKind.from_proto(finished.error_kind)

    @property
    def message(self) -> str:
        if self.rpc_error is not None:
            return self.rpc_error.message
        finished = self.finished
        return finished.error_message if finished is not None else ""

    @property
    def logs(self) -> list[pb.Log]:
        return [event.log for event in self.events if event.HasField("log")]

    @property
    def results(self) -> list[Any]:
        """Each finished step's result, decoded (large results come in chunks first)."""
        values: list[Any] = []
        chunks: list[bytes] = []
        binary = False
        for event in self.events:
            if event.HasField("result_chunk"):
                chunks.append(event.result_chunk.data)
                binary = event.result_chunk.binary
            elif event.HasField("step_finished"):
                finished = event.step_finished
                if chunks:
                    raw = b"".join(chunks)
                    values.append(raw if binary else json.loads(raw))
                    chunks = []
                elif finished.WhichOneof("result") == "binary":
                    values.append(finished.binary)
                elif finished.WhichOneof("result") == "json":
                    values.append(json.loads(finished.json))
                else:
                    values.append(None)
        return values

    @property
    def value(self) -> Any:
        """The last step's result; fails the test with the whole story when there is none."""
        assert self.kind is None, f"execution failed: {self.kind}: {self.message}"
        return self.results[-1]


async def execute(
    client: SandboxClient,
    code: str | Sequence[Step],
    *,
    input: object = None,
    limits: Limits | None = None,
    tenant: str = "sec-acme",
    credentials: Mapping[str, str] | None = None,
    execution_id: str | None = None,
) -> Outcome:
    """Run one step (`code`) or several (`Step`s) and collect what happened."""
    steps = [Step("attack", code)] if isinstance(code, str) else list(code)
    events: list[pb.ExecutionEvent] = []
    try:
        async for event in client.execute(
            tenant_id=tenant,
            steps=steps,
            input=input,
            limits=limits,
            credentials=credentials,
            execution_id=execution_id,
            timeout=90,
        ):
            events.append(event)
    except SandboxError as exc:
        return Outcome(events, exc)
    return Outcome(events)


_PROBES: dict[str, Any] = {}


async def probe(client: SandboxClient, key: str, code: str, **kwargs: Any) -> Any:
    """The result of one step that tries many related attacks, run once per key.

    Parametrized cases each assert one entry of it: one execution, a precise outcome per case.
    """
    if key not in _PROBES:
        _PROBES[key] = (await execute(client, code, **kwargs)).value
    return _PROBES[key]


# --- the daemon ---------------------------------------------------------------------------------


@dataclass
class SecurityDaemon:
    """A `sandboxd serve` process whose jails use host uids uid_base .. uid_base + pool_max - 1."""

    running: DaemonProcess
    uid_base: int
    pool_size: int
    pool_max: int

    @property
    def target(self) -> str:
        return self.running.target

    @property
    def pid(self) -> int:
        return self.running.process.pid

    def alive(self) -> bool:
        return self.running.process.poll() is None

    def stop(self) -> int:
        return self.running.stop()

    def status(self) -> pb.GetStatusResponse:
        with grpc.insecure_channel(self.target) as channel:
            stub = pb_grpc.SandboxServiceStub(channel)  # type: ignore[no-untyped-call]
            status: pb.GetStatusResponse = stub.GetStatus(pb.GetStatusRequest(), timeout=10)
        return status

    def run_sync(self, code: str, input: object) -> list[pb.ExecutionEvent]:
        """One step through plain (blocking) gRPC: usable outside any event loop."""
        request = pb.ExecuteRequest(
            tenant_id="sec-health",
            steps=[Step("health", code).to_proto()],
            input=json.dumps(input).encode(),
        )
        with grpc.insecure_channel(self.target) as channel:
            stub = pb_grpc.SandboxServiceStub(channel)  # type: ignore[no-untyped-call]
            return [response.event for response in stub.Execute(request, timeout=60)]

    def jail_processes(self) -> list[psutil.Process]:
        """Every live (not zombie) process running as one of this daemon's jail uids."""
        return uid_processes(self.uid_base, self.pool_max)

    def cgroup_parents(self) -> list[str]:
        """The directories that hold this daemon's jail cgroups (one per hierarchy)."""
        return daemon_cgroup_parents(self.pid)


def start_security_daemon(
    uid_base: int,
    pool_size: int,
    pool_max: int,
    env: Mapping[str, str] | None = None,
    cgroup_dirs: Sequence[str] = (),
) -> SecurityDaemon:
    """A daemon for the suite; in `cgroup_dirs` (see `private_cgroup`) when given."""
    settings = {"SANDBOXD_UID_BASE": str(uid_base), "SANDBOXD_POOL_MAX": str(pool_max)}
    variables = {**settings, **(env or {})}
    if not cgroup_dirs:
        return SecurityDaemon(
            start_daemon(pool_size=pool_size, env=variables), uid_base, pool_size, pool_max
        )
    # The shell moves itself into the cgroup ("0" is the writer), then becomes the daemon.
    script = (
        'for d in "$@"; do echo 0 > "$d/cgroup.procs" || exit 111; done; '
        'exec "$PYTHON" -m sandboxd.cli serve --listen 127.0.0.1:0 --pool-size "$POOL_SIZE"'
    )
    launcher = {"PYTHON": sys.executable, "POOL_SIZE": str(pool_size)}
    process = subprocess.Popen(
        ["sh", "-c", script, "sh", *cgroup_dirs],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **variables, **launcher},
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("sandboxd: serving on "):
        process.kill()
        pytest.fail(f"daemon did not start: {line!r} (exit {process.wait()})")
    running = DaemonProcess(process, line.rsplit(" ", 1)[1].strip())
    return SecurityDaemon(running, uid_base, pool_size, pool_max)


@contextlib.contextmanager
def private_cgroup(name: str) -> Iterator[list[str]]:
    """A cgroup of its own under this process's, in every hierarchy a daemon uses.

    A daemon started in it has its jail cgroups out of sight of every other daemon on the host
    (they look for dead daemons' leftovers next to their own cgroup, and clean them). Yields []
    where no such cgroup can be made (cgroup v2 without controllers delegated below ours).
    """
    dirs = _private_cgroup_dirs(name)
    made: list[str] = []
    try:
        for directory in dirs:
            os.mkdir(directory)
            made.append(directory)
    except OSError:
        dirs = []  # a daemon started in a part of them would be worse than in none
    try:
        yield dirs
    finally:
        for directory in made:
            for below, _, _ in sorted(os.walk(directory), key=lambda w: -len(w[0])):
                with contextlib.suppress(OSError):
                    os.rmdir(below)


def _private_cgroup_dirs(name: str) -> list[str]:
    with open("/proc/self/cgroup") as handle:
        own = [line.rstrip("\n").split(":", 2) for line in handle]
    mounts = _cgroup_mounts()
    v2 = [point for point, fstype, _ in mounts if fstype == "cgroup2" and point == "/sys/fs/cgroup"]
    if v2:
        path = next(p for _, controllers, p in own if controllers == "")
        parent = os.path.normpath(f"{v2[0]}/{path}")
        with open(os.path.join(parent, "cgroup.subtree_control")) as handle:
            delegated = set(handle.read().split())
        root = path == "/"
        return (
            [os.path.join(parent, name)] if root or {"memory", "pids", "cpu"} <= delegated else []
        )
    dirs = []
    for controller in ("memory", "pids", "cpu", "cpuacct", "freezer"):
        point = next(p for p, fstype, opts in mounts if fstype == "cgroup" and controller in opts)
        path = next(p for _, names, p in own if controller in names.split(","))
        dirs.append(os.path.normpath(f"{point}/{path}/{name}"))
    return list(dict.fromkeys(dirs))


def uid_processes(uid_base: int, count: int) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["uids", "status"]):
        uids = process.info["uids"]
        if uids is None or not uid_base <= uids.real < uid_base + count:
            continue
        # A zombie holds nothing but its pid until its parent (or init) reaps it.
        if process.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(process)
    return found


def marked_processes(marker: str = MARKER) -> list[psutil.Process]:
    """Live processes with `marker` in their argv, anywhere on the host."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = process.info["cmdline"] or []
        if process.info["status"] != psutil.STATUS_ZOMBIE and any(marker in a for a in cmdline):
            found.append(process)
    return found


def wait_until_gone(find: Callable[[], Sequence[T]], timeout_s: float = CLEAN_TIMEOUT_S) -> list[T]:
    """Poll `find()` until it returns nothing or the time is up; what it returned last."""
    deadline = time.monotonic() + timeout_s
    while (found := find()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return list(found)


def wait_for(find: Callable[[], Sequence[T]], timeout_s: float = CLEAN_TIMEOUT_S) -> list[T]:
    """Poll `find()` until it returns something or the time is up; what it returned last."""
    deadline = time.monotonic() + timeout_s
    while not (found := find()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return list(found)


def describe(processes: Sequence[psutil.Process]) -> list[str]:
    described = []
    for process in processes:
        with contextlib.suppress(psutil.Error):
            described.append(f"{process.pid} uid={process.uids().real} {process.cmdline()}")
    return described


def kill_processes(processes: Sequence[psutil.Process]) -> None:
    """SIGKILL these processes (ones the suite's own daemons started), by pid."""
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.send_signal(signal.SIGKILL)


# --- cgroups of a daemon ------------------------------------------------------------------------


def _cgroup_mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, fstype, super options) of every cgroup mount of the host."""
    mounts = []
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            fields, _, tail = line.partition(" - ")
            fstype, _, options = tail.split(" ", 2)
            if fstype in ("cgroup", "cgroup2"):
                mounts.append((fields.split(" ")[4], fstype, set(options.strip().split(","))))
    return mounts


def daemon_cgroup_parents(pid: int) -> list[str]:
    """Where `sandboxd-<pid>` (the daemon's parent of jail cgroups) is, in every hierarchy."""
    try:
        with open(f"/proc/{pid}/cgroup") as handle:
            own = [line.rstrip("\n").split(":", 2) for line in handle]
    except (FileNotFoundError, ProcessLookupError):  # gone before open, or before read
        return []
    parents = set()
    for point, fstype, options in _cgroup_mounts():
        for _, controllers, path in own:
            if fstype == "cgroup2" and controllers != "":
                continue
            if fstype == "cgroup" and not set(controllers.split(",")) & options:
                continue
            # v2 moves the daemon into <own>/daemon; the parent sits next to that leaf.
            for base in (path, os.path.dirname(path)):
                candidate = os.path.normpath(f"{point}/{base}/sandboxd-{pid}")
                if os.path.isdir(candidate):
                    parents.add(candidate)
    return sorted(parents)


def process_cgroup_dirs(pid: int) -> dict[str, str]:
    """Where process `pid`'s cgroup is on the host, by controller ("unified" for cgroup v2)."""
    with open(f"/proc/{pid}/cgroup") as handle:
        entries = [line.rstrip("\n").split(":", 2) for line in handle]
    dirs: dict[str, str] = {}
    for point, fstype, options in _cgroup_mounts():
        for _, controllers, path in entries:
            if fstype == "cgroup2" and controllers == "":
                dirs["unified"] = os.path.normpath(point + path)
            elif fstype == "cgroup" and controllers:
                for name in set(controllers.split(",")) & options:
                    dirs[name] = os.path.normpath(point + path)
    return dirs


def cgroup_children(parent: str) -> set[str]:
    return {os.path.basename(d.rstrip("/")) for d in glob.glob(f"{parent}/*/")}


def cgroup_pids(directory: str) -> set[int]:
    try:
        with open(os.path.join(directory, "cgroup.procs")) as handle:
            return {int(line) for line in handle if line.strip()}
    except FileNotFoundError:
        return set()


def jail_cgroup_of(pid: int) -> str | None:
    """The jail id (the name of the cgroup directory) that process `pid` is in."""
    try:
        with open(f"/proc/{pid}/cgroup") as handle:
            for line in handle:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if controllers in ("", "pids", "memory") and path not in ("", "/"):
                    return os.path.basename(path)
    except (FileNotFoundError, ProcessLookupError):  # gone before open, or before read
        return None
    return None


# --- the host's state ----------------------------------------------------------------------------


def _file_state(path: str, *, digest: bool, mtime: bool = True) -> tuple[Any, ...]:
    info = os.lstat(path)
    hashed = ""
    if digest and stat.S_ISREG(info.st_mode) and info.st_size <= 4 * 1024 * 1024:
        hashed = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    when = info.st_mtime_ns if mtime else 0
    return (info.st_mode, info.st_uid, info.st_gid, info.st_size, when, hashed)


def image_state(root: str = ROOTFS) -> dict[str, tuple[Any, ...]]:
    """Every file of the jail image: mode, owner, size, and the digest of small files.

    Not the times: scripts/setup may rebuild the same image meanwhile (on a shared host).
    """
    state = {".": _file_state(root, digest=False, mtime=False)}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(directory, name)
            state[os.path.relpath(path, root)] = _file_state(path, digest=True, mtime=False)
    return state


def host_mounts() -> list[str]:
    with open("/proc/self/mountinfo") as handle:
        return handle.read().splitlines()


@dataclass(frozen=True)
class Canary:
    """A host file that no jail may change: /tmp/<name> on the host, 0644, random content."""

    path: str
    state: tuple[Any, ...]

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    def problems(self) -> list[str]:
        try:
            now = _file_state(self.path, digest=True)
        except FileNotFoundError:
            return [f"canary {self.path} was removed"]
        return [] if now == self.state else [f"canary {self.path} changed: {self.state} -> {now}"]


@dataclass(frozen=True)
class HostSnapshot:
    mounts: list[str]
    image: dict[str, tuple[Any, ...]]


def settle(daemon: SecurityDaemon) -> pb.GetStatusResponse:
    """Wait until the daemon runs nothing and its pool is full again; its status then."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        status = daemon.status()
        pool = status.pool
        idle = pool.leased == 0 and pool.starting == 0 and status.running == 0
        if (idle and pool.warm == daemon.pool_size) or time.monotonic() > deadline:
            return status
        time.sleep(0.05)


def jail_problems(daemon: SecurityDaemon) -> list[str]:
    """What is wrong with the daemon's jails: anything but warm jails (keeper + runner, cgroup)."""
    problems: list[str] = []
    processes = daemon.jail_processes()
    runners = []
    for process in processes:
        with contextlib.suppress(psutil.Error):
            if process.cmdline() == RUNNER_ARGV:
                runners.append(process)
    keepers = set()
    for runner in runners:
        with contextlib.suppress(psutil.Error):
            keepers.add(runner.ppid())
    strays = [p for p in processes if p not in runners and p.pid not in keepers]
    if strays:
        problems.append(f"processes of jail uids that are no warm jail: {describe(strays)}")
    if len(runners) != daemon.pool_size:
        problems.append(f"{len(runners)} runners alive, the pool keeps {daemon.pool_size}")
    jails = {jail_cgroup_of(runner.pid) for runner in runners}
    members = {p.pid for p in processes}
    for parent in daemon.cgroup_parents():
        children = cgroup_children(parent)
        if children != jails:
            problems.append(f"cgroups under {parent}: {sorted(children)}, warm jails: {jails}")
        for child in children:
            inside = cgroup_pids(os.path.join(parent, child))
            if not inside or not inside <= members:
                problems.append(f"cgroup {parent}/{child} holds {inside}, jail processes {members}")
    return problems


def host_problems(daemon: SecurityDaemon, before: HostSnapshot, canary: Canary) -> list[str]:
    """Everything that shows an attack left something behind; [] when the host is clean."""
    if not daemon.alive():
        return [f"the daemon exited with {daemon.running.process.returncode}"]
    status = settle(daemon)
    problems: list[str] = []
    if not status.serving:
        problems.append(f"the daemon is not serving: {status}")
    deadline = time.monotonic() + CLEAN_TIMEOUT_S
    while (jails := jail_problems(daemon)) and time.monotonic() < deadline:
        time.sleep(0.05)
    problems += jails
    strays = wait_until_gone(marked_processes)
    if strays:
        problems.append(f"processes a step started are still alive: {describe(strays)}")
    mounts = host_mounts()
    if mounts != before.mounts:
        added = sorted(set(mounts) - set(before.mounts))
        removed = sorted(set(before.mounts) - set(mounts))
        problems.append(f"host mounts changed: added {added}, removed {removed}")
    image = image_state()
    if image != before.image:
        changed = sorted(
            k for k in image.keys() | before.image.keys() if image.get(k) != before.image.get(k)
        )
        problems.append(f"jail image changed: {changed}")
    problems += canary.problems()
    problems += serve_problems(daemon)
    return problems


def serve_problems(daemon: SecurityDaemon) -> list[str]:
    """[] when the daemon runs an ordinary step and returns its exact result."""
    code = "module.exports = async (ctx) => ({ sum: ctx.input.a + ctx.input.b, pid: process.pid })"
    events = daemon.run_sync(code, {"a": 2, "b": 40})
    results = [json.loads(e.step_finished.json) for e in events if e.HasField("step_finished")]
    if results != [{"sum": 42, "pid": 1}]:
        return [f"the daemon does not serve a normal step: {events}"]
    return []


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="package")
def daemon() -> Iterator[SecurityDaemon]:
    """The suite's daemon (overrides tests/conftest.py's for this package)."""
    running = start_security_daemon(SECURITY_UID_BASE, POOL_SIZE, POOL_MAX, DAEMON_SECRETS)
    yield running
    assert running.stop() == 0
    leftovers = wait_until_gone(running.jail_processes)
    kill_processes(leftovers)
    assert leftovers == [], f"jail processes outlived their daemon: {describe(leftovers)}"


@pytest.fixture(scope="package")
def canary() -> Iterator[Canary]:
    path = f"/tmp/{MARKER}-canary"
    with open(path, "w") as handle:
        handle.write(f"host file, not for jails: {secrets.token_hex(16)}\n")
    os.chmod(path, 0o644)
    yield Canary(path, _file_state(path, digest=True))
    os.unlink(path)


@pytest.fixture(scope="module", autouse=True)
def host_checks(daemon: SecurityDaemon, canary: Canary) -> Iterator[None]:
    """After each group of attacks, nothing of them is left on the host (see the module doc)."""
    before = HostSnapshot(host_mounts(), image_state())
    yield
    problems = host_problems(daemon, before, canary)
    strays = marked_processes()
    kill_processes(strays)  # so that one group's leak does not fail the next group too
    assert problems == []
