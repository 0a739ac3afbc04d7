"""Jails on a kernel whose only cgroup hierarchy is v2 (what ECS on Amazon Linux 2023 runs): a
step past its memory limit, past its pids limit, under its cpu quota, and a jail killed whole;
a jail's init born in its cgroup (clone3 with CLONE_INTO_CGROUP), whose cgroup namespace is
rooted there, and the fork server's fallback when clone3 is refused.

This machine is a cgroup v1 hybrid, so scripts/test-vm runs this module (and
tests/jail/test_cgroups.py) in a VM booting Debian's kernel; here it is skipped.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import psutil
import pytest

from sandbox_client import Limits, SandboxClient, SandboxError, Step
from sandboxd.jail import forkserver, launch
from sandboxd.jail.cgroups import CgroupDriver, CgroupLimits, V2Cgroup, detect, open_driver
from sandboxd.jail.errors import SetupError
from sandboxd.jail.forkserver import ForkServerSelf, InitCloner, Spawned
from sandboxd.jail.spec import JailSpec
from tests.conftest import ROOTFS, DaemonProcess, start_daemon

MiB = 1024 * 1024
CPU_QUOTA = 0.25  # cores per jail: a busy step gets a quarter of the wall time as cpu
# The VM may run without KVM (emulated, many times slower): time limits far above the outcomes'.
SLOW = Limits(timeout_ms=120_000)
CGROUP_ROOT = "/sys/fs/cgroup"
UID_BASE = 761_000
# The runner's stand-in: prints its cgroup as it sees it (0::/ when its namespace is rooted at the
# jail's cgroup), then waits to be killed.
SHOW_CGROUP = (
    "/usr/local/bin/node",
    "-e",
    "process.stdout.write(require('fs').readFileSync('/proc/self/cgroup'));"
    " setInterval(() => {}, 1e3)",
)

pytestmark = pytest.mark.skipif(
    detect() != "v2", reason="cgroup v2 only: scripts/test-vm runs it in a VM"
)


@pytest.fixture(scope="module")
def v2_daemon() -> Iterator[DaemonProcess]:
    env = {"SANDBOXD_CPU_QUOTA": str(CPU_QUOTA), "SANDBOXD_UID_BASE": "760000"}
    running = start_daemon("--cgroups", "v2", pool_size=1, env=env)
    yield running
    assert running.stop() == 0


@pytest.fixture
async def client(v2_daemon: DaemonProcess) -> AsyncIterator[SandboxClient]:
    async with SandboxClient(v2_daemon.target) as connected:
        yield connected


async def test_a_step_past_its_memory_limit_is_memory_limit(client: SandboxClient) -> None:
    balloon = Step(
        "balloon",
        "module.exports = async () => { const a = []; for (;;) a.push(Buffer.alloc(8 << 20, 1)) }",
        SLOW,
    )
    with pytest.raises(SandboxError) as failed:
        await client.run(tenant_id="t", steps=[balloon], limits=Limits(memory_bytes=96 * MiB))
    assert failed.value.kind.name.endswith("MEMORY_LIMIT")
    assert "memory limit" in failed.value.message


async def test_a_step_past_its_pids_limit_gets_eagain(client: SandboxClient) -> None:
    spawner = Step(
        "spawner",
        """module.exports = async () => new Promise((done) => {
          const cp = require('child_process');
          for (let i = 0; i < 40; i++) {
            const child = cp.spawn(process.execPath, ['-e', 'setTimeout(() => {}, 3000)']);
            child.on('error', (e) => done(e.code));
          }
          setTimeout(() => done('all spawned'), 60000);
        })""",
        SLOW,
    )
    result = await client.run(tenant_id="t", steps=[spawner], limits=Limits(pids=24))
    assert result == "EAGAIN"


async def test_a_busy_step_gets_its_cpu_quota(client: SandboxClient) -> None:
    busy = Step(
        "busy",
        """module.exports = async () => {
          const start = Date.now(), cpu = process.cpuUsage();
          while (Date.now() - start < 2000) {}
          const used = process.cpuUsage(cpu);
          return (used.user + used.system) / 1000 / (Date.now() - start);
        }""",
    )
    share = await client.run(tenant_id="t", steps=[busy])
    assert CPU_QUOTA * 0.6 < share < CPU_QUOTA * 1.4


async def test_a_timed_out_jail_is_killed_whole(client: SandboxClient) -> None:
    marker = f"sandboxd-v2-{uuid.uuid4().hex}"
    escaper = Step(
        "escaper",
        f"""module.exports = async () => {{
          const cp = require('child_process');
          for (let i = 0; i < 3; i++) {{
            cp.spawn(process.execPath, ['-e', 'setInterval(() => {{}}, 1000)', '{marker}'],
                     {{ detached: true, stdio: 'ignore' }}).unref();
          }}
          for (;;) {{}}
        }}""",
    )
    with pytest.raises(SandboxError) as failed:
        await client.run(tenant_id="t", steps=[escaper], limits=Limits(timeout_ms=1500, pids=64))
    assert failed.value.kind.name.endswith("TIMEOUT")
    deadline = time.monotonic() + 5
    while alive := marked_processes(marker):
        assert time.monotonic() < deadline, f"outlived their jail: {alive}"
        time.sleep(0.05)


def marked_processes(marker: str) -> list[int]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if marker in (process.info["cmdline"] or []) and process.pid != os.getpid():
            found.append(process.pid)
    return found


async def test_a_step_sees_its_cgroup_as_the_root(client: SandboxClient) -> None:
    reader = Step(
        "reader",
        "module.exports = async () => require('fs').readFileSync('/proc/self/cgroup', 'utf8')",
    )
    assert await client.run(tenant_id="t", steps=[reader]) == "0::/\n"


# --- the fork server's clone, in this process: its init is our child ------------------------------


@pytest.fixture(scope="module")
def driver() -> Iterator[CgroupDriver]:
    opened = open_driver("v2", parent_name=f"sandboxd-test-{os.getpid()}")
    yield opened
    opened.cleanup_stale()
    for parent in opened.parent_dirs:
        os.rmdir(parent)


@pytest.fixture
def jail_cgroup(driver: CgroupDriver) -> Iterator[V2Cgroup]:
    made = driver.create(f"born-{uuid.uuid4().hex[:12]}", CgroupLimits(64 * MiB, 16, 1.0))
    assert isinstance(made, V2Cgroup)
    yield made
    made.remove()


@contextlib.contextmanager
def spawned(cgroup: V2Cgroup, cloner: InitCloner, index: int = 0) -> Iterator[Spawned]:
    """One jail started by forkserver.spawn in this process, killed and reaped on the way out."""
    own = ForkServerSelf(
        pid=os.getpid(),
        pidfd=os.pidfd_open(os.getpid()),
        netns=os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC),
        cloner=cloner,
    )
    uid = UID_BASE + index
    spec = JailSpec(
        jail_id=uuid.uuid4().hex[:12],
        rootfs=ROOTFS,
        host_uid=uid,
        host_gid=uid,
        cgroup_procs=cgroup.procs_files,
        argv=SHOW_CGROUP,
    )
    try:
        jail = forkserver.spawn(spec, b"", own)
        try:
            yield jail
        finally:
            os.kill(jail.init_pid, signal.SIGKILL)
            os.waitpid(jail.init_pid, 0)
            for fd in (jail.work, jail.events, jail.output, jail.pidfd, jail.proxy):
                os.close(fd)
    finally:
        os.close(own.pidfd)
        os.close(own.netns)


def first_line(fd: int) -> str:
    with os.fdopen(os.dup(fd), "rb") as output:
        return output.readline().decode()


def cgroup_of(pid: int) -> str:
    with open(f"/proc/{pid}/cgroup") as entries:
        return entries.read()


def test_the_init_is_born_in_its_cgroup_without_joining(
    jail_cgroup: V2Cgroup, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_join(procs_files: tuple[str, ...]) -> None:
        raise SetupError(f"joined {procs_files}")

    # The init is a fork of this process: it would call this instead of writing cgroup.procs.
    monkeypatch.setattr(launch, "_join_cgroup", no_join)
    cloner = InitCloner(cgroup_v2=True)
    with spawned(jail_cgroup, cloner) as jail:
        assert first_line(jail.output) == "0::/\n"  # its cgroup namespace is rooted there
        assert cgroup_of(jail.init_pid) == f"0::{jail_cgroup.dir.removeprefix(CGROUP_ROOT)}\n"
    assert cloner.into_cgroup


def test_a_refused_clone3_falls_back_to_joining_once_and_is_remembered(
    jail_cgroup: V2Cgroup,
) -> None:
    """clone3 refused as Docker's seccomp profile refuses it (ENOSYS): every jail still starts in
    its cgroup, the fork server says so once and stops asking."""
    reports_r, reports_w = os.pipe()
    log_r, log_w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(reports_r)
        os.close(log_r)
        _start_two_jails_without_clone3(jail_cgroup, reports_w, log_w)
    os.close(reports_w)
    os.close(log_w)
    with os.fdopen(reports_r, "rb") as reports, os.fdopen(log_r, "rb") as log:
        seen = [json.loads(line) for line in reports]
        logged = log.read().decode()
    assert os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) == 0
    in_cgroup = f"0::{jail_cgroup.dir.removeprefix(CGROUP_ROOT)}\n"
    assert seen == [
        {"inside": "0::/\n", "init": in_cgroup, "into_cgroup": False},
        {"inside": "0::/\n", "init": in_cgroup, "into_cgroup": False},
    ]
    assert logged == (
        f"fork server: clone3 into cgroup: [Errno {errno.ENOSYS}] Function not implemented: "
        "jails join their cgroup after clone\n"
    )


def _start_two_jails_without_clone3(cgroup: V2Cgroup, reports: int, log: int) -> None:
    """In a child of the test: clone3 refused with ENOSYS, two jails, one JSON line for each;
    what the fork server code prints goes to `log` (pytest's capture of sys.stderr does not)."""
    import pyseccomp

    try:
        refusing = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
        refusing.add_rule(pyseccomp.ERRNO(errno.ENOSYS), "clone3")
        refusing.load()
        cloner = InitCloner(cgroup_v2=True)
        with (
            open(log, "w", buffering=1, closefd=False) as logged,
            contextlib.redirect_stderr(logged),
        ):
            for index in range(2):
                with spawned(cgroup, cloner, index) as jail:
                    seen = {
                        "inside": first_line(jail.output),
                        "init": cgroup_of(jail.init_pid),
                        "into_cgroup": cloner.into_cgroup,
                    }
                os.write(reports, json.dumps(seen).encode() + b"\n")
    except BaseException as exc:
        os.write(log, f"{type(exc).__name__}: {exc}".encode())
        os._exit(1)
    os._exit(0)
