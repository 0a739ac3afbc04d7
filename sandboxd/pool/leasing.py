"""Who gets the next warm jail: the pool's waiters, served fairly across tenants.

Where jails are scarce, first come first served lets a tenant with many requests take every warm
jail and every fresh one before a quiet tenant's single request. Instead:

- Waiters are served round robin by tenant (FIFO within a tenant): with K tenants waiting, each
  gets one of every K jails handed out. A tenant that begins to wait takes its place in the turns
  by when it was last served, ahead of the tenants served since: a quiet tenant's request gets
  the next jail, not the one after the flood's next.
- The last `reserve` warm jails are kept for tenants below their fair share. A tenant's share is
  the part of the jails granted in the last `WINDOW_S` seconds that went to it; its fair share is
  1 / the number of tenants present (with requests now, or that asked within `PRESENT_S`, so a
  quiet tenant between two executions still counts, while one that stopped asking stops
  holding the reserve back from the tenants still at work). A tenant at or above its share may not
  take one of the reserve while a present tenant is below its share and a jail is starting; it
  waits for that jail, round robin as everyone. So a tenant that asks for less than its share
  (a paced one) finds a warm jail nearly every time, and one that asks for more (closed loop)
  is held to about its share of the jails started.
- Nothing starves, and no jail is held back for nobody: a held-off waiter gets every jail beyond
  the reserve, and the reserve itself when no present tenant is below its share (a tenant alone
  is never held off), or when no jail is starting (the pool is at its maximum, or its starts
  fail).
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

# Long enough to hold many grants at a flood's rate (tens a second), short enough that a share
# follows a change of load within a few seconds.
WINDOW_S = 3.0
# A tenant that asked this recently is present: a paced tenant's interval (10/s in the benchmark,
# a few a second in the tests) fits, a finished burst does not hold the reserve back for long (at
# 3 s, a queue worker's next tenant waited for fresh jails behind four tenants gone quiet).
PRESENT_S = 1.0


class PoolClosed(Exception):
    """The pool is shutting down and hands out no more jails."""


@dataclass(eq=False)
class _Tenant(Generic[J]):
    waiters: collections.deque[asyncio.Future[J]] = field(default_factory=collections.deque)
    holding: int = 0  # jails leased now (handed out, lease not yet ended)


class FairLeases(Generic[J]):
    """The waiters for a warm jail, by tenant, and the jails each tenant was granted lately."""

    def __init__(self, reserve: int, *, clock: Callable[[], float] = time.monotonic):
        self.reserve = reserve
        self._clock = clock
        self._tenants: dict[str, _Tenant[J]] = {}
        # Tenants with waiters, least recently served first.
        self._turns: collections.deque[str] = collections.deque()
        self._served: dict[str, float] = {}  # when each tenant was last handed a jail
        self._asked: dict[str, float] = {}  # when each tenant last asked, oldest first
        self._grants: collections.deque[tuple[float, str]] = collections.deque()  # oldest first
        self._granted: collections.Counter[str] = collections.Counter()  # of self._grants
        self._waiting = 0

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
        self._grants.append((self._clock(), tenant))
        self._granted[tenant] += 1

    def returned(self, tenant: str) -> None:
        """One of `tenant`'s leases ended."""
        state = self._tenants[tenant]
        state.holding -= 1
        self._forget_if_idle(tenant)

    def dispatch(self, warm: collections.deque[J], starting: int) -> int:
        """Hand warm jails (oldest first) to waiters, in turn order, under the reserve rule
        (`starting`: jails being started); how many were handed out."""
        handed = 0
        while warm and (tenant := self._next_turn(len(warm), starting)) is not None:
            state = self._tenants[tenant]
            waiter = state.waiters.popleft()
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
        served within WINDOW_S)."""
        last = self._served.get(tenant, -math.inf)
        turns = self._turns
        later = (i for i, other in enumerate(turns) if self._served.get(other, -math.inf) > last)
        turns.insert(next(later, len(turns)), tenant)

    def _next_turn(self, warm: int, starting: int) -> str | None:
        """The first tenant in turn order that may take one of `warm` jails; it leaves the
        turn order (`dispatch` puts it back at the end while it has more waiters)."""
        open_to_all = warm > self.reserve or starting == 0
        below = () if open_to_all else self._below_share()
        position = 0
        while position < len(self._turns):
            tenant = self._turns[position]
            state = self._tenants[tenant]
            # A cancelled waiter stays queued until its task wakes up; it must not use a turn.
            while state.waiters and state.waiters[0].done():
                state.waiters.popleft()
                self._waiting -= 1
            if not state.waiters:
                del self._turns[position]
                self._forget_if_idle(tenant)
            elif open_to_all or not below or tenant in below:
                del self._turns[position]
                return tenant
            else:
                position += 1
        return None

    def _below_share(self) -> set[str]:
        """The present tenants granted less than 1 / (tenants present) of the jails granted
        within WINDOW_S."""
        self._forget_old()
        since = self._clock() - PRESENT_S
        present = self._tenants.keys() | {t for t, at in self._asked.items() if at >= since}
        total = len(self._grants)
        return {tenant for tenant in present if self._granted[tenant] * len(present) < total}

    def _forget_old(self) -> None:
        """Drop the asks, serves and grants older than WINDOW_S: state stays bounded."""
        since = self._clock() - WINDOW_S
        for times in (self._asked, self._served):
            while times and next(iter(times.values())) < since:
                del times[next(iter(times))]
        while self._grants and self._grants[0][0] < since:
            _, tenant = self._grants.popleft()
            self._granted[tenant] -= 1
            if not self._granted[tenant]:
                del self._granted[tenant]

    def _forget_if_idle(self, tenant: str) -> None:
        """Drop a tenant that leases nothing and waits for nothing: state stays bounded."""
        state = self._tenants.get(tenant)
        if state is not None and not state.holding and not state.waiters:
            del self._tenants[tenant]
