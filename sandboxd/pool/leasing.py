"""Who gets the next warm jail: the pool's waiters, served fairly across tenants.

Where jails are scarce, first come first served lets a tenant with many requests take every warm
jail and every fresh one before a quiet tenant's single request. Instead:

- Waiters are served round robin by tenant (FIFO within a tenant): with K tenants waiting, each
  gets one of every K jails handed out. A tenant that begins to wait takes its place in the turns
  by when it was last served, ahead of the tenants served since: a quiet tenant's request gets
  the next jail, not the one after the flood's next.
- The last `reserve` warm jails are kept for tenants that ask little. A tenant whose requests at
  the pool (jails it leases now plus its waiters) are above the average of the tenants present
  may not take one of them while a jail is starting, for about as long as a start takes; it
  waits for that jail instead. Present are the tenants with requests now and those that asked in
  the last `PRESENCE_S` seconds, so a quiet tenant between two executions still counts, and a
  tenant alone is never held off.
- Nothing starves: a held-off waiter gets every jail beyond the reserve, and the reserve itself
  once it has waited `hold_s` (a jail start's usual time: the jail it waits for is late), or when
  no jail is starting (the pool is at its maximum, or its starts fail). At saturation, when every
  waiter waits longer than a start, the reserve thus gives way and round robin alone remains.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

J = TypeVar("J")

PRESENCE_S = 10.0


class PoolClosed(Exception):
    """The pool is shutting down and hands out no more jails."""


@dataclass(eq=False)
class _Tenant(Generic[J]):
    waiters: collections.deque[asyncio.Future[J]] = field(default_factory=collections.deque)
    holding: int = 0  # jails leased now (handed out, lease not yet ended)

    @property
    def load(self) -> int:
        return self.holding + len(self.waiters)


class FairLeases(Generic[J]):
    """The waiters for a warm jail, by tenant, and how many jails each tenant leases now."""

    def __init__(self, reserve: int, *, clock: Callable[[], float] = time.monotonic):
        self.reserve = reserve
        self._clock = clock
        self._tenants: dict[str, _Tenant[J]] = {}
        # Tenants with waiters, least recently served first.
        self._turns: collections.deque[str] = collections.deque()
        self._served: dict[str, float] = {}  # when each tenant was last handed a jail
        self._asked: dict[str, float] = {}  # when each tenant last asked, oldest first
        self._since: dict[asyncio.Future[J], float] = {}  # when each waiter began to wait
        self._waiting = 0
        self._held = 0

    @property
    def waiting(self) -> int:
        """Callers waiting for a jail, not yet handed one."""
        return self._waiting

    def holding(self, tenant: str) -> int:
        state = self._tenants.get(tenant)
        return state.holding if state is not None else 0

    def wait(self, tenant: str) -> asyncio.Future[J]:
        """Queue a caller of `tenant`; its future gets the jail `dispatch` hands it."""
        state = self._tenants.setdefault(tenant, _Tenant())
        self._forget_old()
        self._asked.pop(tenant, None)
        self._asked[tenant] = self._clock()
        waiter: asyncio.Future[J] = asyncio.get_running_loop().create_future()
        state.waiters.append(waiter)
        self._since[waiter] = self._asked[tenant]
        self._waiting += 1
        if tenant not in self._turns:
            self._take_turn(tenant)
        return waiter

    def withdraw(self, tenant: str, waiter: asyncio.Future[J]) -> J | None:
        """Undo a wait that ended without the caller taking its jail (cancelled, or the pool
        closed): the jail it had been handed, if any, for the caller to put back."""
        if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
            self.returned(tenant)
            return waiter.result()
        state = self._tenants.get(tenant)
        if state is not None and waiter in state.waiters:
            state.waiters.remove(waiter)
            del self._since[waiter]
            self._waiting -= 1
            if not state.waiters:
                with contextlib.suppress(ValueError):
                    self._turns.remove(tenant)
            self._forget_if_idle(tenant)
        return None

    def took(self, tenant: str) -> None:
        """`tenant` leases one more jail (handed out here, or started for it alone)."""
        state = self._tenants.setdefault(tenant, _Tenant())
        state.holding += 1
        self._held += 1

    def returned(self, tenant: str) -> None:
        """One of `tenant`'s leases ended."""
        state = self._tenants[tenant]
        state.holding -= 1
        self._held -= 1
        self._forget_if_idle(tenant)

    def dispatch(self, warm: collections.deque[J], starting: int, hold_s: float) -> int:
        """Hand warm jails (oldest first) to waiters, in turn order, under the reserve rule
        (`starting`: jails being started; `hold_s`: how long a waiter may be held off the
        reserve); how many were handed out."""
        handed = 0
        while warm and (tenant := self._next_turn(len(warm), starting, hold_s)) is not None:
            state = self._tenants[tenant]
            waiter = state.waiters.popleft()
            del self._since[waiter]
            self._waiting -= 1
            if state.waiters:
                self._turns.append(tenant)
            self._served.pop(tenant, None)
            self._served[tenant] = self._clock()
            self.took(tenant)
            waiter.set_result(warm.popleft())
            handed += 1
        return handed

    def close(self, error: Exception) -> None:
        """Every waiter raises `error`."""
        for state in self._tenants.values():
            for waiter in state.waiters:
                if not waiter.done():
                    waiter.set_exception(error)

    def _take_turn(self, tenant: str) -> None:
        """Queue the tenant's turn ahead of the tenants served after it (or ever, if it was not
        served within PRESENCE_S)."""
        last = self._served.get(tenant, -math.inf)
        turns = self._turns
        later = (i for i, other in enumerate(turns) if self._served.get(other, -math.inf) > last)
        turns.insert(next(later, len(turns)), tenant)

    def _next_turn(self, warm: int, starting: int, hold_s: float) -> str | None:
        """The first tenant in turn order that may take one of `warm` jails; it leaves the
        turn order (`dispatch` puts it back at the end while it has more waiters)."""
        position = 0
        while position < len(self._turns):
            tenant = self._turns[position]
            state = self._tenants[tenant]
            # A cancelled waiter stays queued until its task wakes up; it must not use a turn.
            while state.waiters and state.waiters[0].done():
                del self._since[state.waiters.popleft()]
                self._waiting -= 1
            if not state.waiters:
                del self._turns[position]
                self._forget_if_idle(tenant)
            elif warm > self.reserve or starting == 0 or not self._held_off(state, hold_s):
                del self._turns[position]
                return tenant
            else:
                position += 1
        return None

    def _held_off(self, state: _Tenant[J], hold_s: float) -> bool:
        """Whether the tenant's requests at the pool are above the present tenants' average,
        and its first waiter has waited less than `hold_s`."""
        if self._clock() - self._since[state.waiters[0]] >= hold_s:
            return False
        return state.load * self._present() > self._held + self._waiting

    def _present(self) -> int:
        """Tenants with requests at the pool now, or that asked within PRESENCE_S."""
        self._forget_old()
        recent = sum(1 for tenant in self._asked if tenant not in self._tenants)
        return len(self._tenants) + recent

    def _forget_old(self) -> None:
        """Drop the ask and serve times older than PRESENCE_S: state stays bounded."""
        since = self._clock() - PRESENCE_S
        for times in (self._asked, self._served):
            while times and next(iter(times.values())) < since:
                del times[next(iter(times))]

    def _forget_if_idle(self, tenant: str) -> None:
        """Drop a tenant that leases nothing and waits for nothing: state stays bounded."""
        state = self._tenants.get(tenant)
        if state is not None and not state.holding and not state.waiters:
            del self._tenants[tenant]
