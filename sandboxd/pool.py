"""Warm jails: started before they are needed, leased once, then destroyed. Never reused.

A warm jail is a runner that has loaded and said `ready` and has seen no tenant code. The pool
keeps `pool_size` of them, starts more while callers wait (up to `pool_max` jails alive in all),
replaces a warm jail that dies while idle (and counts it), and refills in the background after
every lease. Destroying a jail kills every process in it and frees its cgroup and host uid.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field

import psutil

from sandboxd.channel import ProtocolError, RunnerChannel
from sandboxd.jail.cgroups import CgroupDriver, CgroupError, CgroupLimits, JailCgroup
from sandboxd.jail.errors import JailError
from sandboxd.jail.handle import Jail, JailLauncher
from sandboxd.jail.spec import JailLimits, JailSpec

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 10.0
_DEMAND_WINDOW_S = 10.0
_MAINTAIN_INTERVAL_S = 0.5
_NORMAL_CPU_WEIGHT = 100
_REFILL_CPU_WEIGHT = 50  # half a running jail's share: refills go on, executions keep most
_IDLE_JAIL_BYTES = 64 * 1024 * 1024
_START_SAMPLES = 1000
_EXIT_WAIT_S = 10.0  # a SIGKILLed jail's exit, before its resources are checked and freed


class PoolClosed(Exception):
    """The pool is shutting down and hands out no more jails."""


@dataclass(eq=False)
class PooledJail:
    """A running jail with its channel and the resources the pool gave it."""

    jail: Jail
    channel: RunnerChannel
    cgroup: JailCgroup | None
    uid: int
    start_s: float

    @property
    def jail_id(self) -> str:
        return self.jail.jail_id

    def kill(self) -> None:
        """Kill every process of the jail: SIGKILL to its init ends its whole pid namespace,
        which no process can leave. Its cgroup is killed again and removed when the jail is
        freed (`JailPool.destroy`), in a thread: v1's freeze-then-kill waits, the loop must not.
        """
        self.jail.kill()

    def take_proxy_fd(self) -> int:
        """The jail's egress socket (listening on its own loopback), for the egress proxy.

        Whoever takes it owns it: an execution without egress closes it at once, and the jail's
        connections to the proxy address are then refused, as if it did not exist.
        """
        return self.jail.take_proxy_fd()


class UidAllocator:
    """Distinct unprivileged host uids, one per live jail."""

    def __init__(self, base: int, count: int):
        self._free = collections.deque(range(base, base + count))

    def take(self) -> int:
        if not self._free:
            raise JailError("no free jail uid")
        return self._free.popleft()

    def give_back(self, uid: int) -> None:
        self._free.append(uid)


@dataclass
class PoolStats:
    started: int = 0
    failed: int = 0
    start_times_s: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=_START_SAMPLES)
    )


class JailPool:
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
        on_started: Callable[[float], None] | None = None,
    ):
        self._launcher = launcher
        self._rootfs = rootfs
        self._limits = limits
        self.size = size
        self.maximum = maximum
        self._uids = UidAllocator(uid_base, maximum)
        self._cgroups = cgroups
        self._on_started = on_started
        self._warm: collections.deque[PooledJail] = collections.deque()
        self._changed = asyncio.Condition()
        self._starting = 0
        self._leased = 0
        self._waiting = 0
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._retiring: set[asyncio.Task[None]] = set()
        self._arrivals: collections.deque[float] = collections.deque()
        # Idle warm jails cost memory (~40 MB of Node each) and starting them costs cpu.
        self._warm_ceiling = min(maximum, _host_warm_ceiling())
        self._start_gate = asyncio.Semaphore(os.cpu_count() or 1)
        self.stats = PoolStats()

    # -- figures ---------------------------------------------------------------------------

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
    def usable(self) -> bool:
        """A lease can succeed: not closed, and jails are warm or can start."""
        return not self._closed and (bool(self._warm) or self.stats.started > self.stats.failed)

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
            if len(self._warm) > self.target and not self._waiting:
                await self.destroy(self._warm.popleft())
            self._refill()

    def _spawn_task(self, work: Coroutine[None, None, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _failing(self) -> bool:
        return self.stats.failed > 0 and self.stats.started == 0

    async def close(self) -> None:
        """Hand out nothing more and destroy every warm jail."""
        self._closed = True
        async with self._changed:
            self._changed.notify_all()
        warm = list(self._warm)
        self._warm.clear()
        await asyncio.gather(*(self.destroy(jail) for jail in warm))
        await asyncio.gather(*self._retiring, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- leasing ---------------------------------------------------------------------------

    @property
    def limits(self) -> JailLimits:
        """The kernel limits of the pool's warm jails."""
        return self._limits

    @contextlib.asynccontextmanager
    async def lease(self, limits: JailLimits | None = None) -> AsyncIterator[PooledJail]:
        """A jail for one execution; killed when the block ends, whatever happened, and freed
        (exit, cgroup, uid) in the background.

        Warm jails have the pool's limits. Limits fixed at a jail's start (tmpfs size, rlimits,
        the V8 heap sized from the memory limit) cannot be changed on a warm jail, so other
        limits get a jail started for this execution alone: it costs one jail start.
        """
        if limits is None or limits == self._limits:
            self._arrivals.append(time.monotonic())
            jail = await self._take()
        else:
            jail = await self._take_dedicated(limits)
        try:
            yield jail
        finally:
            # Killed now; freed off the caller's path, so its stream ends without waiting for
            # the jail's exit and cgroup removal (most of a warm execution's time otherwise).
            jail.kill()
            jail.channel.close()
            task = asyncio.create_task(self._retire(jail))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def _retire(self, jail: PooledJail) -> None:
        """Free a leased jail once it is dead. It counts as leased until then: its uid and
        cgroup are free by the time a refill may start the next jail."""
        try:
            await self._free_when_dead(jail.jail, jail.cgroup, jail.uid)
        except (CgroupError, JailError, OSError) as exc:  # its uid stays taken: it may live on
            log.error("jail %s could not be freed: %s", jail.jail_id, exc)
        finally:
            self._leased -= 1
            self._refill()

    async def _take(self) -> PooledJail:
        async with self._changed:
            self._waiting += 1
            try:
                self._refill()
                await self._changed.wait_for(lambda: bool(self._warm) or self._closed)
            finally:
                self._waiting -= 1
            if self._closed:
                raise PoolClosed("the daemon is shutting down")
            jail = self._warm.popleft()
        self._leased += 1
        if jail.cgroup is not None:
            try:
                jail.cgroup.set_cpu_weight(_NORMAL_CPU_WEIGHT)
            except CgroupError as exc:  # it still runs, only with the refill's low weight
                log.warning("jail %s keeps its low cpu weight: %s", jail.jail_id, exc)
        self._refill()
        return jail

    async def _take_dedicated(self, limits: JailLimits) -> PooledJail:
        if self._closed:
            raise PoolClosed("the daemon is shutting down")
        if self.warm + self._starting + self._leased >= self.maximum and self._warm:
            # Make room: a warm jail is cheaper to replace than a caller is to keep waiting.
            await self.destroy(self._warm.pop())
        self._leased += 1
        try:
            jail = await self._spawn(limits)
        except BaseException:
            self._leased -= 1
            raise
        return jail

    # -- starting and destroying -----------------------------------------------------------

    def _refill(self) -> None:
        """Start jails until warm + starting covers the target and the waiters."""
        if self._closed:
            return
        wanted = max(self.target, self._waiting + (self.size and 1))
        alive = len(self._warm) + self._starting + self._leased
        missing = min(wanted - len(self._warm) - self._starting, self.maximum - alive)
        for _ in range(max(0, missing)):
            self._starting += 1
            self._spawn_task(self._start_one())

    @property
    def target(self) -> int:
        """Warm jails wanted now: enough for the leases expected while one jail starts.

        Arrival rate (leases per second, recent window) times the median start time, doubled
        for bursts; never below the configured size, never above what the host can hold.
        """
        if self.size == 0:
            return 0  # no pool: every execution starts its own jail
        now = time.monotonic()
        while self._arrivals and self._arrivals[0] < now - _DEMAND_WINDOW_S:
            self._arrivals.popleft()
        rate = len(self._arrivals) / _DEMAND_WINDOW_S
        starts = sorted(self.stats.start_times_s)
        start_s = starts[len(starts) // 2] if starts else 0.1
        return max(self.size, min(math.ceil(rate * start_s * 2), self._warm_ceiling))

    async def _start_one(self) -> None:
        try:
            # Refills start one at a time per core and at a lower cpu weight, so they do not
            # slow running executions down; unless a caller is waiting for this very jail.
            async with self._start_gate:
                began = time.monotonic()
                weight = _NORMAL_CPU_WEIGHT if self._waiting else _REFILL_CPU_WEIGHT
                jail = await self._spawn(self._limits, weight)
        except (JailError, ProtocolError, OSError, TimeoutError) as exc:
            self.stats.failed += 1
            log.error("jail failed to start: %s", exc)
            await asyncio.sleep(min(5.0, 0.1 * self.stats.failed))  # no hot loop on a bad host
            return
        finally:
            self._starting -= 1
        elapsed = time.monotonic() - began
        self.stats.started += 1
        self.stats.start_times_s.append(elapsed)
        if self._on_started is not None:
            self._on_started(elapsed)
        if self._closed:
            await self.destroy(jail)
            return
        jail.jail.exit_status.add_done_callback(lambda _: self._died_idle(jail))
        async with self._changed:
            self._warm.append(jail)
            self._changed.notify_all()

    async def _spawn(self, limits: JailLimits, cpu_weight: int = _NORMAL_CPU_WEIGHT) -> PooledJail:
        jail_id = uuid.uuid4().hex[:12]
        uid = self._uids.take()
        cgroup = None
        try:
            if self._cgroups is not None:
                cgroup = self._cgroups.create(jail_id, _cgroup_limits(limits))
                if cpu_weight != _NORMAL_CPU_WEIGHT:
                    cgroup.set_cpu_weight(cpu_weight)
            spec = JailSpec(
                jail_id=jail_id,
                rootfs=self._rootfs,
                host_uid=uid,
                host_gid=uid,
                limits=limits,
                cgroup_procs=cgroup.procs_files if cgroup else (),
            )
            # When this raises, even when cancelled, the jail is dead (or never existed): its
            # uid and cgroup are free to reuse.
            jail = await self._launcher.spawn(spec)
        except BaseException:
            if cgroup is not None:
                await asyncio.to_thread(cgroup.remove)  # v1's freeze-and-kill waits: not here
            self._uids.give_back(uid)
            raise
        try:
            channel = await RunnerChannel.open(*jail.take_channel_fds())
        except BaseException:
            jail.kill()
            await self._free_when_dead(jail, cgroup, uid)
            raise
        pooled = PooledJail(jail, channel, cgroup, uid, start_s=time.monotonic())
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                frame = await channel.receive(max_body=0)
            if frame is None or frame.type != "ready":
                raise JailError(f"runner did not say ready (got {frame and frame.type})")
        except BaseException:
            await self.destroy(pooled)
            raise
        return pooled

    def _died_idle(self, jail: PooledJail) -> None:
        if jail in self._warm:
            self._warm.remove(jail)
            self.stats.failed += 1
            log.warning("warm jail %s died while idle; replacing it", jail.jail_id)
            self._spawn_task(self.destroy(jail))
            self._refill()

    async def destroy(self, pooled: PooledJail) -> None:
        """Kill the jail, wait until it is gone, and free its cgroup, uid and descriptors."""
        pooled.kill()
        pooled.channel.close()
        await self._free_when_dead(pooled.jail, pooled.cgroup, pooled.uid)

    async def _free_when_dead(self, jail: Jail, cgroup: JailCgroup | None, uid: int) -> None:
        """Wait (a bounded time) until a killed jail is gone, then free its descriptors, cgroup
        and uid. A jail that outlives its SIGKILL (stuck in the kernel) keeps its uid: the
        cgroup's removal kills again and fails if anything is left, and without a cgroup the
        uid is kept out of use for good rather than handed to the next jail."""
        exited = False
        with contextlib.suppress(JailError, TimeoutError):
            async with asyncio.timeout(_EXIT_WAIT_S):
                await jail.exit_status
                exited = True
        jail.close_fds()
        if cgroup is not None:
            await asyncio.to_thread(cgroup.remove)
        elif not exited:
            raise JailError(f"jail {jail.jail_id} did not exit {_EXIT_WAIT_S:.0f} s after SIGKILL")
        self._uids.give_back(uid)


def _host_warm_ceiling() -> int:
    """How many idle jails this host holds comfortably: by cores, and by a quarter of memory."""
    by_cpu = 8 * (os.cpu_count() or 1)
    by_memory = psutil.virtual_memory().available // 4 // _IDLE_JAIL_BYTES
    return max(1, min(by_cpu, int(by_memory)))


def _cgroup_limits(limits: JailLimits) -> CgroupLimits:
    return CgroupLimits(
        memory_bytes=limits.memory_bytes, pids=limits.pids, cpu_quota=limits.cpu_quota
    )
