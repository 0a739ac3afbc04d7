"""Opening a connection to exactly the address that was checked, directly or through a gateway.

The dialer is handed addresses, never names: the check and the connect use the same address, so
a DNS answer that changes between them (rebinding) cannot redirect the connection. With an
upstream proxy (the operator's gateway) it sends `CONNECT <checked-address>:<port>` there.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus

import h11

from sandboxd.egress.addresses import IPAddress
from sandboxd.egress.hosts import Host, format_host
from sandboxd.egress.request import READ_SIZE, RequestError, split_authority
from sandboxd.egress.resolver import ResolutionError, Resolver

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class DialError(Exception):
    """No checked address could be reached; `timed_out` tells a timeout from a refusal."""

    def __init__(self, reason: str, *, timed_out: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.timed_out = timed_out


@dataclass(frozen=True, slots=True)
class Upstream:
    host: Host
    port: int

    @classmethod
    def parse(cls, url: str) -> Upstream:
        scheme, separator, authority = url.rstrip("/").partition("://")
        if scheme != "http" or not separator:
            raise ValueError(f"upstream proxy {url!r}: expected http://host:port")
        try:
            host, port = split_authority(authority, None)
        except RequestError as error:
            raise ValueError(f"upstream proxy {url!r}: {error.reason}") from None
        return cls(host, port)

    def __str__(self) -> str:
        return f"{format_host(self.host)}:{self.port}"


async def _open(address: IPAddress, port: int) -> Streams:
    family = socket.AF_INET if isinstance(address, ipaddress.IPv4Address) else socket.AF_INET6
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (str(address), port))
        return await asyncio.open_connection(sock=sock)
    except BaseException:
        sock.close()
        raise


class Dialer:
    def __init__(self, resolver: Resolver, upstream: Upstream | None = None):
        self._resolver = resolver
        self._upstream = upstream

    async def dial(
        self, addresses: Sequence[IPAddress], port: int, timeout_s: float
    ) -> tuple[Streams, IPAddress]:
        """Streams to the first of `addresses` that answers, within `timeout_s` for all."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        errors = []
        for address in addresses:
            target = f"{format_host(address)}:{port}"
            try:
                async with asyncio.timeout_at(deadline):
                    return await self._dial_one(address, port), address
            except TimeoutError:
                raise DialError(
                    f"connecting to {target} timed out after {timeout_s:g} s", timed_out=True
                ) from None
            except OSError as error:
                # asyncio's message names the address again; the errno's text is what matters.
                cause = os.strerror(error.errno) if error.errno else str(error)
                errors.append(f"connecting to {target} failed: {cause}")
            except DialError as error:
                errors.append(error.reason)
        raise DialError("; ".join(errors))

    async def _dial_one(self, address: IPAddress, port: int) -> Streams:
        if self._upstream is None:
            return await _open(address, port)
        return await self._through_upstream(self._upstream, address, port)

    async def _through_upstream(self, upstream: Upstream, address: IPAddress, port: int) -> Streams:
        # The gateway is the operator's own: its address is not subject to the deny list.
        try:
            gateway = (await self._resolver.resolve(upstream.host))[0]
        except ResolutionError as error:
            raise DialError(f"upstream proxy {upstream}: {error.reason}") from None
        reader, writer = await _open(gateway, upstream.port)
        try:
            await _upstream_connect(reader, writer, f"{format_host(address)}:{port}", upstream)
        except BaseException:
            writer.close()
            raise
        return reader, writer


async def _upstream_connect(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: str, upstream: Upstream
) -> None:
    client = h11.Connection(h11.CLIENT)
    headers = [(b"host", target.encode("ascii"))]
    writer.write(client.send(h11.Request(method=b"CONNECT", target=target, headers=headers)) or b"")
    await writer.drain()
    event = await _read_response(reader, client, upstream)
    if not 200 <= event.status_code < 300:
        phrase = event.reason.decode("latin-1") or HTTPStatus(event.status_code).phrase
        raise DialError(
            f"upstream proxy {upstream} refused CONNECT {target}: {event.status_code} {phrase}"
        )
    early, _ = client.trailing_data
    if early:
        raise DialError(f"upstream proxy {upstream} sent data before the tunnel was used")


async def _read_response(
    reader: asyncio.StreamReader, client: h11.Connection, upstream: Upstream
) -> h11.Response:
    while True:
        try:
            event = client.next_event()
        except h11.RemoteProtocolError as error:
            raise DialError(f"upstream proxy {upstream} answered garbage: {error}") from None
        if isinstance(event, h11.Response):
            return event
        if event is h11.NEED_DATA:
            data = await reader.read(READ_SIZE)
            if not data:
                raise DialError(f"upstream proxy {upstream} closed before answering")
            client.receive_data(data)
        # anything else is an informational (1xx) response: wait for the final one
