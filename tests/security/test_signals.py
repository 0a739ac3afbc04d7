"""Catalogue: Signals and killing. Signals stay inside the jail; every process dies with it."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psutil
import pyseccomp
import pytest

from sandbox_client import ErrorKind, Limits, SandboxClient, Step
from tests.security.conftest import (
    MARKER,
    POOL_MAX,
    SECURITY_UID_BASE,
    SecurityDaemon,
    daemon_cgroup_parents,
    describe,
    execute,
    js,
    kill_processes,
    marked_processes,
    private_cgroup,
    probe,
    start_security_daemon,
    uid_processes,
    wait_for,
    wait_until_gone,
)


@pytest.fixture
def host_sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    """A host process running as every host uid the daemon gives its jails."""
    sleepers = [
        subprocess.Popen(["sleep", "60"], user=uid, group=uid, stdin=subprocess.DEVNULL)
        for uid in range(SECURITY_UID_BASE, SECURITY_UID_BASE + POOL_MAX)
    ]
    yield sleepers
    for sleeper in sleepers:
        sleeper.kill()
        sleeper.wait()


SIGNALS = js(r"""
module.exports = async (ctx) => {
  const out = {};
  const child = spawnMarked('kill-minus-one', 'setInterval(() => {}, 1000)');
  await new Promise((resolve) => child.on('spawn', resolve));
  const exited = new Promise((resolve) => child.on('exit', (code, sig) => resolve(sig)));
  out.killAll = attempt(() => process.kill(-1, 'SIGKILL'));
  out.childSignal = await exited;
  out.killAllTerm = attempt(() => process.kill(-1, 'SIGTERM'));
  out.killInit = attempt(() => process.kill(1, 'SIGKILL'));
  out.stopInit = attempt(() => process.kill(1, 'SIGSTOP'));
  out.termSelf = attempt(() => process.kill(process.pid, 'SIGTERM'));
  await sleep(100);
  for (const [name, pid] of Object.entries(ctx.input.hostPids)) {
    out[name + ' probe'] = attempt(() => process.kill(pid, 0));
    out[name + ' SIGKILL'] = attempt(() => process.kill(pid, 'SIGKILL'));
    out[name + ' group'] = attempt(() => process.kill(-pid, 'SIGKILL'));
  }
  out.runnerAlive = true;
  return out;
};
""")


@pytest.fixture
def host_pids(
    daemon: SecurityDaemon, host_sleepers: list[subprocess.Popen[bytes]]
) -> dict[str, Any]:
    return {
        "hostPids": {
            "daemon": daemon.pid,
            "test": os.getpid(),
            "sleeper": host_sleepers[0].pid,
        }
    }


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("killAll", "OK"),
        ("childSignal", "SIGKILL"),  # kill(-1) reached the jail's own child...
        ("killAllTerm", "ESRCH"),  # ...and then there was nobody left to signal
        ("killInit", "OK"),  # pid 1 of a namespace ignores signals from inside it
        ("stopInit", "OK"),
        ("termSelf", "OK"),
        ("daemon probe", "ESRCH"),
        ("daemon SIGKILL", "ESRCH"),
        ("daemon group", "ESRCH"),
        ("test probe", "ESRCH"),
        ("test SIGKILL", "ESRCH"),
        ("sleeper SIGKILL", "ESRCH"),
        ("sleeper group", "ESRCH"),
        ("runnerAlive", True),
    ],
)
async def test_signals_from_inside_reach_only_the_jail(
    client: SandboxClient, host_pids: dict[str, Any], key: str, expected: Any
) -> None:
    seen = await probe(client, "signals", SIGNALS, input=host_pids)
    assert seen[key] == expected


async def test_kill_minus_one_spares_host_processes_of_the_same_uids(
    client: SandboxClient,
    host_pids: dict[str, Any],
    host_sleepers: list[subprocess.Popen[bytes]],
    daemon: SecurityDaemon,
) -> None:
    await probe(client, "signals", SIGNALS, input=host_pids)
    # Same host uid as any jail of the daemon, outside its pid namespace: untouched.
    assert [sleeper.poll() for sleeper in host_sleepers] == [None] * POOL_MAX
    assert daemon.alive()


ESCAPERS = js(r"""
module.exports = async () => {
  const keepAlive = 'for (const s of ["SIGHUP", "SIGTERM", "SIGINT"]) process.on(s, () => {});' +
                    ' setInterval(() => {}, 1000);';
  const detached = spawnMarked('escape-detached', keepAlive, { detached: true });
  detached.unref();
  spawnMarked('escape-child', keepAlive);
  // Double fork: the middle process starts a detached grandchild and exits at once.
  const argv = JSON.stringify(['-e', keepAlive, MARKER + '-escape-grandchild']);
  const grandchild = `require('child_process').spawn(process.execPath, ${argv},
    { detached: true, stdio: 'ignore' }).unref();`;
  const middle = spawnMarked('escape-middle', grandchild);
  await new Promise((resolve) => middle.on('exit', resolve));
  // After the result: a timer that would start yet another process.
  setTimeout(() => spawnMarked('escape-late', keepAlive, { detached: true }), 300);
  const { Worker } = require('worker_threads');
  const worker = new Worker('setInterval(() => {}, 1000)', { eval: true });
  worker.unref();
  console.log('spawned');
  await sleep(1000);  // time for the host to see them all alive
  return 'returned';
};
""")


async def test_detached_setsid_and_double_forked_processes_die_with_the_execution(
    client: SandboxClient,
) -> None:
    alive_during: list[str] = []
    outcome_events = []
    async for event in client.execute(tenant_id="sec-acme", steps=[Step("attack", ESCAPERS)]):
        outcome_events.append(event)
        if event.HasField("log") and event.log.text == "spawned":
            for name in ("escape-child", "escape-detached", "escape-grandchild"):
                if wait_for(functools.partial(marked_processes, f"{MARKER}-{name}"), 5):
                    alive_during.append(name)
    assert alive_during == ["escape-child", "escape-detached", "escape-grandchild"]
    assert [e.step_finished.json for e in outcome_events if e.HasField("step_finished")] == [
        b'"returned"'
    ]
    # The jail is killed before the RPC ends (freed just after): gone within moments.
    assert describe(wait_until_gone(lambda: marked_processes(f"{MARKER}-escape"))) == []
    await asyncio.sleep(0.6)  # the late timer would have fired by now
    assert describe(marked_processes(f"{MARKER}-escape")) == []


async def test_a_timeout_kills_the_ignoring_runner_and_all_its_children(
    client: SandboxClient,
) -> None:
    code = js(r"""
    module.exports = async () => {
      for (const s of ['SIGTERM', 'SIGINT', 'SIGHUP', 'SIGUSR1']) process.on(s, () => {});
      spawnMarked('timeout-child', 'process.on("SIGTERM", () => {}); setInterval(() => {}, 1000)',
                  { detached: true });
      for (;;) {}
    };
    """)
    outcome = await execute(client, code, limits=Limits(timeout_ms=800))
    assert outcome.kind is ErrorKind.TIMEOUT
    assert describe(wait_until_gone(lambda: marked_processes(f"{MARKER}-timeout"))) == []


# --- the daemon killed with SIGKILL -------------------------------------------------------------

KILLED_UID_BASE = SECURITY_UID_BASE + 100
SIGKILL_GRACE_S = 1.5
FUTEX = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, "futex")
KILLED_POOL_MAX = 4

WAITING = js(r"""
module.exports = async () => {
  spawnMarked('sigkill-waiting', 'setInterval(() => {}, 1000)', { detached: true }).unref();
  console.log('ready');
  await new Promise(() => {});  // the event loop stays free
};
""")

BLOCKED = js(r"""
module.exports = async () => {
  spawnMarked('sigkill-blocked', 'setInterval(() => {}, 1000)', { detached: true }).unref();
  console.log('ready');
  blockFor(30000);  // the whole runner, event loop included, sleeps in the kernel
};
""")


@dataclass
class KilledDaemon:
    pid: int
    jails_before: list[str]
    parents_before: list[str]
    survivors: dict[str, list[str]] = field(default_factory=dict)
    cgroup_dirs: list[str] = field(default_factory=list)
    restarted: SecurityDaemon | None = None


def _in_futex(pid: int) -> list[int]:
    """[pid] once the main thread of `pid` is inside futex() (Atomics.wait), else []."""
    with open(f"/proc/{pid}/syscall") as handle:
        number = handle.read().split()[0]
    return [pid] if number == str(FUTEX) else []


async def _wait_ready(events: Any) -> None:
    async for event in events:
        if event.HasField("log") and event.log.text == "ready":
            return


def _survivors(uid_base: int, count: int, marker: str) -> list[psutil.Process]:
    return uid_processes(uid_base, count) + marked_processes(marker)


@pytest.fixture(scope="module")
def killed_daemon() -> Iterator[KilledDaemon]:
    """A daemon with a warm jail and two running executions, killed with SIGKILL."""
    with private_cgroup(f"{MARKER}-sigkill") as cgroup_dirs:
        yield from _killed_daemon(cgroup_dirs)


def _killed_daemon(cgroup_dirs: list[str]) -> Iterator[KilledDaemon]:
    running = start_security_daemon(KILLED_UID_BASE, 1, KILLED_POOL_MAX, cgroup_dirs=cgroup_dirs)
    marker = f"{MARKER}-sigkill"

    async def kill_while_running() -> KilledDaemon:
        async with SandboxClient(running.target) as client:
            streams = []
            for name, code in (("waiting", WAITING), ("blocked", BLOCKED)):
                events = client.execute(tenant_id="sec-acme", steps=[Step(name, code)])
                await asyncio.wait_for(_wait_ready(events), 30)
                streams.append(events)  # kept open: the executions run until the daemon dies
            (child,) = wait_for(lambda: marked_processes(f"{marker}-blocked"), 5)
            # Killed while still on its way to blockFor(), the runner would see its work pipe
            # close and exit: wait until its main thread sleeps in futex().
            assert wait_for(lambda: _in_futex(child.ppid()), 10)
            # And the warm jail the pool starts after the two leases: five processes in all.
            assert wait_for(lambda: _five_or_none(running.jail_processes()), 10)
            state = KilledDaemon(
                running.pid, describe(running.jail_processes()), daemon_cgroup_parents(running.pid)
            )
            running.running.process.send_signal(signal.SIGKILL)
            running.running.process.wait()
            # Parent-death signals act within milliseconds; any later and the next daemon
            # started on this host (which removes dead daemons' cgroups) would hide a leak.
            left = wait_until_gone(
                lambda: _survivors(KILLED_UID_BASE, KILLED_POOL_MAX, marker), SIGKILL_GRACE_S
            )
            state.survivors["after the grace"] = describe(left)
            for events in streams:
                await events.aclose()
            return state

    try:
        state = asyncio.run(kill_while_running())
    except BaseException:
        if running.alive():
            running.running.process.kill()
            running.running.process.wait()
        kill_processes(_survivors(KILLED_UID_BASE, KILLED_POOL_MAX, marker))
        raise
    state.cgroup_dirs = cgroup_dirs
    try:
        yield state
    finally:
        if state.restarted is not None:
            assert state.restarted.stop() == 0
        leftovers = _survivors(KILLED_UID_BASE, KILLED_POOL_MAX, marker)
        kill_processes(leftovers)  # only processes of the jails this fixture's daemon started
        wait_until_gone(lambda: _survivors(KILLED_UID_BASE, KILLED_POOL_MAX, marker), 5)


def _five_or_none(processes: list[psutil.Process]) -> list[psutil.Process]:
    return processes if len(processes) >= 5 else []


def test_killed_daemon_had_running_jails(killed_daemon: KilledDaemon) -> None:
    # 3 jails, a warm one and two leased, each one process (its runner), and the steps' children.
    assert len(killed_daemon.jails_before) >= 5
    assert killed_daemon.parents_before != []


def test_daemon_killed_with_sigkill_takes_every_jail_process_with_it(
    killed_daemon: KilledDaemon,
) -> None:
    # The warm jail, a runner waiting on a promise (it would also see its work pipe close) and
    # a runner blocked in the kernel (only the parent-death signals can end that one), with the
    # detached children of both: nothing outlives the daemon by more than the grace.
    assert killed_daemon.survivors == {"after the grace": []}


def test_next_daemon_removes_what_the_killed_one_left(killed_daemon: KilledDaemon) -> None:
    # In the same cgroup as the killed daemon: that is where it looks for dead daemons.
    killed_daemon.restarted = start_security_daemon(
        KILLED_UID_BASE + 50, 1, 2, cgroup_dirs=killed_daemon.cgroup_dirs
    )
    assert [p for p in killed_daemon.parents_before if os.path.exists(p)] == []
    marker = f"{MARKER}-sigkill"
    left = wait_until_gone(lambda: _survivors(KILLED_UID_BASE, KILLED_POOL_MAX, marker), 5)
    assert describe(left) == []
