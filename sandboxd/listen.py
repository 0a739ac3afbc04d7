"""Where the daemon listens, and whether that may be in plaintext.

`listen` is a gRPC address: `HOST:PORT` (`127.0.0.1:50051`, `[::1]:50051`, `0.0.0.0:50051`) or a
unix socket (`unix:/run/sandboxd/grpc.sock`) for a sidecar. Plaintext is allowed on loopback and
on unix sockets; any other address needs TLS (settings tls_cert_file, tls_key_file, and
tls_client_ca_file for client certificates), or the operator's explicit `--insecure`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sandboxd.config import Settings

UNIX_PREFIXES = ("unix:", "unix-abstract:")


@dataclass(frozen=True, slots=True)
class ListenAddress:
    host: str  # empty for a unix socket
    port: int
    unix: bool
    path: str = ""  # of a unix socket; empty for an abstract one

    @property
    def loopback(self) -> bool:
        if self.unix:
            return True
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False  # a host name: it may resolve to anything


def parse_listen(listen: str) -> ListenAddress:
    """The address `listen` names; ValueError when it is not HOST:PORT or a unix socket."""
    if listen.startswith("unix:"):
        path = listen.removeprefix("unix:")  # unix:PATH or unix:///ABSOLUTE_PATH
        return ListenAddress(
            "", 0, unix=True, path="/" + path.lstrip("/") if path.startswith("//") else path
        )
    if listen.startswith(UNIX_PREFIXES):
        return ListenAddress("", 0, unix=True)
    host, colon, port = listen.rpartition(":")
    if not colon or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"listen {listen!r}: expected HOST:PORT or unix:PATH")
    return ListenAddress(host.removeprefix("[").removesuffix("]"), int(port), unix=False)


def transport_security(settings: Settings) -> str:
    """How callers reach the daemon: "mtls", "tls", "unix" or "insecure" (GetStatus says it)."""
    if settings.tls_cert_file:
        return "mtls" if settings.tls_client_ca_file else "tls"
    return "unix" if parse_listen(settings.listen).unix else "insecure"


def check_transport(settings: Settings) -> None:
    """ValueError naming the setting when the transport settings do not hold together."""
    address = parse_listen(settings.listen)
    if bool(settings.tls_cert_file) != bool(settings.tls_key_file):
        raise ValueError("tls_cert_file and tls_key_file go together")
    if settings.tls_client_ca_file and not settings.tls_cert_file:
        raise ValueError("tls_client_ca_file needs tls_cert_file and tls_key_file")
    for name in ("tls_cert_file", "tls_key_file", "tls_client_ca_file"):
        path = getattr(settings, name)
        if path and not os.access(path, os.R_OK):
            raise ValueError(f"{name} {path}: not readable")
    if not address.loopback and not settings.tls_cert_file and not settings.insecure:
        raise ValueError(
            f"listen {settings.listen} is not a loopback address: set tls_cert_file,"
            " tls_key_file and tls_client_ca_file (mTLS), or start with --insecure"
        )


def unavailable_reason(address: ListenAddress) -> str:
    """Why the daemon could not listen at `address` now ("" when it can): checked before gRPC
    binds, which would say only "Failed to bind", and which takes over a unix socket's path
    even while another daemon serves there."""
    if address.unix:
        if not address.path:
            return ""
        with socket.socket(socket.AF_UNIX) as probe, contextlib.suppress(OSError):
            probe.connect(address.path)
            return "another process is serving on this socket"
        directory = os.path.dirname(address.path) or "."
        return "" if os.access(directory, os.W_OK) else f"cannot create a socket in {directory}"
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    try:
        # As gRPC binds: SO_REUSEADDR, no SO_REUSEPORT, so a port in use is refused.
        socket.create_server((address.host, address.port), family=family).close()
    except OSError as exc:
        return os.strerror(exc.errno) if exc.errno else str(exc)
    return ""
