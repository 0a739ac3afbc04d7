"""The pool: warm jails started before they are needed, leased once, then destroyed.

It ties the parts together: sizing (how many jails to keep warm and start), spawning (one jail,
until `ready`), leasing (which waiter gets the next warm jail) and destruction (kill, then free
in the background). It owns the warm jails and the counts of jails starting and leased.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Coroutine

from sandboxd.channel import ProtocolError
from sandboxd.jail.cgroups import CgroupDriver, CgroupError
from sandboxd.jail.errors import JailError
from sandboxd.jail.handle import JailLauncher
from sandboxd.jail.spec import JailLimits
from sandboxd.pool.destruction import JailReaper
from sandboxd.pool.leasing import FairLeases, PoolClosed
from sandboxd.pool.pooled import PooledJail
from sandboxd.pool.sizing import PoolCounts, PoolSizing, PoolStats
from sandboxd.pool.spawning import NORMAL_CPU_WEIGHT, JailSpawner
from sandboxd.pool.uids import UidAllocator

log = logging.getLogger(__name__)

_MAINTAIN_INTERVAL_S = 0.5
_REFILL_CPU_WEIGHT = 50  # half a running jail's share: refills go on, executions keep most


class JailPool:
    """Keeps `size` jails warm (more while demand is high), up to `maximum` alive in all; starts
    more while callers wait; replaces a warm jail that dies while idle (and counts it); refills
    in the background after every lease. `reserve` warm jails are kept for tenants below their
    share of the jails granted lately (`sandboxd.pool.leasing`)."""

    def __init__(
        self,
        launcher: JailLauncher,
        *,
        rootfs: str,
        limits: JailLimits,
        size: int,
        maximum: int,
        uid_base: int,
        cgroups: CgroupDriver | None,
        reserve: int = 0,
        on_started: Callable[[float], None] | None = None,
    ):
        self._limits = limits
        self.maximum = maximum
        uids = UidAllocator(uid_base, maximum)
        self._reaper = JailReaper(uids)
        self._spawner = JailSpawner(
            launcher, rootfs=rootfs, uids=uids, cgroups=cgroups, reaper=self._reaper
        )
        self._sizing = PoolSizing(size, maximum, reserve)
        # No warm jails without a pool: nothing to keep in reserve.
        self._leases: FairLeases[PooledJail] = FairLeases(min(reserve, size))
        self._on_started = on_started
        self._warm: collections.deque[PooledJail] = collections.deque()
        self._changed = asyncio.Condition()
        self._starting = 0
        self._leased = 0  # from hand-out until the jail is freed: its uid and cgroup are in use
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._start_gate = asyncio.Semaphore(os.cpu_count() or 1)

    # -- figures ---------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self._sizing.size

    @property
    def stats(self) -> PoolStats:
        return self._sizing.stats

    @property
    def target(self) -> int:
        return self._sizing.target

    @property
    def warm(self) -> int:
        return len(self._warm)

    @property
    def leased(self) -> int:
        return self._leased

    @property
    def starting(self) -> int:
        return self._starting

    @property
    def waiting(self) -> int:
        return self._leases.waiting

    @property
    def usable(self) -> bool:
        """A lease can succeed: not closed, and jails are warm or can start."""
        return not self._closed and (bool(self._warm) or self.stats.started > self.stats.failed)

    @property
    def limits(self) -> JailLimits:
        """The kernel limits of the pool's warm jails."""
        return self._limits

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, wait: bool = True) -> None:
        """Start filling; with `wait`, return once the first jail is warm (or raise why not)."""
        self._refill()
        self._spawn_task(self._maintain())
        if wait and self.size:
            async with self._changed:
                await self._changed.wait_for(lambda: bool(self._warm) or self._failing())
            if not self._warm:
                raise JailError("the pool could not start a jail; see the daemon log")

    async def _maintain(self) -> None:
        """Follow demand as it falls too: retire a surplus warm jail a tick, refill the rest."""
        while not self._closed:
            await asyncio.sleep(_MAINTAIN_INTERVAL_S)
            if len(self._warm) > self.target and not self.waiting:
                await self._reaper.destroy(self._warm.popleft())
            self._refill()
            self._dispatch()

    def _spawn_task(self, work: Coroutine[None, None, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _failing(self) -> bool:
        return self.stats.failed > 0 and self.stats.started == 0

    async def close(self) -> None:
        """Hand out nothing more and destroy every warm jail."""
        self._closed = True
        self._leases.close(PoolClosed("the daemon is shutting down"))
        async with self._changed:
            self._changed.notify_all()
        warm = list(self._warm)
        self._warm.clear()
        await asyncio.gather(*(self._reaper.destroy(jail) for jail in warm))
        await self._reaper.wait_retired()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- leasing ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lease(
        self, tenant: str, limits: JailLimits | None = None
    ) -> AsyncIterator[PooledJail]:
        """A jail for one execution of `tenant`; killed when the block ends, whatever happened,
        and freed (exit, cgroup, uid) in the background.

        Warm jails have the pool's limits and go to waiting tenants in turn
        (`sandboxd.pool.leasing`). Limits fixed at a jail's start (tmpfs size, rlimits, the V8
        heap sized from the memory limit) cannot be changed on a warm jail, so other limits get
        a jail started for this execution alone: it costs one jail start.
        """
        if limits is None or limits == self._limits:
            jail = await self._take(tenant)
        else:
            jail = await self._take_dedicated(tenant, limits)
        try:
            yield jail
        finally:
            # Killed now; freed off the caller's path, so its stream ends without waiting for
            # the jail's exit and cgroup removal (most of a warm execution's time otherwise).
            self._reaper.retire(jail, self._freed)
            self._leases.returned(tenant)
            self._dispatch()  # a tenant that leases nothing more may leave the present ones

    def _freed(self) -> None:
        """A leased jail is freed: it counted as leased until now, so its uid and cgroup are
        free by the time a refill may start the next jail."""
        self._leased -= 1
        self._refill()
        self._dispatch()

    async def _take(self, tenant: str) -> PooledJail:
        if self._closed:
            raise PoolClosed("the daemon is shutting down")
        self._sizing.arrived()
        waiter = self._leases.wait(tenant)
        self._refill()
        self._dispatch()
        try:
            jail = await waiter
        except BaseException:
            handed = self._leases.withdraw(tenant, waiter)
            if handed is not None:  # handed a jail, then cancelled before it woke: pass it on
                self._leased -= 1
                self._warm.appendleft(handed)
                self._dispatch()
            raise
        if jail.cgroup is not None:
            try:
                jail.cgroup.set_cpu_weight(NORMAL_CPU_WEIGHT)
            except CgroupError as exc:  # it still runs, only with the refill's low weight
                log.warning("jail %s keeps its low cpu weight: %s", jail.jail_id, exc)
        self._refill()
        return jail

    def _dispatch(self) -> None:
        self._leased += self._leases.dispatch(self._warm, self._starting)

    async def _take_dedicated(self, tenant: str, limits: JailLimits) -> PooledJail:
        if self._closed:
            raise PoolClosed("the daemon is shutting down")
        if self._counts().alive >= self.maximum and self._warm:
            # Make room: a warm jail is cheaper to replace than a caller is to keep waiting.
            await self._reaper.destroy(self._warm.pop())
        self._leased += 1
        try:
            jail = await self._spawner.spawn(limits)
        except BaseException:
            self._leased -= 1
            raise
        self._leases.took(tenant)
        return jail

    # -- starting --------------------------------------------------------------------------

    def _counts(self) -> PoolCounts:
        return PoolCounts(len(self._warm), self._starting, self._leased, self.waiting)

    def _refill(self) -> None:
        """Start the jails sizing asks for."""
        if self._closed:
            return
        for _ in range(self._sizing.to_start(self._counts())):
            self._starting += 1
            self._spawn_task(self._start_one())

    async def _start_one(self) -> None:
        try:
            # Refills start one at a time per core and at a lower cpu weight, so they do not
            # slow running executions down; unless a caller is waiting for this very jail.
            async with self._start_gate:
                began = time.monotonic()
                weight = NORMAL_CPU_WEIGHT if self.waiting else _REFILL_CPU_WEIGHT
                jail = await self._spawner.spawn(self._limits, weight)
        except (JailError, ProtocolError, OSError, TimeoutError) as exc:
            self._sizing.failed()
            log.error("jail failed to start: %s", exc)
            await asyncio.sleep(min(5.0, 0.1 * self.stats.failed))  # no hot loop on a bad host
            return
        finally:
            self._starting -= 1
            self._dispatch()  # with no jail starting, a held-off waiter may take the reserve
        elapsed = time.monotonic() - began
        self._sizing.started(elapsed)
        if self._on_started is not None:
            self._on_started(elapsed)
        if self._closed:
            await self._reaper.destroy(jail)
            return
        jail.jail.exit_status.add_done_callback(lambda _: self._died_idle(jail))
        async with self._changed:
            self._warm.append(jail)
            self._changed.notify_all()
        self._dispatch()

    def _died_idle(self, jail: PooledJail) -> None:
        if jail in self._warm:
            self._warm.remove(jail)
            self._sizing.failed()
            log.warning("warm jail %s died while idle; replacing it", jail.jail_id)
            self._spawn_task(self._reaper.destroy(jail))
            self._refill()

    async def destroy(self, pooled: PooledJail) -> None:
        """Kill the jail, wait until it is gone, and free its cgroup, uid and descriptors."""
        await self._reaper.destroy(pooled)
