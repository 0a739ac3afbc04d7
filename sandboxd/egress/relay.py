"""Moving bytes between a jail and its destination: backpressure, idle timeout, byte budget.

Each direction reads at most one chunk ahead and waits for the other side to take it (`drain`),
so a slow reader slows its writer instead of filling the daemon's memory. A tunnel is idle when
neither direction moved a byte for the idle timeout, so a long download with nothing to upload is
not idle. One side's EOF is passed on (half-close) and the other direction goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sandboxd.egress.records import EgressLimits, EgressUsage
from sandboxd.egress.request import READ_SIZE


class TunnelClosed(Exception):
    """The proxy closed a tunnel: it went idle or crossed a byte limit (`limited`)."""

    def __init__(self, reason: str, *, limited: bool):
        super().__init__(reason)
        self.reason = reason
        self.limited = limited


@dataclass(slots=True)
class Meter:
    """One connection's bytes, counted into its execution's usage and checked against its limits."""

    usage: EgressUsage
    limits: EgressLimits
    sent: int = 0
    received: int = 0
    last_activity: float = field(default_factory=time.monotonic)

    def count_sent(self, size: int) -> None:
        if self.usage.bytes_sent + size > self.limits.max_bytes_sent:
            raise TunnelClosed(
                f"closed: the execution sent more than {self.limits.max_bytes_sent} bytes",
                limited=True,
            )
        self.usage.bytes_sent += size
        self.sent += size
        self.touch()

    def count_received(self, size: int) -> None:
        if self.usage.bytes_received + size > self.limits.max_bytes_received:
            raise TunnelClosed(
                f"closed: the execution received more than {self.limits.max_bytes_received} bytes",
                limited=True,
            )
        self.usage.bytes_received += size
        self.received += size
        self.touch()

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    def idle_for(self) -> float:
        return time.monotonic() - self.last_activity


def _idle(meter: Meter) -> TunnelClosed:
    timeout = meter.limits.idle_timeout_s
    return TunnelClosed(f"closed: idle for {timeout:g} s", limited=False)


async def _read_while_active(reader: asyncio.StreamReader, meter: Meter) -> bytes:
    while True:
        remaining = meter.limits.idle_timeout_s - meter.idle_for()
        if remaining <= 0:
            raise _idle(meter)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(remaining):
                return await reader.read(READ_SIZE)


async def send(
    writer: asyncio.StreamWriter, data: bytes, meter: Meter, count: Callable[[int], None]
) -> None:
    """Counts `data` against the budget, writes it, and waits until the peer takes it."""
    count(len(data))
    writer.write(data)
    try:
        async with asyncio.timeout(meter.limits.idle_timeout_s):
            await writer.drain()
    except TimeoutError:
        raise _idle(meter) from None
    meter.touch()


async def pump(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    meter: Meter,
    count: Callable[[int], None],
) -> None:
    """Copies `reader` to `writer` until EOF, which it passes on."""
    while data := await _read_while_active(reader, meter):
        await send(writer, data, meter, count)
    if writer.can_write_eof() and not writer.is_closing():
        writer.write_eof()


async def relay(
    client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    meter: Meter,
) -> None:
    """Both directions until both ended; a limit, idle timeout or error in one ends both."""
    tasks = [
        asyncio.create_task(pump(client[0], upstream[1], meter, meter.count_sent)),
        asyncio.create_task(pump(upstream[0], client[1], meter, meter.count_received)),
    ]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
