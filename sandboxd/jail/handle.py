"""The daemon's side of jails: a client of the fork server, and a handle per running jail."""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

from sandboxd.jail.errors import JailError, JailStartError
from sandboxd.jail.protocol import MAX_MESSAGE, spec_to_json
from sandboxd.jail.spec import JailSpec

# The descriptors of a "spawned" message, in this order.
_SPAWNED_FDS = ("work", "events", "output", "pidfd", "proxy")


@dataclass(eq=False)
class Jail:
    """A started jail. Owns its channel descriptors, the pidfd of its init and its egress socket."""

    jail_id: str
    spec: JailSpec
    init_pid: int
    work_fd: int  # daemon -> runner
    events_fd: int  # runner -> daemon
    output_fd: int  # the runner's stdout and stderr
    pidfd: int
    # Listening on the jail's own 127.0.0.1:EGRESS_PROXY_PORT (sandboxd/jail/net.py).
    proxy_fd: int
    exit_status: asyncio.Future[int] = field(repr=False)

    def kill(self) -> None:
        """SIGKILL the jail's init: the kernel then kills every process of its pid namespace."""
        with contextlib.suppress(ProcessLookupError):  # already gone
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    def take_channel_fds(self) -> tuple[int, int, int]:
        """Hand the work, events and output descriptors to their new owner (a RunnerChannel)."""
        fds = (self.work_fd, self.events_fd, self.output_fd)
        self.work_fd = self.events_fd = self.output_fd = -1
        return fds

    def take_proxy_fd(self) -> int:
        """Hand the egress socket to its new owner: the egress proxy, or whoever closes it."""
        if self.proxy_fd < 0:
            raise JailError(f"the egress socket of jail {self.jail_id} was already taken")
        fd, self.proxy_fd = self.proxy_fd, -1
        return fd

    def close_fds(self) -> None:
        """Close the descriptors this handle still owns."""
        for attr in ("work_fd", "events_fd", "output_fd", "pidfd", "proxy_fd"):
            fd = getattr(self, attr)
            if fd >= 0:
                os.close(fd)
                setattr(self, attr, -1)


class JailLauncher:
    """Starts jails through the fork server process.

    The fork server is started from here as a fresh interpreter, so it holds no gRPC threads and
    no daemon state; it dies with the daemon (parent-death signal) and takes every jail along.
    """

    def __init__(self, process: subprocess.Popen[bytes], sock: socket.socket):
        self._process = process
        self._sock = sock
        self._spawning: dict[str, asyncio.Future[tuple[int, list[int]]]] = {}
        self._exits: dict[str, asyncio.Future[int]] = {}
        self._closed = False
        self._send_lock = asyncio.Lock()
        asyncio.get_running_loop().add_reader(sock.fileno(), self._on_readable)

    @property
    def fork_server_pid(self) -> int:
        return self._process.pid

    @classmethod
    async def start(cls, *, seccomp: bool) -> JailLauncher:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        argv = [sys.executable, "-m", "sandboxd.jail.forkserver", str(theirs.fileno())]
        if not seccomp:
            argv.append("--no-seccomp")
        process = subprocess.Popen(
            argv, pass_fds=[theirs.fileno()], env=_forkserver_env(), stdin=subprocess.DEVNULL
        )
        theirs.close()
        # Non-blocking before the first receive: the loop waits for the fork server's "ready"
        # (an interpreter's start) instead of blocking in recv meanwhile.
        ours.setblocking(False)
        ready = await asyncio.get_running_loop().sock_recv(ours, MAX_MESSAGE)
        if not ready or json.loads(ready).get("op") != "ready":
            process.kill()
            raise JailError(f"fork server did not start (exit status {process.wait()})")
        return cls(process, ours)

    async def spawn(self, spec: JailSpec) -> Jail:
        if self._closed:
            raise JailError("the fork server is closed")
        loop = asyncio.get_running_loop()
        started: asyncio.Future[tuple[int, list[int]]] = loop.create_future()
        exit_status: asyncio.Future[int] = loop.create_future()
        self._spawning[spec.jail_id] = started
        self._exits[spec.jail_id] = exit_status
        request = {"op": "spawn", "id": spec.jail_id, "spec": spec_to_json(spec)}
        try:
            # A SOCK_SEQPACKET message goes whole or not at all: if this fails, no jail starts.
            # One sender at a time: asyncio keeps one writer callback per socket, so a second
            # sock_sendall waiting on a full socket would silently replace the first one's.
            async with self._send_lock:
                await loop.sock_sendall(self._sock, json.dumps(request).encode())
        except BaseException:
            self._spawning.pop(spec.jail_id, None)
            self._exits.pop(spec.jail_id, None)
            raise
        try:
            init_pid, fds = await started
        except asyncio.CancelledError:
            # The jail may be starting still: its uid and cgroup are not free to reuse before it
            # is dead, so this does not return before either.
            if started.done() and not started.cancelled() and started.exception() is None:
                _abandon(started.result()[1])  # it arrived just as the cancellation did
            await _until_done(exit_status)
            raise
        except BaseException:
            self._exits.pop(spec.jail_id, None)
            raise
        work, events, output, pidfd, proxy = fds
        return Jail(spec.jail_id, spec, init_pid, work, events, output, pidfd, proxy, exit_status)

    def _on_readable(self) -> None:
        while True:
            try:
                data, fds = _receive(self._sock)
            except BlockingIOError:
                return
            if not data:
                self._fork_server_gone()
                return
            self._dispatch(json.loads(data), fds)

    def _dispatch(self, message: dict[str, Any], fds: list[int]) -> None:
        jail_id = message["id"]
        op = message["op"]
        if op == "spawned":
            future = self._spawning.pop(jail_id)
            if future.done():  # the caller gave up waiting: nobody will own this jail
                _abandon(fds)  # its "exited" follows
            else:
                future.set_result((message["pid"], fds))
        elif op == "failed":
            future = self._spawning.pop(jail_id)
            if not future.done():
                future.set_exception(JailStartError(message["error"]))
            # The fork server reaped the jail's init before it said so: the jail is gone, and
            # never ran, so it has no exit status (this ends a cancelled spawn's wait).
            exit_future = self._exits.pop(jail_id, None)
            if exit_future is not None:
                exit_future.cancel()
        elif op == "exited":
            exit_future = self._exits.pop(jail_id, None)
            if exit_future is not None and not exit_future.done():
                exit_future.set_result(message["status"])

    def _fork_server_gone(self) -> None:
        self._closed = True
        asyncio.get_running_loop().remove_reader(self._sock.fileno())
        error = JailError("the fork server exited")
        pending: list[asyncio.Future[Any]] = [*self._spawning.values(), *self._exits.values()]
        for future in pending:
            if not future.done():
                future.set_exception(error)
        self._spawning.clear()
        self._exits.clear()

    async def close(self) -> None:
        """Stop the fork server; it kills every jail it started on its way out."""
        if not self._closed:
            self._fork_server_gone()
        self._sock.close()
        await asyncio.get_running_loop().run_in_executor(None, self._process.wait)


def _receive(sock: socket.socket) -> tuple[bytes, list[int]]:
    """One message of the fork server and the descriptors it carries, close-on-exec.

    Nothing the daemon ever executes may inherit a jail's descriptors. socket.recv_fds cannot
    ask for that: it ignores its flags argument (CPython 3.11).
    """
    fd_bytes = array.array("i").itemsize * len(_SPAWNED_FDS)
    data, ancillary, _flags, _addr = sock.recvmsg(
        MAX_MESSAGE, socket.CMSG_LEN(fd_bytes), socket.MSG_CMSG_CLOEXEC
    )
    fds = array.array("i")
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    return data, list(fds)


def _abandon(fds: list[int]) -> None:
    """Kill a jail nobody waits for and close its descriptors."""
    with contextlib.suppress(ProcessLookupError):
        signal.pidfd_send_signal(fds[_SPAWNED_FDS.index("pidfd")], signal.SIGKILL)
    for fd in fds:
        os.close(fd)


async def _until_done(exit_status: asyncio.Future[int]) -> None:
    """Wait until a jail is gone, through any number of cancellations.

    Bounded: the fork server answers every spawn within its START_TIMEOUT_S, and a jail that
    started is killed on arrival (_abandon); a fork server that exits takes its jails along.
    """
    while not exit_status.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait([exit_status])
    if not exit_status.cancelled():
        exit_status.exception()  # seen: the caller raises its own CancelledError


def _forkserver_env() -> dict[str, str]:
    # The fork server needs only Python's own variables; jails get an allowlist of their own.
    keep = ("PATH", "PYTHONPATH", "VIRTUAL_ENV", "LANG")
    return {key: os.environ[key] for key in keep if key in os.environ}
