"""The jail's network: a namespace of its own with only the loopback interface, brought up."""

from __future__ import annotations

import fcntl
import socket
import struct

from sandboxd.jail.errors import SetupError

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
