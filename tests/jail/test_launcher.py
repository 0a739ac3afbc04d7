"""The launcher under jails that end at once: no notice lost, no descriptor leaked.

A jail whose runner exits (or fails to exec) right away makes the fork server's "exited" notice
race its "spawned" or "failed" answer. Hundreds of them at once must each end exactly one way,
and the daemon's side must hold as many descriptors afterwards as before.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator

import pytest

from sandboxd.jail.errors import JailStartError
from sandboxd.jail.handle import JailLauncher
from sandboxd.jail.spec import JailSpec
from tests.conftest import ROOTFS

UID_BASE = 420_000
JAILS = 200
UIDS = 50  # jails share host uids here: each one ends before the test looks at the next


@pytest.fixture
async def launcher() -> AsyncIterator[JailLauncher]:
    started = await JailLauncher.start(seccomp=True)
    yield started
    await started.close()


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


async def exit_status_of(launcher: JailLauncher, index: int) -> int | str:
    """The exit status of a jail that ends at once, or the start error of one that cannot."""
    uid = UID_BASE + index % UIDS
    argv = ("/usr/local/bin/node", "-e", "0") if index % 2 else ("/usr/local/bin/no-such-node",)
    spec = JailSpec(
        jail_id=uuid.uuid4().hex[:12], rootfs=ROOTFS, host_uid=uid, host_gid=uid, argv=argv
    )
    try:
        jail = await launcher.spawn(spec)
    except JailStartError as exc:
        return str(exc)
    try:
        return await asyncio.wait_for(jail.exit_status, 60)
    finally:
        jail.close_fds()


@pytest.mark.timeout(300)
async def test_hundreds_of_jails_that_end_at_once_leak_nothing(launcher: JailLauncher) -> None:
    before = open_descriptors()
    outcomes = await asyncio.gather(*(exit_status_of(launcher, i) for i in range(JAILS)))
    exited = [outcome for i, outcome in enumerate(outcomes) if i % 2]
    failed = [outcome for i, outcome in enumerate(outcomes) if not i % 2]
    assert exited == [0] * (JAILS // 2)
    assert all(
        isinstance(text, str) and "exec /usr/local/bin/no-such-node" in text for text in failed
    ), failed[:3]
    assert open_descriptors() == before
