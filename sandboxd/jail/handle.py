"""The daemon's side of jails: a client of the fork server, and a handle per running jail."""

from __future__ import annotations

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
from sandboxd.jail.forkserver import MAX_MESSAGE, spec_to_json
from sandboxd.jail.spec import JailSpec

_MAX_FDS = 4


@dataclass(eq=False)
class Jail:
    """A started jail. Owns its channel descriptors and the pidfd of its init."""

    jail_id: str
    spec: JailSpec
    init_pid: int
    work_fd: int  # daemon -> runner
    events_fd: int  # runner -> daemon
    output_fd: int  # the runner's stdout and stderr
    pidfd: int
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

    def close_fds(self) -> None:
        """Close the descriptors this handle still owns."""
        for attr in ("work_fd", "events_fd", "output_fd", "pidfd"):
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
        asyncio.get_running_loop().add_reader(sock.fileno(), self._on_readable)

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
        ready = await asyncio.get_running_loop().sock_recv(ours, MAX_MESSAGE)
        if not ready or json.loads(ready).get("op") != "ready":
            process.kill()
            raise JailError(f"fork server did not start (exit status {process.wait()})")
        ours.setblocking(False)
        return cls(process, ours)

    async def spawn(self, spec: JailSpec) -> Jail:
        if self._closed:
            raise JailError("the fork server is closed")
        loop = asyncio.get_running_loop()
        started: asyncio.Future[tuple[int, list[int]]] = loop.create_future()
        self._spawning[spec.jail_id] = started
        self._exits[spec.jail_id] = loop.create_future()
        request = {"op": "spawn", "id": spec.jail_id, "spec": spec_to_json(spec)}
        await loop.sock_sendall(self._sock, json.dumps(request).encode())
        try:
            init_pid, fds = await started
        except BaseException:
            self._exits.pop(spec.jail_id, None)
            raise
        work, events, output, pidfd = fds
        return Jail(
            spec.jail_id, spec, init_pid, work, events, output, pidfd, self._exits[spec.jail_id]
        )

    def _on_readable(self) -> None:
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(self._sock, MAX_MESSAGE, _MAX_FDS)
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
                _abandon(fds)
            else:
                future.set_result((message["pid"], fds))
        elif op == "failed":
            future = self._spawning.pop(jail_id)
            if not future.done():
                future.set_exception(JailStartError(message["error"]))
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


def _abandon(fds: list[int]) -> None:
    """Kill a jail nobody waits for (its pidfd is the last descriptor) and close its pipes."""
    with contextlib.suppress(ProcessLookupError):
        signal.pidfd_send_signal(fds[-1], signal.SIGKILL)
    for fd in fds:
        os.close(fd)


def _forkserver_env() -> dict[str, str]:
    # The fork server needs only Python's own variables; jails get an allowlist of their own.
    keep = ("PATH", "PYTHONPATH", "VIRTUAL_ENV", "LANG")
    return {key: os.environ[key] for key in keep if key in os.environ}
