"""Soak: thousands of mixed executions leave nothing behind and do not grow the daemon.

A tenth of the mix are hostile steps that write their own frames to the runner's event pipe.
"""

from __future__ import annotations

import asyncio
import collections
import os
import time

import psutil
import pytest

from sandbox_client import ErrorKind, Limits, SandboxClient, SandboxError, Step
from sandboxd.jail import cgroups
from tests.conftest import UID_BASE, DaemonProcess, start_daemon
from tests.security.conftest import js

EXECUTIONS = int(os.environ.get("SOAK_EXECUTIONS", "2000"))
WARM_UP = 200
CONCURRENCY = 6
POOL_SIZE = 4

NORMAL = Step("ok", "module.exports = async (ctx) => ({ n: ctx.input.n, twice: ctx.input.n * 2 })")
THROWS = Step("throws", "module.exports = async () => { throw new Error('soak failure') }")
SPINS = Step("spins", "module.exports = async () => { while (true) {} }", Limits(timeout_ms=150))
BALLOON = Step(
    "balloon",
    "module.exports = async () => { const a = []; while (true) a.push(Buffer.alloc(1 << 20, 1)); }",
)
HANGS = Step(
    "hangs", "module.exports = async () => { console.log('hanging'); await new Promise(() => {}); }"
)

# Steps that write their own frames to the runner's event pipe (fd 4, with the security suite's
# `frame` helper): each one a protocol violation (USER_ERROR) or a flood over its budget
# (OUTPUT_LIMIT), ended at once.
VIOLATIONS = [
    Step("violates", js(f"module.exports = async () => {{ fs.writeSync(4, {frames}); }};"))
    for frames in (
        "Buffer.from('garbage garbage garbage')",
        'frame(\'{"t":"log","seq":0,"level":\''
        " + '['.repeat(50000) + ']'.repeat(50000) + '}')",
        "frame({ t: 'log', seq: 0, level: 'info', ts: 1e20 }, 'x')",
        "frame({ t: 'result', seq: 0, encoding: 'json', size: 8, kept: false }, 'not json')",
        "frame({ t: 'result', seq: 3, encoding: 'json', size: 1, kept: false }, '1')",
        "frame({ t: 'log', seq: 0, level: 'info', ts: 1 }, 'x'.repeat(2 << 20))",
    )
]
FLOODS = [
    Step(
        "floods",
        js(f"module.exports = async () => {{ const f = {frame}; for (;;) fs.writeSync(4, f); }};"),
        Limits(log_lines=50),
    )
    for frame in (
        "frame({ t: 'log', seq: 0, level: 'info', ts: 1 })",
        "frame({ t: 'truncated', seq: 0 })",
    )
]


async def one(client: SandboxClient, n: int) -> str:
    """Run the n-th execution of the mix; the outcome as a kind name."""
    kind = n % 20
    try:
        if kind < 12:
            assert await client.run(tenant_id=f"t{n % 5}", steps=[NORMAL], input={"n": n}) == {
                "n": n,
                "twice": 2 * n,
            }
            return "SUCCEEDED"
        if kind < 14:
            await client.run(tenant_id="t1", steps=[THROWS])
        elif kind < 16:
            await client.run(tenant_id="t2", steps=[SPINS])
        elif kind == 16:
            await client.run(tenant_id="t3", steps=[BALLOON], limits=Limits(memory_bytes=96 << 20))
        elif kind == 17:
            return await disconnect(client)
        elif kind == 18:
            await client.run(tenant_id="t0", steps=[VIOLATIONS[n // 20 % len(VIOLATIONS)]])
        else:
            await client.run(tenant_id="t4", steps=[FLOODS[n // 20 % len(FLOODS)]])
    except SandboxError as error:
        return error.kind.name
    return "UNEXPECTED SUCCESS"


async def disconnect(client: SandboxClient) -> str:
    events = client.execute(tenant_id="t4", steps=[HANGS])
    async for event in events:
        if event.HasField("log"):
            break
    await events.aclose()
    return "CANCELLED"


async def run_mix(client: SandboxClient, numbers: range) -> collections.Counter[str]:
    gate = asyncio.Semaphore(CONCURRENCY)

    async def limited(n: int) -> str:
        async with gate:
            return await one(client, n)

    return collections.Counter(await asyncio.gather(*(limited(n) for n in numbers)))


async def settled(client: SandboxClient) -> None:
    """Wait until the pool is back to its configured size with nothing running or starting."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = await client.status()
        pool = status.pool
        if (pool.warm, pool.leased, pool.starting, pool.target) == (POOL_SIZE, 0, 0, POOL_SIZE):
            return
        await asyncio.sleep(0.5)
    pytest.fail(f"the pool did not settle: {status.pool}")


def footprint(daemon: DaemonProcess) -> dict[str, int]:
    process = psutil.Process(daemon.process.pid)
    # The daemon's own tree: other daemons on this host (other tests) use the same uid range.
    jail_processes = [p for p in process.children(recursive=True) if p.uids().real >= UID_BASE]
    parents = cgroups.open_driver(cgroups.detect(), cgroups.daemon_parent_name(daemon.process.pid))
    jail_cgroups = {
        name
        for parent in parents.parent_dirs
        for name in os.listdir(parent)
        if os.path.isdir(os.path.join(parent, name))
    }
    return {
        "rss": process.memory_info().rss,
        "fds": process.num_fds(),
        "jail_processes": len(jail_processes),
        "jail_cgroups": len(jail_cgroups),
        "host_mounts": len(open("/proc/self/mountinfo").readlines()),
    }


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_soak_leaves_nothing_behind() -> None:
    daemon = start_daemon(pool_size=POOL_SIZE)
    try:
        async with SandboxClient(daemon.target) as client:
            await run_mix(client, range(WARM_UP))
            await settled(client)
            before = footprint(daemon)
            outcomes = await run_mix(client, range(WARM_UP, WARM_UP + EXECUTIONS))
            await settled(client)
            after = footprint(daemon)
    finally:
        assert daemon.stop() == 0
    expected = collections.Counter(
        {
            "SUCCEEDED": 0.60,
            "USER_ERROR": 0.15,
            "TIMEOUT": 0.10,
            "MEMORY_LIMIT": 0.05,
            "CANCELLED": 0.05,
            "OUTPUT_LIMIT": 0.05,
        }
    )
    assert outcomes == collections.Counter({k: round(v * EXECUTIONS) for k, v in expected.items()})
    print(f"soak: {EXECUTIONS} executions, before {before}, after {after}")
    # One process per warm jail (its runner), one cgroup each, nothing else.
    assert after["jail_processes"] == before["jail_processes"] == POOL_SIZE
    assert after["jail_cgroups"] == before["jail_cgroups"] == POOL_SIZE
    assert after["host_mounts"] == before["host_mounts"]
    assert after["fds"] == before["fds"]
    assert after["rss"] <= before["rss"] * 1.10
    assert ErrorKind.MEMORY_LIMIT.name in outcomes
