"""The fork server: a small single-threaded process that forks every jail.

The daemon is a threaded gRPC process, and forking a threaded process is unsafe; so at start the
daemon runs this module as its own process (`python -m sandboxd.jail.forkserver FD`), before any
jail is needed. It compiles the seccomp policy once, then serves spawn requests on a
SOCK_SEQPACKET socket: each answer carries the jail's channel descriptors, a pidfd of its init and
the egress proxy's listening socket inside the jail's network namespace (SCM_RIGHTS; see
sandboxd/jail/net.py). Each jail's init is its child, cloned straight into the jail's namespaces
(launch.py) and, on cgroup v2, into the jail's cgroup (InitCloner): it reaps them and reports
their exit status. If the daemon goes away (socket closed, or the daemon dies: parent-death
signal), every jail goes with it.

Messages are JSON, one per packet:

    daemon -> server  {"op": "spawn", "id": jail_id, "spec": {...}}
    server -> daemon  {"op": "spawned", "id": ..., "pid": init_pid}
                      + fds [work, events, output, pidfd, proxy]
                      {"op": "failed", "id": ..., "error": "pivot_root: [Errno 22] ..."}
                      {"op": "exited", "id": ..., "status": wait_status}
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gc
import json
import os
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

import prctl

from sandboxd.jail import cgroups, ids, launch, net
from sandboxd.jail.errors import JailStartError, SetupError
from sandboxd.jail.protocol import MAX_MESSAGE, spec_from_json
from sandboxd.jail.spec import JailSpec
from sandboxd.jail.syscalls import Clone3Refused, clone, clone3_into_cgroup

START_TIMEOUT_S = 10.0
_FIRST_PIPE_FD = 10
# Megabyte payloads cross the channel in fewer, larger reads than through 64 KiB pipes; the pages
# are only allocated while data is in flight.
_CHANNEL_PIPE_BYTES = 1024 * 1024


class InitCloner:
    """How the fork server makes a jail's init: the one switch between cgroup v2 and v1.

    On cgroup v2 the init is born inside the jail's cgroup (clone3 with CLONE_INTO_CGROUP), so no
    process migrates: a jail's first write into cgroup.procs waits for an RCU grace period,
    12-15 ms of a start (benchmarks/README.md, "A jail's start to ready"). On v1, which has no
    such clone, and wherever clone3 is refused (an old kernel, a container runtime's seccomp
    profile), the init is cloned as before and joins its cgroups itself. A refusal is met once:
    it is logged and remembered, and every later jail takes the v1 path at once.
    """

    def __init__(self, cgroup_v2: bool):
        self.into_cgroup = cgroup_v2

    def clone(self, spec: JailSpec) -> tuple[int, bool]:
        """(the init's pid, 0 in the init; whether it was born in its cgroup)."""
        if not (self.into_cgroup and spec.cgroup_procs):
            return clone(launch.CLONED_NAMESPACES), False
        (procs,) = spec.cgroup_procs  # one directory on v2
        directory = os.path.dirname(procs)
        try:
            cgroup_fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise SetupError(f"open cgroup {directory}: {exc}") from None
        try:
            return clone3_into_cgroup(launch.CLONED_NAMESPACES, cgroup_fd), True
        except Clone3Refused as exc:
            self.into_cgroup = False
            print(f"fork server: {exc}: jails join their cgroup after clone", file=sys.stderr)
            return clone(launch.CLONED_NAMESPACES), False
        finally:
            os.close(cgroup_fd)


@dataclass(frozen=True, slots=True)
class ForkServerSelf:
    """What the fork server keeps of itself for the jails it starts."""

    pid: int
    pidfd: int  # the inits' way to know their parent is alive (launch.py)
    netns: int  # to come back to after setting up a jail's network
    cloner: InitCloner


class Spawned:
    """The fork server's side of one started jail: what it hands to the daemon."""

    def __init__(self, init_pid: int, pidfd: int, proxy: int, fds: tuple[int, int, int]):
        self.init_pid = init_pid
        self.pidfd = pidfd
        self.proxy = proxy
        self.work, self.events, self.output = fds


def spawn(spec: JailSpec, seccomp_program: bytes, own: ForkServerSelf) -> Spawned:
    """Clone the jail's init into its user and pid namespaces (and on cgroup v2 its cgroup), set up
    its ids and network once it made the others, and wait until the runner is executing.

    On failure the init is dead (reaped) before this raises.
    """
    to_server_r, to_server_w = _pipe()
    from_server_r, from_server_w = _pipe()
    errors_r, errors_w = _pipe()
    work_r, work_w = _pipe(_CHANNEL_PIPE_BYTES)
    events_r, events_w = _pipe(_CHANNEL_PIPE_BYTES)
    output_r, output_w = _pipe()
    child_fds = launch.ChildFds(
        own.pidfd, to_server_w, from_server_r, errors_w, work_r, events_w, output_w
    )
    theirs = (to_server_w, from_server_r, errors_w, work_r, events_w, output_w)
    try:
        init_pid, born_in_cgroup = own.cloner.clone(spec)
    except SetupError:
        for fd in (*theirs, to_server_r, from_server_w, errors_r, work_w, events_r, output_r):
            os.close(fd)
        raise
    if init_pid == 0:
        launch.run_init(spec, child_fds, seccomp_program, born_in_cgroup=born_in_cgroup)
    for fd in theirs:
        os.close(fd)
    ours = (work_w, events_r, output_r)
    try:
        pidfd, proxy = _bring_up(
            spec, init_pid, to_server_r, from_server_w, errors_r, own_netns=own.netns
        )
    except BaseException:
        _abandon(init_pid)
        for fd in ours:
            os.close(fd)
        raise
    finally:
        for fd in (to_server_r, from_server_w, errors_r):
            os.close(fd)
    return Spawned(init_pid, pidfd, proxy, ours)


def _pipe(size: int = 0) -> tuple[int, int]:
    """A close-on-exec pipe numbered above the runner's fds 0-4, so dup2 into them is safe."""
    ends = []
    for fd in os.pipe2(os.O_CLOEXEC):
        ends.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _FIRST_PIPE_FD))
        os.close(fd)
    if size:
        fcntl.fcntl(ends[1], fcntl.F_SETPIPE_SZ, size)
    return ends[0], ends[1]


def _bring_up(
    spec: JailSpec, init_pid: int, to_server: int, from_server: int, errors: int, *, own_netns: int
) -> tuple[int, int]:
    """(pidfd of the init, egress socket) once the runner is executing."""
    deadline = time.monotonic() + START_TIMEOUT_S
    # The init is our child: its pid is not reused before we reap it.
    pidfd = os.pidfd_open(init_pid)
    try:
        if _read(to_server, 1, deadline) != b"u":
            raise JailStartError(_child_error(errors, deadline))
        ids.write_id_maps(init_pid, spec.host_uid, spec.host_gid)
        # Before the init goes on: once it takes the jail's ids it is no longer dumpable, and only
        # a process with CAP_SYS_PTRACE (which a container's fork server lacks) may then open its
        # namespaces.
        proxy = net.set_up_jail_network(init_pid, own_netns)
    except BaseException:
        os.close(pidfd)
        raise
    try:
        os.write(from_server, b"g")
        message = _child_error(errors, deadline)
        if message:
            raise JailStartError(message)
    except BaseException:
        os.close(pidfd)
        os.close(proxy)
        raise
    return pidfd, proxy


def _read(fd: int, size: int, deadline: float) -> bytes:
    """Up to `size` bytes, fewer only at EOF; JailStartError past the deadline."""
    data = b""
    while len(data) < size:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            raise JailStartError("jail did not start in time")
        chunk = os.read(fd, size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _child_error(errors: int, deadline: float) -> str:
    """The setup error the jail reported, or "" once the pipe closed at exec."""
    return _read(errors, 4096, deadline).decode(errors="replace")


def _abandon(init_pid: int) -> None:
    """Kill the init and reap it: the kernel kills the rest of its pid namespace, so the jail's
    uid and cgroup are free to reuse once the daemon hears of the failure."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(init_pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(init_pid, 0)


class Server:
    """The request loop. Single-threaded by design: it forks."""

    def __init__(self, sock: socket.socket, seccomp_program: bytes, own: ForkServerSelf):
        self.sock = sock
        self.seccomp_program = seccomp_program
        self.own = own
        self.inits: dict[int, str] = {}

    def serve(self) -> None:
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        try:
            while True:
                ready, _, _ = select.select([self.sock.fileno(), wake_r], [], [])
                if wake_r in ready:
                    _drain(wake_r)
                    self._reap()
                if self.sock.fileno() in ready and not self._handle(self.sock.recv(MAX_MESSAGE)):
                    return
        finally:
            for init_pid in self.inits:
                _abandon(init_pid)

    def _handle(self, packet: bytes) -> bool:
        if not packet:
            return False  # the daemon closed its end: shut down
        request = json.loads(packet)
        if request.get("op") != "spawn":
            raise SystemExit(f"fork server: unknown request {request.get('op')!r}")
        self._spawn(request["id"], spec_from_json(request["spec"]))
        return True

    def _spawn(self, jail_id: str, spec: JailSpec) -> None:
        try:
            spawned = spawn(spec, self.seccomp_program, self.own)
        except (SetupError, JailStartError, OSError) as exc:
            self._send({"op": "failed", "id": jail_id, "error": str(exc)})
            return
        self.inits[spawned.init_pid] = jail_id
        fds = [spawned.work, spawned.events, spawned.output, spawned.pidfd, spawned.proxy]
        self._send({"op": "spawned", "id": jail_id, "pid": spawned.init_pid}, fds)
        for fd in fds:
            os.close(fd)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            jail_id = self.inits.pop(pid, None)
            if jail_id is not None:
                self._send({"op": "exited", "id": jail_id, "status": status})

    def _send(self, message: dict[str, Any], fds: list[int] | None = None) -> None:
        data = json.dumps(message).encode()
        if fds:
            socket.send_fds(self.sock, [data], fds)
        else:
            self.sock.send(data)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _compile_seccomp() -> bytes:
    """The policy, compiled in a child of ours: libseccomp and its bindings never load here, so
    every jail's copy of this process has a megabyte less to copy and to tear down (issue 13)."""
    from sandboxd.jail import seccomp  # every init loads the program with it: imported once here

    program_r, program_w = os.pipe2(os.O_CLOEXEC)
    compiler = os.fork()
    if compiler == 0:
        os.close(program_r)
        try:
            with open(program_w, "wb") as out:
                out.write(seccomp.compile_policy())
        except BaseException as exc:
            print(f"fork server: compile the seccomp policy: {exc}", file=sys.stderr)
            os._exit(1)
        os._exit(0)
    os.close(program_w)
    with open(program_r, "rb") as program:
        compiled = program.read()
    status = os.waitpid(compiler, 0)[1]
    if status != 0:
        raise SystemExit(f"fork server: no seccomp policy ({describe_exit(status)})")
    return compiled


def describe_exit(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"the compiler was killed by signal {os.WTERMSIG(status)}"
    return f"the compiler exited with status {os.waitstatus_to_exitcode(status)}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sandboxd-forkserver")
    parser.add_argument("fd", type=int, help="the SOCK_SEQPACKET socket to the daemon")
    parser.add_argument("--no-seccomp", action="store_true")
    args = parser.parse_args(argv)
    prctl.set_name("sandboxd-fork")  # for ps and perf: otherwise "python", as the daemon
    prctl.set_pdeathsig(signal.SIGKILL)
    if os.getppid() == 1:
        sys.exit("fork server: the daemon is already gone")
    sock = socket.socket(fileno=args.fd)
    program = b"" if args.no_seccomp else _compile_seccomp()
    own = ForkServerSelf(
        pid=os.getpid(),
        pidfd=os.pidfd_open(os.getpid()),  # close-on-exec, as every pidfd
        netns=os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC),
        cloner=InitCloner(cgroup_v2=cgroups.detect() == "v2"),
    )
    # What start-up made stays as it is: no collection walks (and so writes) those objects' pages,
    # which every jail's clone shares with this process until it writes them.
    gc.freeze()
    sock.send(json.dumps({"op": "ready", "pid": own.pid}).encode())
    Server(sock, program, own).serve()


if __name__ == "__main__":
    main()
