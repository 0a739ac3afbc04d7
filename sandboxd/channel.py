"""Framing between the daemon and the runner inside a jail.

Wire format of one frame, in both directions::

    u32 header_len (big endian) | u32 body_len (big endian) | header | body

``header`` is a UTF-8 JSON object with a string field ``t`` (the frame type); ``body`` is raw
bytes whose meaning depends on the type (step code, input JSON, log text, a result). See
``docs/channel.md`` for the frame types.

Every byte that comes out of a jail is hostile: the runner shares its process with customer code,
which can write anything to any descriptor it holds. So the reader bounds each frame before it
allocates, requires a JSON object with a string ``t``, and raises :class:`ProtocolError` for
anything else; the caller ends that execution and nothing more.
"""

from __future__ import annotations

import asyncio
import json
import struct
from dataclasses import dataclass
from typing import Any

_PREFIX = struct.Struct(">II")
PREFIX_SIZE = _PREFIX.size

# A header carries names, kinds, messages and stacks: generous, but never megabytes.
MAX_HEADER_BYTES = 256 * 1024
_READ_BUFFER_BYTES = 2 * 1024 * 1024


class ProtocolError(Exception):
    """The peer sent something that is not a well-formed frame within the limits."""


@dataclass(frozen=True, slots=True)
class Frame:
    header: dict[str, Any]
    body: bytes = b""

    @property
    def type(self) -> str:
        return str(self.header["t"])


def encode(header: dict[str, Any], body: bytes = b"") -> bytes:
    """One frame as bytes, ready to write."""
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    return _PREFIX.pack(len(raw), len(body)) + raw + body


def parse_prefix(prefix: bytes, max_body: int) -> tuple[int, int]:
    """Header and body lengths from a frame prefix, refused when over the caps."""
    header_len, body_len = _PREFIX.unpack(prefix)
    if header_len == 0 or header_len > MAX_HEADER_BYTES:
        raise ProtocolError(f"frame header of {header_len} bytes (limit {MAX_HEADER_BYTES})")
    if body_len > max_body:
        raise ProtocolError(f"frame body of {body_len} bytes (limit {max_body})")
    return header_len, body_len


def parse_header(raw: bytes) -> dict[str, Any]:
    """The header object, or ProtocolError for anything but a JSON object with a string `t`."""
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"frame header is not UTF-8 JSON: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("t"), str):
        raise ProtocolError("frame header is not an object with a string 't'")
    return header


async def read_frame(reader: asyncio.StreamReader, max_body: int) -> Frame | None:
    """The next frame, or None at a clean end of stream (between frames)."""
    try:
        prefix = await reader.readexactly(PREFIX_SIZE)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ProtocolError("stream ended inside a frame prefix") from None
        return None
    header_len, body_len = parse_prefix(prefix, max_body)
    try:
        raw_header = await reader.readexactly(header_len)
        body = await reader.readexactly(body_len) if body_len else b""
    except asyncio.IncompleteReadError:
        raise ProtocolError("stream ended inside a frame") from None
    return Frame(parse_header(raw_header), body)


class RunnerChannel:
    """The daemon's end of one jail's pipes, on the event loop."""

    def __init__(
        self,
        events: asyncio.StreamReader,
        output: asyncio.StreamReader,
        work: asyncio.StreamWriter,
        read_transports: list[asyncio.BaseTransport],
    ):
        self.events = events
        self.output = output
        self._work = work
        self._read_transports = read_transports

    @classmethod
    async def open(cls, work_fd: int, events_fd: int, output_fd: int) -> RunnerChannel:
        """Wrap the pipes; the channel takes ownership of the three descriptors."""
        events, events_transport = await _pipe_reader(events_fd)
        output, output_transport = await _pipe_reader(output_fd)
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin,
            open(work_fd, "wb", buffering=0),  # noqa: SIM115 - the transport owns it
        )
        writer = asyncio.StreamWriter(transport, protocol, None, loop)
        return cls(events, output, writer, [events_transport, output_transport])

    async def send(self, header: dict[str, Any], body: bytes = b"") -> None:
        self._work.write(encode(header, body))
        await self._work.drain()

    async def receive(self, max_body: int) -> Frame | None:
        return await read_frame(self.events, max_body)

    def close(self) -> None:
        self._work.close()
        for transport in self._read_transports:
            transport.close()


async def _pipe_reader(fd: int) -> tuple[asyncio.StreamReader, asyncio.BaseTransport]:
    loop = asyncio.get_running_loop()
    # The limit is also how much is buffered before reading pauses: large enough that a
    # megabyte result does not stop and restart the pipe at every quarter megabyte.
    reader = asyncio.StreamReader(limit=_READ_BUFFER_BYTES, loop=loop)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader),
        open(fd, "rb", buffering=0),  # noqa: SIM115 - the transport owns it
    )
    return reader, transport
