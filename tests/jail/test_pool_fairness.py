"""Fair leasing on a real pool: real jails from the real fork server.

One tenant holds all it may of the warm jails and queues more; another tenant, present (it ran
an execution a moment ago) and below its share of the jails granted lately, still gets a warm
jail at once (the reserve), while the first one's waiters wait for jails being started, and then
get them all. When no jail can start, the reserve goes to whoever waits: nothing starves. A
tenant asking back to back is held to about its half.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator

import pytest

from sandboxd.jail.handle import JailLauncher
from sandboxd.jail.spec import JailLimits
from sandboxd.pool import JailPool, PooledJail
from tests.conftest import ROOTFS

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="jails need root")

UID_BASE = 430_000
LEASE_BOUND_S = 5.0  # generous: a warm jail is handed out at once, a start takes ~0.1 s
FILL_BOUND_S = 30.0
QUIET_LEASES = 16
WARM_LEASE_S = 0.02  # a warm jail is handed out in a loop turn or two; a start is slower


@contextlib.asynccontextmanager
async def jail_pool(
    launcher: JailLauncher, *, size: int, maximum: int, reserve: int
) -> AsyncIterator[JailPool]:
    pool = JailPool(
        launcher,
        rootfs=ROOTFS,
        limits=JailLimits(),
        size=size,
        maximum=maximum,
        uid_base=UID_BASE,
        cgroups=None,
        reserve=reserve,
    )
    await pool.start()
    try:
        await filled(pool)
        # The quiet tenant ran an execution a moment ago: it is present, and leases nothing.
        async with pool.lease("quiet"):
            pass
        await filled(pool)
        yield pool
    finally:
        await pool.close()


async def filled(pool: JailPool) -> None:
    """Until the pool is back to its size, nothing starting and every leased jail freed."""
    async with asyncio.timeout(FILL_BOUND_S):
        while pool.warm < pool.size or pool.starting or pool.leased:
            await asyncio.sleep(0.02)


class Holder:
    """Leases of one tenant, each held until `release`."""

    def __init__(self, pool: JailPool, tenant: str):
        self._pool = pool
        self._tenant = tenant
        self._release = asyncio.Event()
        self.jails: list[PooledJail] = []
        self.tasks: list[asyncio.Task[None]] = []

    def ask(self, count: int) -> None:
        self.tasks += [asyncio.create_task(self._hold()) for _ in range(count)]

    async def _hold(self) -> None:
        async with self._pool.lease(self._tenant) as jail:
            self.jails.append(jail)
            await self._release.wait()

    async def release(self) -> None:
        self._release.set()
        await asyncio.gather(*self.tasks)


async def test_a_quiet_tenant_gets_a_reserve_jail_while_the_floods_waiters_wait(
    launcher: JailLauncher,
) -> None:
    async with jail_pool(launcher, size=3, maximum=8, reserve=1) as pool:
        flood = Holder(pool, "flood")
        flood.ask(6)
        await asyncio.sleep(0)  # every flood request is queued or served
        # Two of the three warm jails went to the flood; the last one is the reserve.
        assert (len(flood.jails), pool.waiting, pool.warm) == (2, 4, 1)
        assert pool.starting == 4
        began = time.monotonic()
        async with asyncio.timeout(LEASE_BOUND_S), pool.lease("quiet") as quiet:
            waited_s = time.monotonic() - began
            still_waiting = pool.waiting
        assert quiet.jail_id not in {jail.jail_id for jail in flood.jails}
        assert still_waiting == 4, "the quiet lease should not have waited for the flood's jails"
        assert waited_s < LEASE_BOUND_S
        # No starvation: every one of the flood's waiters gets a jail as they start.
        async with asyncio.timeout(FILL_BOUND_S):
            while len(flood.jails) < 6:
                await asyncio.sleep(0.02)
        assert pool.waiting == 0
        await flood.release()


async def test_the_flood_takes_the_reserve_when_no_jail_can_start(
    launcher: JailLauncher,
) -> None:
    async with jail_pool(launcher, size=3, maximum=3, reserve=1) as pool:
        flood = Holder(pool, "flood")
        flood.ask(2)
        await asyncio.sleep(0)
        assert (len(flood.jails), pool.warm, pool.starting) == (2, 1, 0)
        # The flood had 2 of the last 3 jails, quiet 1 (below its half), but at the maximum
        # nothing starts: the reserve is the only jail the flood can ever get.
        flood.ask(1)
        async with asyncio.timeout(LEASE_BOUND_S):
            while len(flood.jails) < 3:
                await asyncio.sleep(0.01)
        assert (pool.warm, pool.waiting) == (0, 0)
        await flood.release()


async def test_a_held_off_waiter_takes_the_next_jail_that_starts(launcher: JailLauncher) -> None:
    async with jail_pool(launcher, size=3, maximum=6, reserve=1) as pool:
        flood = Holder(pool, "flood")
        flood.ask(2)
        await asyncio.sleep(0)
        assert (len(flood.jails), pool.warm) == (2, 1)
        flood.ask(1)
        await asyncio.sleep(0)
        # The flood had 2 of the last 3 jails, quiet (present) 1: the flood leaves the reserve.
        assert (len(flood.jails), pool.waiting, pool.warm) == (2, 1, 1)
        assert pool.starting >= 1
        async with asyncio.timeout(FILL_BOUND_S):
            while len(flood.jails) < 3:
                await asyncio.sleep(0.01)
        assert pool.warm >= 1
        await flood.release()


async def test_a_closed_loop_quiet_tenant_gets_about_half_the_jails_under_a_flood(
    launcher: JailLauncher,
) -> None:
    async with jail_pool(launcher, size=2, maximum=8, reserve=1) as pool:
        granted = {"flood": 0, "quiet": 0}
        stop = asyncio.Event()

        async def closed_loop(tenant: str) -> None:
            while not stop.is_set():
                async with pool.lease(tenant):
                    granted[tenant] += 1

        floods = [asyncio.create_task(closed_loop("flood")) for _ in range(6)]
        try:
            async with asyncio.timeout(FILL_BOUND_S):
                while granted["flood"] < 10:  # the flood has drained the warm jails
                    await asyncio.sleep(0.01)
                before = granted["flood"]
                for _ in range(20):
                    async with pool.lease("quiet"):
                        granted["quiet"] += 1
        finally:
            stop.set()
            await asyncio.gather(*floods)
        # Quiet asks back to back: below its half of the grants it takes the reserve, at its
        # half it waits its turn like the flood. About 20 of 40 jails, not 20 of 21.
        quiet_part = 20 / (20 + granted["flood"] - before)
        assert 0.3 <= quiet_part <= 0.7, granted


async def test_a_paced_quiet_tenant_finds_a_warm_jail_while_another_floods(
    launcher: JailLauncher,
) -> None:
    async with jail_pool(launcher, size=2, maximum=8, reserve=1) as pool:
        flood_granted = 0
        stop = asyncio.Event()

        async def flood_stream() -> None:
            nonlocal flood_granted
            while not stop.is_set():
                async with pool.lease("flood"):
                    flood_granted += 1

        floods = [asyncio.create_task(flood_stream()) for _ in range(6)]
        waits_s: list[float] = []
        try:
            async with asyncio.timeout(FILL_BOUND_S):
                while flood_granted < 10:  # the flood has drained the warm jails
                    await asyncio.sleep(0.01)
                before = flood_granted
                for _ in range(QUIET_LEASES):  # 4 a second: below its half of the starts
                    await asyncio.sleep(0.25)
                    began = time.monotonic()
                    async with pool.lease("quiet"):
                        waits_s.append(time.monotonic() - began)
        finally:
            stop.set()
            await asyncio.gather(*floods)
        # A warm jail is handed out at once; a start takes tens of milliseconds or more.
        at_once = sum(wait_s < WARM_LEASE_S for wait_s in waits_s)
        # Most, not all: on a loaded host 4 a second may come near half of what it starts.
        # (The rule before this one gave way under the flood: 2-6 of 15 at once.)
        assert at_once >= QUIET_LEASES * 5 // 8, sorted(waits_s)
        assert flood_granted - before > QUIET_LEASES, "the flood still gets most jails started"
