"""The launcher: one process per jail, and jails that end at once lose no notice nor descriptor.

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

from sandboxd.jail.errors import JailStartError, SetupError
from sandboxd.jail.handle import JailLauncher
from sandboxd.jail.spec import JailSpec
from sandboxd.jail.syscalls import CLONE_NEWPID, Clone3Refused, clone, clone3_into_cgroup
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


def _status_fields(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as status:
        return dict(line.rstrip("\n").split(":\t", 1) for line in status)


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as children:
        return [int(child) for child in children.read().split()]


async def test_a_jail_is_one_process_the_fork_servers_child_and_pid_1(
    launcher: JailLauncher,
) -> None:
    spec = JailSpec(
        jail_id=uuid.uuid4().hex[:12],
        rootfs=ROOTFS,
        host_uid=UID_BASE,
        host_gid=UID_BASE,
        argv=("/usr/local/bin/node", "-e", "setTimeout(() => {}, 60000)"),
    )
    jail = await launcher.spawn(spec)
    try:
        status = _status_fields(jail.init_pid)
        assert int(status["PPid"]) == launcher.fork_server_pid
        assert status["NSpid"].split()[-1] == "1"  # pid 1 of its own pid namespace
        assert status["Uid"].split()[0] == str(UID_BASE)
        assert _children(launcher.fork_server_pid) == [jail.init_pid]  # no keeper in between
        jail.kill()
        # The fork server reaps the init itself: the status is the runner's own.
        exit_status = await asyncio.wait_for(jail.exit_status, 30)
        assert os.WIFSIGNALED(exit_status) and os.WTERMSIG(exit_status) == 9
    finally:
        jail.kill()
        jail.close_fds()


async def test_the_runners_exit_code_reaches_the_daemon(launcher: JailLauncher) -> None:
    spec = JailSpec(
        jail_id=uuid.uuid4().hex[:12],
        rootfs=ROOTFS,
        host_uid=UID_BASE,
        host_gid=UID_BASE,
        argv=("/usr/local/bin/node", "-e", "process.exit(7)"),
    )
    jail = await launcher.spawn(spec)
    try:
        assert os.waitstatus_to_exitcode(await asyncio.wait_for(jail.exit_status, 30)) == 7
    finally:
        jail.close_fds()


def test_a_refused_clone_names_the_step_and_makes_no_process() -> None:
    clone_thread = 0x00010000  # without CLONE_SIGHAND and CLONE_VM: EINVAL, checked first
    before = _children(os.getpid())
    with pytest.raises(SetupError) as refused:
        clone(CLONE_NEWPID | clone_thread)
    assert str(refused.value) == "clone: [Errno 22] Invalid argument"
    assert _children(os.getpid()) == before


def test_a_clone3_into_what_is_not_a_v2_cgroup_names_the_step_and_makes_no_process() -> None:
    # Not a refusal (the caller does not fall back): the directory is no cgroup2 directory.
    before = _children(os.getpid())
    not_a_cgroup = os.open("/tmp", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with pytest.raises(SetupError) as refused:
            clone3_into_cgroup(CLONE_NEWPID, not_a_cgroup)
    finally:
        os.close(not_a_cgroup)
    assert not isinstance(refused.value, Clone3Refused)
    assert str(refused.value) == "clone3 into cgroup: [Errno 9] Bad file descriptor"
    assert _children(os.getpid()) == before
