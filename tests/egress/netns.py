"""A network namespace of the test's own, with no route out, and an event loop that lives in it.

Everything an egress test does on the network happens on `NetnsLoop`'s thread, which joined the
namespace with setns(2) before it created any socket; processes started from it inherit the
namespace. Its only interface is its own loopback, carrying the test's addresses as /32 and /128
host addresses (loopback rather than a dummy interface: some kernels, this CI's among them, have
no dummy driver): no veth to the host, no default route, no subnet route, so a bug cannot send a
packet anywhere but to an address bound inside it (ENETUNREACH otherwise).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import secrets
import subprocess
import threading
from collections.abc import Coroutine, Iterable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


class Netns:
    """`ip netns add sbx-eg-<random>`, loopback up and carrying `addresses`."""

    def __init__(self, addresses: Iterable[str]):
        self.name = f"sbx-eg-{secrets.token_hex(4)}"
        self.path = f"/var/run/netns/{self.name}"
        _ip("netns", "add", self.name)
        try:
            _ip("-n", self.name, "link", "set", "lo", "up")
            for address in addresses:
                prefix = "/128" if ":" in address else "/32"
                extra = ["nodad"] if ":" in address else []
                _ip("-n", self.name, "addr", "add", address + prefix, "dev", "lo", *extra)
        except BaseException:
            self.remove()
            raise

    def routes(self) -> str:
        return _ip("-n", self.name, "route", "show") + _ip("-n", self.name, "-6", "route", "show")

    def inode(self) -> int:
        return os.stat(self.path).st_ino

    def remove(self) -> None:
        _ip("netns", "del", self.name)


def current_netns_inode() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


class NetnsLoop:
    """An asyncio loop on a thread inside `netns`; `run` executes a coroutine there."""

    def __init__(self, netns: Netns):
        self.netns = netns
        self._ready: Future[asyncio.AbstractEventLoop] = Future()
        self._thread = threading.Thread(target=self._main, name=f"netns-{netns.name}", daemon=True)
        self._thread.start()
        self.loop = self._ready.result(timeout=10)

    def _main(self) -> None:
        try:
            fd = os.open(self.netns.path, os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    errno = ctypes.get_errno()
                    raise OSError(errno, f"setns into {self.netns.name}: {os.strerror(errno)}")
            finally:
                os.close(fd)
            if current_netns_inode() != self.netns.inode():
                raise RuntimeError(f"thread is not in {self.netns.name} after setns")
            loop = asyncio.new_event_loop()
        except BaseException as error:
            self._ready.set_exception(error)
            return
        self._ready.set_result(loop)
        loop.run_forever()
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(self._guarded(coroutine), self.loop).result(timeout)

    async def _guarded(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if current_netns_inode() != self.netns.inode():
            coroutine.close()
            raise RuntimeError("the netns loop left its namespace")
        return await coroutine

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=30)
