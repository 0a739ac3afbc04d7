"""The jail's network: a namespace of its own with only the loopback interface, brought up, and
on it the listening socket of the egress proxy.

The fork server sets both up from outside, right after it cloned the jail's init into the
namespace: it enters the namespace (setns), works there, and returns to its own. A socket belongs
to the namespace it was created in, so the proxy socket listens on the jail's loopback whichever
process holds it later: only that jail's processes can connect to it, and the jail still has no
route and no interface but `lo`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import struct
from collections.abc import Iterator

from sandboxd.jail.errors import SetupError
from sandboxd.jail.spec import EGRESS_PROXY_HOST, EGRESS_PROXY_PORT
from sandboxd.jail.syscalls import CLONE_NEWNET, setns

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


def bring_up_loopback() -> None:
    """Set `lo` up so code in the jail can talk to itself over 127.0.0.1 and nothing else."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            request = struct.pack("16sH14x", b"lo", 0)
            flags = struct.unpack("16sH14x", fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
            fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))
    except OSError as exc:
        raise SetupError(f"bring up loopback: {exc}") from None


def set_up_jail_network(pid: int, own_netns: int) -> int:
    """Bring up `lo` in the network namespace of process `pid` and open the egress socket there.

    Returns the descriptor of a close-on-exec TCP socket listening on the jail's
    EGRESS_PROXY_HOST:EGRESS_PROXY_PORT. `own_netns` is a descriptor of the caller's namespace,
    to which it returns before this function does.
    """
    with _inside_netns_of(pid, own_netns):
        bring_up_loopback()
        return _listen_for_egress()


@contextlib.contextmanager
def _inside_netns_of(pid: int, own_netns: int) -> Iterator[None]:
    try:
        jail_netns = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise SetupError(f"setns jail netns: {exc}") from None
    try:
        setns(jail_netns, CLONE_NEWNET, "setns jail netns")
    finally:
        os.close(jail_netns)
    try:
        yield
    finally:
        try:
            setns(own_netns, CLONE_NEWNET, "setns back to the fork server's netns")
        except SetupError as exc:
            # Every later jail would get its socket in this jail's namespace: stop the fork server
            # (the daemon then fails every spawn loudly) rather than go on from the wrong place.
            raise SystemExit(f"fork server: {exc}") from None


def _listen_for_egress() -> int:
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # close-on-exec, as always
    except OSError as exc:
        raise SetupError(f"create egress socket: {exc}") from None
    with sock:
        try:
            sock.bind((EGRESS_PROXY_HOST, EGRESS_PROXY_PORT))
        except OSError as exc:
            raise SetupError(f"bind egress socket: {exc}") from None
        try:
            # A step may open many connections at once; the kernel caps this at the jail
            # namespace's net.core.somaxconn.
            sock.listen(socket.SOMAXCONN)
        except OSError as exc:
            raise SetupError(f"listen on egress socket: {exc}") from None
        return sock.detach()
