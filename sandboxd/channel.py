"""Framing between the daemon and the runner inside a jail.

Wire format of one frame, in both directions::

    u32 header_len (big endian) | u32 body_len (big endian) | header | body

``header`` is a UTF-8 JSON object with a string field ``t`` (the frame type); ``body`` is raw
bytes whose meaning depends on the type (step code, input JSON, log text, a result). See
``docs/channel.md`` for the frame types.

Every byte that comes out of a jail is hostile: the runner shares its process with customer code,
which can write anything to any descriptor it holds. So the reader bounds each frame before it
allocates, decodes each header into its type's exact schema (``sandboxd/frames.py``), and raises
:class:`ProtocolError` for anything else; the caller ends that execution and nothing more.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sandboxd.frames import (
    MAX_HEADER_BYTES,
    ProtocolError,
    RunnerHeader,
    body_problem,
    decode_header,
    header_limit,
    type_of,
)

__all__ = ["EndInsideFrame", "Frame", "ProtocolError", "RunnerChannel", "encode", "read_frame"]

_PREFIX = struct.Struct(">II")
PREFIX_SIZE = _PREFIX.size
_READ_BUFFER_BYTES = 2 * 1024 * 1024
# A frame body is written in pieces of the jail's pipe size (jail/forkserver.py).
_WRITE_PIECE_BYTES = 1024 * 1024
# A body up to this size goes out with its frame's head in one write.
_JOINED_BODY_BYTES = 64 * 1024

# Called with a frame's header, header length and body length before its body is read: raises
# ProtocolError (or the caller's own budget error) to refuse the frame.
FrameCheck = Callable[[RunnerHeader, int, int], None]


@dataclass(frozen=True, slots=True)
class Frame:
    header: RunnerHeader
    body: bytes = b""

    @property
    def type(self) -> str:
        return type_of(self.header)


def encode(header: dict[str, Any], body: bytes = b"") -> bytes:
    """One frame as bytes, ready to write."""
    return encode_head(header, len(body)) + body


def encode_head(header: dict[str, Any], body_len: int) -> bytes:
    """A frame's prefix and header, for a body of `body_len` bytes written after them."""
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    return _PREFIX.pack(len(raw), body_len) + raw


class EndInsideFrame(ProtocolError):
    """The stream ended part way through a frame: the writer died, most likely."""


async def read_frame(reader: asyncio.StreamReader, check: FrameCheck) -> Frame | None:
    """The next frame, or None at a clean end of stream (between frames).

    Each part is bounded before it is read: the header by the largest any frame has, then by its
    own type's; the body by `check`, which sees the decoded header first.
    """
    try:
        prefix = await reader.readexactly(PREFIX_SIZE)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise EndInsideFrame("the stream ended inside a frame prefix") from None
        return None
    header_len, body_len = _PREFIX.unpack(prefix)
    if header_len == 0 or header_len > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {header_len} bytes (limit {MAX_HEADER_BYTES})")
    try:
        raw_header = await reader.readexactly(header_len)
    except asyncio.IncompleteReadError:
        raise EndInsideFrame("the stream ended inside a frame header") from None
    header = decode_header(raw_header)
    if header_len > header_limit(header):
        limit = header_limit(header)
        raise ProtocolError(f"{type_of(header)!r} header of {header_len} bytes (limit {limit})")
    check(header, header_len, body_len)
    try:
        body = await reader.readexactly(body_len) if body_len else b""
    except asyncio.IncompleteReadError:
        raise EndInsideFrame("the stream ended inside a frame body") from None
    return Frame(header, body)


def _within(max_body: int) -> FrameCheck:
    def check(header: RunnerHeader, header_len: int, body_len: int) -> None:
        if problem := body_problem(header, body_len, max_body, max_body):
            raise ProtocolError(f"{type_of(header)!r} frame: {problem}")

    return check


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

    async def send(self, header: dict[str, Any], body: bytes, timeout_s: float) -> None:
        """Write a frame; TimeoutError when the runner has not taken it within `timeout_s`:
        a runner that stops reading holds up no one but its own execution."""
        head = encode_head(header, len(body))
        async with asyncio.timeout(max(0.0, timeout_s)):
            if len(body) <= _JOINED_BODY_BYTES:
                # One write, one wake-up of the runner: a small body costs less to copy.
                self._work.write(head + body)
            else:
                self._work.write(head)
                await self._write_pieces(body)
            await self._work.drain()

    async def _write_pieces(self, body: bytes) -> None:
        """The body a piece at a time: the transport copies whatever the pipe does not take at
        once into its buffer, on the loop (a 64 MiB body stalled it 60 ms); a piece the size of
        the pipe is taken whole, or waits for the runner to read."""
        view = memoryview(body)
        for start in range(0, len(body), _WRITE_PIECE_BYTES):
            if start:
                await asyncio.sleep(0)  # drain returns at once while the runner keeps up
            self._work.write(view[start : start + _WRITE_PIECE_BYTES])
            await self._work.drain()

    async def receive(self, max_body: int) -> Frame | None:
        """The next frame, its body within `max_body` and its type's own limits."""
        return await read_frame(self.events, _within(max_body))

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
