"""A client of the egress proxy, as a jail's code would be: raw requests, CONNECT, TLS inside."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

import h11

from tests.egress.servers import Streams


@dataclass
class Reply:
    status_line: str
    headers: dict[str, str]
    body: bytes

    @property
    def status(self) -> int:
        return int(self.status_line.split(" ")[1])


def parse_reply(data: bytes) -> Reply:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Reply(lines[0], headers, body)


async def read_all(reader: asyncio.StreamReader) -> bytes:
    chunks = []
    try:
        while data := await reader.read(65536):
            chunks.append(data)
    except (ConnectionResetError, ssl.SSLError):
        pass
    return b"".join(chunks)


async def ask(port: int, raw: bytes, host: str = "127.0.0.1") -> Reply:
    """Sends `raw` to the proxy and reads its whole answer (the proxy closes after one)."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(raw)
    await writer.drain()
    try:
        return parse_reply(await read_all(reader))
    finally:
        writer.close()


def connect_request(authority: str) -> bytes:
    return f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode()


async def open_tunnel(port: int, authority: str) -> tuple[str, Streams]:
    """CONNECT; returns the proxy's status line and the streams (a tunnel if it said 200)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(connect_request(authority))
    head = await reader.readuntil(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0].decode(), (reader, writer)


@dataclass
class Response:
    status: int
    body: bytes


async def https_request(
    port: int,
    authority: str,
    server_name: str,
    context: ssl.SSLContext,
    *,
    method: str = "GET",
    target: str = "/",
    body: bytes = b"",
) -> Response:
    """One HTTPS request through a CONNECT tunnel, TLS end to end with `server_name`."""
    status_line, (reader, writer) = await open_tunnel(port, authority)
    assert status_line == "HTTP/1.1 200 Connection established", status_line
    await writer.start_tls(context, server_hostname=server_name)
    try:
        return await http_exchange((reader, writer), server_name, method, target, body)
    finally:
        writer.close()


async def http_exchange(
    streams: Streams, host: str, method: str, target: str, body: bytes
) -> Response:
    reader, writer = streams
    conn = h11.Connection(h11.CLIENT)
    headers = [("host", host), ("content-length", str(len(body)))]
    writer.write(conn.send(h11.Request(method=method, target=target, headers=headers)) or b"")
    writer.write(conn.send(h11.Data(data=body)) or b"")
    writer.write(conn.send(h11.EndOfMessage()) or b"")
    await writer.drain()
    status, received = 0, bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(65536))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            received += event.data
        elif isinstance(event, h11.EndOfMessage):
            return Response(status, bytes(received))
