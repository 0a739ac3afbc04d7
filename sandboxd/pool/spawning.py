"""Starting one jail: a host uid, a cgroup, the launcher's fork, the channel, the runner's `ready`.

When a start fails at any step, whatever it had taken (uid, cgroup, the half-started jail) is
given back before the error goes on.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from sandboxd.channel import RunnerChannel
from sandboxd.jail.cgroups import NORMAL_CPU_WEIGHT, CgroupDriver, CgroupLimits
from sandboxd.jail.errors import JailError
from sandboxd.jail.handle import JailLauncher
from sandboxd.jail.spec import JailLimits, JailSpec
from sandboxd.pool.destruction import JailReaper
from sandboxd.pool.pooled import PooledJail
from sandboxd.pool.uids import UidAllocator

__all__ = ["NORMAL_CPU_WEIGHT", "READY_TIMEOUT_S", "JailSpawner"]

# A runner says ready in ~35 ms here; the bound is for a jail that never will. 10 s was exceeded
# by healthy jails under CPU emulation (the cgroup v2 VM of scripts/test-vm), whose starts then
# failed and were retried without end.
READY_TIMEOUT_S = 30.0


class JailSpawner:
    """Starts jails with the given limits until their runner says `ready`."""

    def __init__(
        self,
        launcher: JailLauncher,
        *,
        rootfs: str,
        uids: UidAllocator,
        cgroups: CgroupDriver | None,
        reaper: JailReaper,
    ):
        self._launcher = launcher
        self._rootfs = rootfs
        self._uids = uids
        self._cgroups = cgroups
        self._reaper = reaper

    async def spawn(self, limits: JailLimits, cpu_weight: int = NORMAL_CPU_WEIGHT) -> PooledJail:
        jail_id = uuid.uuid4().hex[:12]
        uid = self._uids.take()
        cgroup = None
        try:
            if self._cgroups is not None:
                # On the loop: a thread hop costs more CPU than the mkdirs and writes (about
                # 250 us of a ~300 us create, measured), though mkdir may wait meanwhile for the
                # cgroup mutex that another jail's join holds (up to ~50 ms without favordynmods).
                cgroup = self._cgroups.create(jail_id, _cgroup_limits(limits, cpu_weight))
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
            await self._reaper.free_unused(cgroup, uid)
            raise
        try:
            channel = await RunnerChannel.open(*jail.take_channel_fds())
        except BaseException:
            jail.kill()
            await self._reaper.free_when_dead(jail, cgroup, uid)
            raise
        pooled = PooledJail(jail, channel, cgroup, uid, start_s=time.monotonic())
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                frame = await channel.receive(max_body=0)
            if frame is None or frame.type != "ready":
                raise JailError(f"runner did not say ready (got {frame and frame.type})")
        except BaseException:
            await self._reaper.destroy(pooled)
            raise
        return pooled


def _cgroup_limits(limits: JailLimits, cpu_weight: int) -> CgroupLimits:
    return CgroupLimits(
        memory_bytes=limits.memory_bytes,
        pids=limits.pids,
        cpu_quota=limits.cpu_quota,
        cpu_weight=cpu_weight,
    )
