"""Jails on a kernel whose only cgroup hierarchy is v2 (what ECS on Amazon Linux 2023 runs): a
step past its memory limit, past its pids limit, under its cpu quota, and a jail killed whole.

This machine is a cgroup v1 hybrid, so scripts/test-vm runs this module (and
tests/jail/test_cgroups.py) in a VM booting Debian's kernel; here it is skipped.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import psutil
import pytest

from sandbox_client import Limits, SandboxClient, SandboxError, Step
from sandboxd.jail.cgroups import detect
from tests.conftest import DaemonProcess, start_daemon

MiB = 1024 * 1024
CPU_QUOTA = 0.25  # cores per jail: a busy step gets a quarter of the wall time as cpu
# The VM may run without KVM (emulated, many times slower): time limits far above the outcomes'.
SLOW = Limits(timeout_ms=120_000)

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
