"""Starting jails with the real fork server and this host's cgroups: what a start given up
leaves behind (nothing)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest

from sandboxd.jail.cgroups import CgroupDriver, detect, open_driver
from sandboxd.jail.handle import JailLauncher
from sandboxd.jail.spec import JailLimits
from sandboxd.pool.destruction import JailReaper
from sandboxd.pool.spawning import JailSpawner
from sandboxd.pool.uids import UidAllocator
from tests.conftest import ROOTFS

MODE = detect()
UID_BASE = 470_000
UIDS = 4

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or MODE == "none", reason="needs root and a cgroup hierarchy"
)


@pytest.fixture
def driver() -> Iterator[CgroupDriver]:
    opened = open_driver(MODE, parent_name=f"sandboxd-test-spawn-{os.getpid()}")
    yield opened
    opened.close()


def jail_cgroups(driver: CgroupDriver) -> set[str]:
    """The jail cgroups under the driver's parent(s): on v1, one name in every hierarchy."""
    return {
        name
        for parent in driver.parent_dirs
        for name in os.listdir(parent)
        if os.path.isdir(os.path.join(parent, name))
    }


async def test_a_start_cancelled_at_once_leaves_no_cgroup_and_frees_its_uid(
    launcher: JailLauncher, driver: CgroupDriver
) -> None:
    uids = UidAllocator(UID_BASE, UIDS)
    reaper = JailReaper(uids)
    spawner = JailSpawner(launcher, rootfs=ROOTFS, uids=uids, cgroups=driver, reaper=reaper)
    for _ in range(3):
        start = asyncio.create_task(spawner.spawn(JailLimits(), cpu_weight=25))
        await asyncio.sleep(0)  # the cgroup made, the fork server asked
        start.cancel()
        with pytest.raises(asyncio.CancelledError):
            await start
        async with asyncio.timeout(10):
            await reaper.wait_retired()
        assert jail_cgroups(driver) == set()
    assert sorted(uids.take() for _ in range(UIDS)) == list(range(UID_BASE, UID_BASE + UIDS))


async def test_a_started_jail_has_its_cgroup_and_destroying_it_removes_the_cgroup(
    launcher: JailLauncher, driver: CgroupDriver
) -> None:
    uids = UidAllocator(UID_BASE, UIDS)
    reaper = JailReaper(uids)
    spawner = JailSpawner(launcher, rootfs=ROOTFS, uids=uids, cgroups=driver, reaper=reaper)
    async with asyncio.timeout(20):
        jail = await spawner.spawn(JailLimits())
        assert jail.cgroup is not None
        assert jail_cgroups(driver) == {jail.jail_id}
        await reaper.destroy(jail)
    assert jail_cgroups(driver) == set()
    assert not any(os.path.exists(directory) for directory in jail.cgroup.dirs)
