"""Waiters queued per tenant and served round robin: the one fair queue under both admission
(`sandboxd.tenants`) and the pool's leases (`sandboxd.pool.leasing`).

Each tenant's waiters are first in, first out. The tenants that have waiters stand in a turn
order; `serve` gives the next turn to the first tenant in that order that the caller says may be
served now, and sends it to the end of the order while it has more waiters. With K tenants
waiting, each is served once in every K turns, whatever the length of its queue.

A waiter cancelled while queued stays until its task wakes up and removes it; `serve` drops such
a waiter when it comes first, so it never uses a turn.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, KeysView
from typing import Generic, TypeVar

T = TypeVar("T")


class TenantTurns(Generic[T]):
    """Futures waiting to be handed a `T`, by tenant, served in turn."""

    def __init__(self) -> None:
        # Only tenants with waiters have an entry; each of them is once in the turn order.
        self._waiters: dict[str, collections.deque[asyncio.Future[T]]] = {}
        self._turns: collections.deque[str] = collections.deque()
        self._count = 0

    def __len__(self) -> int:
        """The waiters queued, a cancelled one included until it is removed or dropped."""
        return self._count

    def queued(self, tenant: str) -> int:
        waiters = self._waiters.get(tenant)
        return len(waiters) if waiters is not None else 0

    def tenants(self) -> KeysView[str]:
        """The tenants with waiters."""
        return self._waiters.keys()

    def add(
        self,
        tenant: str,
        waiter: asyncio.Future[T],
        *,
        goes_before: Callable[[str], bool] | None = None,
    ) -> None:
        """Queue `waiter` behind `tenant`'s others. A tenant that had none joins the turn order
        at the end, or ahead of the first tenant there for which `goes_before` holds."""
        waiters = self._waiters.get(tenant)
        if waiters is None:
            waiters = self._waiters[tenant] = collections.deque()
            turns = self._turns
            if goes_before is None:
                turns.append(tenant)
            else:
                ahead = (i for i, other in enumerate(turns) if goes_before(other))
                turns.insert(next(ahead, len(turns)), tenant)
        waiters.append(waiter)
        self._count += 1

    def remove(self, tenant: str, waiter: asyncio.Future[T]) -> None:
        """Take `waiter` out of the queue, if it is still there (`serve` may have taken it)."""
        waiters = self._waiters.get(tenant)
        if waiters is None or waiter not in waiters:
            return
        waiters.remove(waiter)
        self._count -= 1
        if not waiters:
            del self._waiters[tenant]
            self._turns.remove(tenant)

    def serve(self, may_serve: Callable[[str], bool]) -> tuple[str, asyncio.Future[T]] | None:
        """The first waiter of the first tenant in turn order that `may_serve`, taken out of the
        queue, with its tenant; None when no tenant may be served now."""
        position = 0
        while position < len(self._turns):
            tenant = self._turns[position]
            waiters = self._waiters[tenant]
            while waiters and waiters[0].done():
                waiters.popleft()
                self._count -= 1
            if waiters and not may_serve(tenant):
                position += 1
                continue
            del self._turns[position]
            if not waiters:
                del self._waiters[tenant]
                continue
            waiter = waiters.popleft()
            self._count -= 1
            if waiters:
                self._turns.append(tenant)
            else:
                del self._waiters[tenant]
            return tenant, waiter
        return None

    def clear(self) -> list[asyncio.Future[T]]:
        """Every waiter, taken out of the queue."""
        everyone = [waiter for waiters in self._waiters.values() for waiter in waiters]
        self._waiters.clear()
        self._turns.clear()
        self._count = 0
        return everyone
