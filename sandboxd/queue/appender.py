"""EventAppender: one execution's events into Redis in order, in as few calls as keep them live."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from sandbox_client.redisqueue.store import StoredEvent


class EventAppender:
    """Appends events with at most one call in flight: the events that arrive during a call go
    together in the next one, and those not sent when the execution ends go with its final
    write. A slow step's events are each stored as they come (readers see them live); an
    execution whose events come at once costs Redis a single call (FINISH).
    """

    def __init__(self, append: Callable[[list[StoredEvent]], Awaitable[None]]):
        self._append = append
        self._unsent: list[StoredEvent] = []
        self._arrived = asyncio.Event()
        self._closing = False
        self._sender = asyncio.create_task(self._send())

    def add(self, event: StoredEvent) -> None:
        """Queue `event`; raises what the last call raised (ClaimLost: stop the execution)."""
        if self._sender.done():
            self._sender.result()
        self._unsent.append(event)
        self._arrived.set()

    async def close(self) -> list[StoredEvent]:
        """Wait for the call in flight; the events not sent yet, in order."""
        self._closing = True
        self._arrived.set()
        await self._sender
        unsent, self._unsent = self._unsent, []
        return unsent

    def cancel(self) -> None:
        self._sender.cancel()

    async def _send(self) -> None:
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            if self._closing:
                return
            batch, self._unsent = self._unsent, []
            await self._append(batch)
