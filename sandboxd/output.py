"""Everything that comes out of one jail, read within the running step's budget.

Two readers (the event pipe's frames, the raw stdout/stderr pipe) feed one queue that the
execution takes from. Each frame is checked before its body is read: it must belong to the
running step, fit its type's limits (sandboxd/frames.py) and the step's budget of frames, header
bytes and log bytes. The first thing wrong ends reading for good, and what was wrong is the last
item of the queue: a ProtocolError (the frame broke the protocol), an OutputLimit (the step went
over its budget), EndOfEvents (the event pipe ended: the runner is exiting or closed it).

So the queue never holds more than one step's budget, whatever the jail writes, and a budget
crossed is known as soon as the offending frame's prefix and header are in.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from sandboxd.channel import EndInsideFrame, Frame, RunnerChannel, read_frame
from sandboxd.frames import (
    ERROR_HEADER_BYTES,
    ProtocolError,
    Ready,
    Result,
    RunnerHeader,
    body_problem,
    type_of,
)
from sandboxd.frames import Error as ErrorHeader
from sandboxd.frames import Log as LogHeader
from sandboxd.limits import Limits

_RAW_READ_BYTES = 64 * 1024
_QUEUE_ITEMS = 256
# A real runner sends a frame per log line, then one truncation marker, then one result or
# error; an empty line is a frame too, and the runner counts bytes, not lines. Lines past the
# step's line limit are dropped and the step goes on; far past its limits a step is flooding
# on purpose: logs beyond twice its byte limit (as the runner stops it, plus slack for raw
# output the runner does not count), or four times its line limit (each frame costs the daemon
# tens of microseconds: 40,016 at the default limit).
_BYTES_FACTOR = 2
_LINES_FACTOR = 4
_FLOOD_SLACK_BYTES = 64 * 1024
_FLOOD_SLACK_ITEMS = 16
# What a real log frame's header takes on average ({"t":"log","seq":N,"level":"...","ts":N}).
_LOG_HEADER_BYTES = 96


class OutputLimit(Exception):
    """The step sent more than its budget allows."""


class EndOfEvents(Exception):
    """The event pipe ended; `inside_frame` when it ended part way through a frame."""

    def __init__(self, inside_frame: bool):
        super().__init__("the event pipe ended" + (" inside a frame" if inside_frame else ""))
        self.inside_frame = inside_frame


Ending = ProtocolError | OutputLimit | EndOfEvents
Item = Frame | bytes | Ending


@dataclass(frozen=True, slots=True)
class Budget:
    """What one step may send out of its jail before it is stopped with OUTPUT_LIMIT."""

    items: int  # frames and raw output reads
    header_bytes: int
    log_bytes: int  # log bodies and raw output
    log_limit: int  # the step's own log limit: the largest log line
    result_limit: int

    @classmethod
    def of(cls, limits: Limits) -> Budget:
        items = limits.log_lines * _LINES_FACTOR + _FLOOD_SLACK_ITEMS
        return cls(
            items=items,
            header_bytes=items * _LOG_HEADER_BYTES + ERROR_HEADER_BYTES,
            log_bytes=limits.log_bytes * _BYTES_FACTOR + _FLOOD_SLACK_BYTES,
            log_limit=limits.log_bytes,
            result_limit=limits.result_bytes,
        )


class JailOutput:
    """The running step's frames and raw output, in one queue; see the module docstring."""

    def __init__(self, channel: RunnerChannel, limits: Limits):
        self.queue: asyncio.Queue[Item] = asyncio.Queue(_QUEUE_ITEMS)
        self._budget = Budget.of(limits)
        self._used = _Usage()
        self._step: int | None = None  # the running step's seq, until its result or error
        self._frames = 0  # frames read in the whole execution: named in protocol errors
        self._tasks = [
            asyncio.create_task(self._read_frames(channel)),
            asyncio.create_task(self._read_raw(channel)),
        ]

    def begin_step(self, seq: int, limits: Limits) -> None:
        """Frames of step `seq` are expected now, within a fresh budget of `limits`."""
        self._budget = Budget.of(limits)
        self._used = _Usage()
        self._step = seq

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _read_frames(self, channel: RunnerChannel) -> None:
        ending: Ending
        try:
            self._frames += 1
            while (frame := await read_frame(channel.events, self._check)) is not None:
                await self.queue.put(frame)
                self._frames += 1
            ending = EndOfEvents(inside_frame=False)
        except EndInsideFrame:
            ending = EndOfEvents(inside_frame=True)
        except ProtocolError as exc:
            ending = ProtocolError(f"frame {self._frames}: {exc}")
        except OutputLimit as exc:
            ending = exc
        await self.queue.put(ending)

    async def _read_raw(self, channel: RunnerChannel) -> None:
        while chunk := await channel.output.read(_RAW_READ_BYTES):
            try:
                self._take(items=1, log_bytes=len(chunk))
            except OutputLimit as exc:
                await self.queue.put(exc)
                return
            await self.queue.put(chunk)

    def _check(self, header: RunnerHeader, header_len: int, body_len: int) -> None:
        """Refuse a frame before its body is read (read_frame's check)."""
        kind = type_of(header)
        if isinstance(header, Ready):
            raise ProtocolError("'ready' again, from a runner that was ready")
        if header.seq != self._step:
            running = "no step runs" if self._step is None else f"step {self._step} runs"
            raise ProtocolError(f"{kind!r} frame for step {header.seq} while {running}")
        budget = self._budget
        if problem := body_problem(header, body_len, budget.log_limit, budget.result_limit):
            raise ProtocolError(f"{kind!r} frame: {problem}")
        if isinstance(header, Result | ErrorHeader):
            self._step = None  # the step's last frame: nothing more may come for it
        logged = body_len if isinstance(header, LogHeader) else 0
        self._take(items=1, header_bytes=header_len, log_bytes=logged)

    def _take(self, items: int, header_bytes: int = 0, log_bytes: int = 0) -> None:
        used, budget = self._used, self._budget
        used.items += items
        used.header_bytes += header_bytes
        used.log_bytes += log_bytes
        if used.log_bytes > budget.log_bytes:
            raise OutputLimit(f"step wrote more than {budget.log_limit} bytes of logs")
        if used.items > budget.items:
            raise OutputLimit(f"step sent more than {budget.items} log lines and frames")
        if used.header_bytes > budget.header_bytes:
            raise OutputLimit(f"step sent more than {budget.header_bytes} bytes of frame headers")


@dataclass(slots=True)
class _Usage:
    items: int = 0
    header_bytes: int = 0
    log_bytes: int = 0
