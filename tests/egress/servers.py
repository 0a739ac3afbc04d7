"""The test's "internet" inside its namespace: partners, decoys, a DNS server, a gateway.

Partners (HTTP and HTTPS, one request per connection) answer `GET /bytes/N` with N bytes and
`POST /echo` with the body they got, and remember each request head. Decoys stand where cloud
metadata, the VPC and loopback services would be and count every connection: the tests assert
they count zero. The DNS server answers from a table, including a name whose answer changes
(rebinding) and a name that never answers.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import h11

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def payload(size: int) -> bytes:
    """`size` deterministic bytes that are not all alike."""
    block = hashlib.sha256(b"egress").digest() * 2048  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


@dataclass
class Seen:
    method: str
    target: str
    headers: dict[str, str]
    body_bytes: int


@dataclass
class Partner:
    """A web server: records what reached it."""

    requests: list[Seen] = field(default_factory=list)
    connections: int = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        try:
            request, body = await _read_request(reader, conn)
            self.requests.append(
                Seen(
                    request.method.decode(),
                    request.target.decode(),
                    {k.decode(): v.decode() for k, v in request.headers},
                    len(body),
                )
            )
            answer = self._answer(request, body)
            headers = [("content-length", str(len(answer))), ("connection", "close")]
            writer.write(conn.send(h11.Response(status_code=200, headers=headers)) or b"")
            writer.write(conn.send(h11.Data(data=answer)) or b"")
            writer.write(conn.send(h11.EndOfMessage()) or b"")
            await writer.drain()
        except (ConnectionError, h11.RemoteProtocolError, ssl.SSLError):
            pass
        finally:
            writer.close()

    @staticmethod
    def _answer(request: h11.Request, body: bytes) -> bytes:
        target = request.target.decode().split("?", 1)[0]
        if target.startswith("/bytes/"):
            return payload(int(target.rsplit("/", 1)[1]))
        if target == "/echo":
            return body
        return b"partner says hello\n"


async def _read_request(
    reader: asyncio.StreamReader, conn: h11.Connection
) -> tuple[h11.Request, bytes]:
    request: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(65536)
            conn.receive_data(data)
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert request is not None
            return request, bytes(body)
        else:
            raise h11.RemoteProtocolError(f"unexpected {event!r}", 400)


@dataclass
class Decoy:
    """Something a step must never reach: counts and keeps every connection it gets."""

    address: str
    port: int
    hits: int = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.hits += 1
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 14\r\n\r\nDECOY REACHED\n")
        writer.close()


@dataclass
class Gateway:
    """An operator's upstream CONNECT proxy: records the targets it is asked for, relays."""

    targets: list[str] = field(default_factory=list)
    refuse: bool = False

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ")
            self.targets.append(f"{method} {target}")
            if self.refuse:
                writer.write(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
                return
            host, _, port = target.rpartition(":")
            up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await asyncio.gather(_copy(reader, up_writer), _copy(up_reader, writer))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()


async def half_close_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads until the client's EOF, then says how much it got: works only if EOF is passed on."""
    received = 0
    while data := await reader.read(65536):
        received += len(data)
    writer.write(f"got {received} bytes after EOF\n".encode())
    await writer.drain()
    writer.close()


async def hold_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Reads until the client's EOF, then holds its side open and says nothing."""
    while await reader.read(65536):
        pass
    await asyncio.sleep(3600)


Answer = Callable[[int], list[str]]  # the n-th query of a name (from 0) -> its addresses


@dataclass
class DnsServer(asyncio.DatagramProtocol):
    """Answers A and AAAA from `zone` (name -> type -> answer); unknown names are NXDOMAIN."""

    zone: dict[str, dict[str, Answer]]
    silent: set[str] = field(default_factory=set)  # names that never get an answer
    queries: list[tuple[str, str]] = field(default_factory=list)
    transport: Any = None  # asyncio's datagram transport (not a DatagramTransport subclass)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def count(self, name: str, kind: str) -> int:
        return self.queries.count((name, kind))

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        query = dns.message.from_wire(data)
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        kind = dns.rdatatype.to_text(question.rdtype)
        nth = self.count(name, kind)
        self.queries.append((name, kind))
        if name in self.silent:
            return
        response = dns.message.make_response(query)
        response.flags |= dns.flags.RA
        if name not in self.zone:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif kind in self.zone[name]:
            addresses = self.zone[name][kind](nth)
            if addresses:
                response.answer.append(
                    dns.rrset.from_text_list(question.name, 0, dns.rdataclass.IN, kind, addresses)
                )
        self.transport.sendto(response.to_wire(), addr)


def fixed(*addresses: str) -> Answer:
    return lambda nth: list(addresses)


def first_then(first: list[str], then: list[str]) -> Answer:
    return lambda nth: first if nth == 0 else then
