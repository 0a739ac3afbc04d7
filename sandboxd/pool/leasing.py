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
import math
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from sandboxd.turns import TenantTurns

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


class FairLeases(Generic[J]):
    """The waiters for a warm jail, by tenant, and the jails each tenant was granted lately."""

    def __init__(self, reserve: int, *, clock: Callable[[], float] = time.monotonic):
        self.reserve = reserve
        self._clock = clock
        self._waiters: TenantTurns[J] = TenantTurns()
        self._holding: collections.Counter[str] = collections.Counter()  # jails leased now
        self._served: dict[str, float] = {}  # when each tenant was last handed a jail
        self._asked: dict[str, float] = {}  # when each tenant last asked, oldest first
        self._grants: collections.deque[tuple[float, str]] = collections.deque()  # oldest first
        self._granted: collections.Counter[str] = collections.Counter()  # of self._grants

    @property
    def waiting(self) -> int:
        """Callers waiting for a jail, not yet handed one."""
        return len(self._waiters)

    def holding(self, tenant: str) -> int:
        """The jails `tenant` leases now (handed out, lease not yet ended)."""
        return self._holding[tenant]

    def wait(self, tenant: str) -> asyncio.Future[J]:
        """Queue a caller of `tenant`; its future gets the jail `dispatch` hands it."""
        self._forget_old()
        self._asked.pop(tenant, None)
        self._asked[tenant] = self._clock()
        waiter: asyncio.Future[J] = asyncio.get_running_loop().create_future()
        self._waiters.add(tenant, waiter, goes_before=self._served_after(tenant))
        return waiter

    def withdraw(self, tenant: str, waiter: asyncio.Future[J]) -> J | None:
        """Undo a wait that ended without the caller taking its jail (cancelled, or the pool
        closed): the jail it had been handed, if any, for the caller to put back."""
        if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
            self.returned(tenant)
            return waiter.result()
        self._waiters.remove(tenant, waiter)
        return None

    def took(self, tenant: str) -> None:
        """`tenant` leases one more jail (handed out here, or started for it alone)."""
        self._holding[tenant] += 1
        self._grants.append((self._clock(), tenant))
        self._granted[tenant] += 1

    def returned(self, tenant: str) -> None:
        """One of `tenant`'s leases ended."""
        self._holding[tenant] -= 1
        if not self._holding[tenant]:
            del self._holding[tenant]

    def dispatch(self, warm: collections.deque[J], starting: int) -> int:
        """Hand warm jails (oldest first) to waiters, in turn order, under the reserve rule
        (`starting`: jails being started); how many were handed out."""
        handed = 0
        while warm and (turn := self._waiters.serve(self._may_take(len(warm), starting))):
            tenant, waiter = turn
            self._served.pop(tenant, None)
            self._served[tenant] = self._clock()
            self.took(tenant)
            waiter.set_result(warm.popleft())
            handed += 1
        return handed

    def close(self, error: Exception) -> None:
        """Every waiter raises `error`."""
        for waiter in self._waiters.clear():
            if not waiter.done():
                waiter.set_exception(error)

    def _served_after(self, tenant: str) -> Callable[[str], bool]:
        """Whether another tenant was served after `tenant` (or `tenant` not within WINDOW_S):
        a tenant that begins to wait takes its turn ahead of those."""
        last = self._served.get(tenant, -math.inf)
        return lambda other: self._served.get(other, -math.inf) > last

    def _may_take(self, warm: int, starting: int) -> Callable[[str], bool]:
        """Which tenants may take one of `warm` jails, under the reserve rule."""
        if warm > self.reserve or starting == 0:
            return lambda tenant: True
        below = self._below_share()
        return lambda tenant: not below or tenant in below

    def _below_share(self) -> set[str]:
        """The present tenants granted less than 1 / (tenants present) of the jails granted
        within WINDOW_S."""
        self._forget_old()
        since = self._clock() - PRESENT_S
        asked = {tenant for tenant, at in self._asked.items() if at >= since}
        present = self._holding.keys() | self._waiters.tenants() | asked
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
