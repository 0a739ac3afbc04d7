"""One benchmark run: start the daemons, measure every phase on every system, return results.

Systems (same step code, same input bytes): bare node and bubblewrap + node (a fresh process per
execution running benchmarks/harness.js), sandboxd cold (``--pool-size 0``, and every execution
asks for a jail of its own, see systems.COLD_LIMITS) and sandboxd warm (default pool). Phases, in
order: latency at low load (with ``node -e 0`` alongside, for the jail start comparison, and
each sandboxd execution's phases), the daemons' own CPU per execution, throughput against
concurrency, the demo integration, payloads, sessions and tenant fairness, and last the
syscalls per execution (strace slows the daemon it is attached to). Daemon memory is read before
and after. results.json also names the commit and the machine, and keeps the raw samples.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import (
    cost,
    daemons,
    extensions,
    load,
    phases,
    provenance,
    stats,
    syscalls,
    workloads,
)
from benchmarks.daemons import Daemon
from benchmarks.plan import LARGE_PAYLOAD, Plan
from benchmarks.systems import (
    CLEAN_ENV,
    NodeStart,
    ProcessSystem,
    Sample,
    SandboxdSystem,
    System,
)
from benchmarks.workloads import MiB, Workload, size_label
from sandbox_client import Limits, SandboxClient

BWRAP = "/usr/bin/bwrap"
# A peer jail as commonly configured: every namespace, the host's / read-only, own /proc, /dev
# and /tmp. The read-only / gives node and its libraries (and the harness) to the jail.
BWRAP_ARGS = (
    "--unshare-all",
    "--die-with-parent",
    "--ro-bind", "/", "/",
    "--proc", "/proc",
    "--dev", "/dev",
    "--tmpfs", "/tmp",
)  # fmt: skip
# Distinct host uids per daemon, and away from the default 200000 that tests use.
_UID_BASE = {"sandboxd_cold": 610_000, "sandboxd_warm": 610_100}
_POOL_SIZE = {"sandboxd_cold": 0, "sandboxd_warm": None}  # None: the daemon's default


class Progress:
    """One line per phase on stderr, with the time since the run started."""

    def __init__(self) -> None:
        self._started = time.monotonic()

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self._started:6.1f} s] {text}", file=sys.stderr, flush=True)


@dataclass
class Bench:
    """The systems of one run and the daemons behind the sandboxd ones."""

    plan: Plan
    systems: list[System]
    node_start: NodeStart
    daemons: dict[str, Daemon]
    clients: dict[str, SandboxClient]
    progress: Progress

    @property
    def sandboxd(self) -> list[SandboxdSystem]:
        return [s for s in self.systems if isinstance(s, SandboxdSystem)]

    @property
    def warm(self) -> SandboxdSystem:
        return next(s for s in self.sandboxd if s.name == "sandboxd_warm")

    def baseline(self, name: str) -> ProcessSystem:
        return next(s for s in self.systems if isinstance(s, ProcessSystem) and s.name == name)


async def run(plan: Plan, out_dir: Path) -> dict[str, Any]:
    """Run every phase of ``plan``; daemon logs go to ``out_dir``."""
    started_at = datetime.now(UTC)
    progress = Progress()
    async with _bench(plan, out_dir, progress) as bench:
        results: dict[str, Any] = {
            "schema": 1,
            "mode": plan.mode,
            "started_at": started_at.isoformat(timespec="seconds"),
            "plan": dataclasses.asdict(plan),
            "systems": [system.name for system in bench.systems],
            "source": provenance.source(),
            "machine": await _machine(bench),
            "daemon_memory": {"before": await _memory(bench)},
        }
        progress.say(f"warm-up: {plan.warmup} trivial executions per system")
        await load.sequential(bench.systems, workloads.trivial(), plan.warmup)
        results |= await _latency(bench)
        results["cost"] = await _own_cpu(bench)
        results["throughput"], totals = await _throughput(bench)
        jail_rss = _idle_jail_rss_mib(results["daemon_memory"]["before"])
        results["resources"] = {name: _resources(b, jail_rss) for name, b in totals.items()}
        results["demo"] = await _demo(bench)
        results["payloads"] = await _payloads(bench)
        progress.say("extensions: sessions, tenant fairness, Redis mode (where available)")
        results["extensions"] = await extensions.run(bench.warm, plan)
        results["syscalls"] = await _syscalls(bench, out_dir)
        results["daemon_memory"]["after"] = await _memory(bench)
        results["daemon_outcomes"] = await _outcomes(bench)
    results["duration_s"] = (datetime.now(UTC) - started_at).total_seconds()
    progress.say("done")
    return results


@contextlib.asynccontextmanager
async def _bench(plan: Plan, out_dir: Path, progress: Progress) -> AsyncIterator[Bench]:
    """Start the daemons (first: they are started with preexec_fn, before any thread exists),
    connect, and stop everything at the end whatever happened."""
    progress.say("starting daemons")
    # The daemon's input cap (64 MiB) is a setting, not a per-request limit; a 64 MiB payload
    # plus its JSON quotes needs a little more.
    large = LARGE_PAYLOAD in plan.payload_sizes
    env = {"SANDBOXD_MAX_INPUT_BYTES": str(LARGE_PAYLOAD + MiB)} if large else {}
    running: dict[str, Daemon] = {}
    try:
        for name, pool_size in _POOL_SIZE.items():
            log = out_dir / f"{name}.log"
            uid_base = _UID_BASE[name]
            running[name] = daemons.start(
                name, pool_size=pool_size, uid_base=uid_base, env=env, log=log
            )
        async with contextlib.AsyncExitStack() as stack:
            clients = {
                name: await stack.enter_async_context(SandboxClient(daemon.target))
                for name, daemon in running.items()
            }
            baselines = _baselines()
            for baseline in baselines:
                stack.callback(baseline.close)
            sandboxd: list[System] = [
                SandboxdSystem(name, clients[name], running[name], cold=name == "sandboxd_cold")
                for name in running
            ]
            yield Bench(
                plan, [*baselines, *sandboxd], NodeStart(_node()), running, clients, progress
            )
    finally:
        for daemon in running.values():
            code = daemon.stop()
            if code != 0:
                progress.say(f"warning: {daemon.name} exited with {code}")


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        raise SystemExit("benchmarks: node is not on PATH")
    return os.path.realpath(node)


def _baselines() -> list[ProcessSystem]:
    """Bare node, and bubblewrap + node where bwrap is installed."""
    node = _node()
    systems = [ProcessSystem("bare_node", [node])]
    if os.access(BWRAP, os.X_OK):
        prefix = [BWRAP, *BWRAP_ARGS, node]
        systems.append(ProcessSystem("bubblewrap", prefix, rusage_complete=False))
    return systems


async def _machine(bench: Bench) -> dict[str, Any]:
    """The host (provenance.machine) and what the warm daemon says of itself."""
    status = await bench.clients["sandboxd_warm"].status()
    bwrap = BWRAP if os.access(BWRAP, os.X_OK) else None
    return provenance.machine(_node(), bwrap, CLEAN_ENV) | {
        "sandboxd": status.version,
        "cgroup_mode": status.cgroup_mode,
        "seccomp": status.seccomp,
        "warm_pool_size": status.pool.target,
        # Without cgroups of their own the daemons' host CPU is psutil's lower bound.
        "daemon_cgroups_isolated": all(d.cgroups for d in bench.daemons.values()),
    }


async def _memory(bench: Bench) -> dict[str, Any]:
    """Each daemon's RSS as psutil sees it, and as the daemon itself reports it."""
    figures = {}
    for name, daemon in bench.daemons.items():
        status = await bench.clients[name].status()
        figures[name] = daemon.memory() | {"status_rss_bytes": status.daemon_rss_bytes}
    return figures


async def _latency(bench: Bench) -> dict[str, Any]:
    """Sequential trivial executions, ``node -e 0`` among them; then the pools' start times."""
    runs = bench.plan.latency_runs
    bench.progress.say(f"latency: {runs} sequential trivial executions per system")
    probes = [*bench.systems, bench.node_start]
    samples = await load.sequential(probes, workloads.trivial(), runs)
    jail_start = {}
    for name, client in bench.clients.items():
        pool = (await client.status()).pool
        jail_start[name] = {
            "p50_ms": pool.start_ms_p50,
            "p99_ms": pool.start_ms_p99,
            "started": pool.started,
            "failed": pool.failed,
        }
    return {
        "latency": {system.name: _with_cpu(samples[system.name]) for system in bench.systems},
        "node_start": _with_cpu(samples[bench.node_start.name]),
        "jail_start": jail_start,
        "phases": {
            name: phases.summary([s.phases for s in samples[name] if s.phases is not None])
            for name in bench.daemons
        },
    }


def _with_cpu(samples: list[Sample]) -> dict[str, Any]:
    """Latency figures and the mean CPU ms a sample carried (a process's rusage; for sandboxd
    the steps' own usage)."""
    return stats.latency(samples) | {"cpu_ms": stats.usage(samples)["cpu_ms"]}


async def _own_cpu(bench: Bench) -> dict[str, Any]:
    """Each daemon's and fork server's CPU per sequential trivial execution."""
    runs = bench.plan.cost_runs
    bench.progress.say(f"daemon CPU: {runs} sequential trivial executions per daemon")
    return {system.name: await cost.own_cpu(system, runs) for system in bench.sandboxd}


async def _syscalls(bench: Bench, out_dir: Path) -> dict[str, Any]:
    """Syscalls per execution: each daemon and fork server under strace, bare node's process."""
    if not syscalls.available():
        return {"status": "not measured", "note": "no strace on PATH (scripts/setup installs it)"}
    plan = bench.plan
    bench.progress.say(
        f"syscalls: {plan.syscall_runs} trivial executions per daemon under strace, "
        f"{plan.baseline_syscall_runs} of bare node"
    )
    figures = {
        system.name: await cost.own_syscalls(system, plan.syscall_runs, out_dir)
        for system in bench.sandboxd
    }
    bare = bench.baseline("bare_node")
    figures[bare.name] = await asyncio.to_thread(
        cost.process_syscalls, bare, plan.baseline_syscall_runs, out_dir
    )
    return figures


async def _throughput(bench: Bench) -> tuple[dict[str, Any], dict[str, load.Batches]]:
    """The throughput curve per system, and each system's batches summed (for CPU and memory)."""
    plan = bench.plan
    curves: dict[str, list[dict[str, Any]]] = {system.name: [] for system in bench.systems}
    totals = {system.name: load.Batches() for system in bench.systems}
    for concurrency in plan.concurrency:
        bench.progress.say(
            f"throughput: {concurrency} streams, {plan.throughput_rounds} x {plan.batch_s} s "
            "per system"
        )
        batches = await load.concurrent(
            bench.systems, workloads.trivial(), concurrency, plan.throughput_rounds, plan.batch_s
        )
        for name, batch in batches.items():
            curves[name].append(stats.throughput(concurrency, batch.samples, batch.elapsed_s))
            totals[name].add(batch)
    return curves, totals


def _resources(batch: load.Batches, idle_jail_rss_mib: float | None) -> dict[str, Any]:
    """CPU and memory per execution along the throughput curve.

    host_cpu_ms: all CPU on the host an execution cost (a baseline's process; for a daemon its
    whole cgroup: jail start, runner, gRPC, the daemon itself). daemon_cpu_ms: the daemon's and
    fork server's own share. jail_cpu_ms, jail_peak_mib: the steps' Usage (the jail's cgroup).
    rss_mib: a baseline's peak RSS; for sandboxd the RSS of one idle warm jail (keeper + node),
    the nearest like-for-like figure (both count shared pages).
    """
    reported = stats.usage(batch.samples)
    executions = len(batch.samples)
    if batch.cpu is None or not executions:
        return {"host_cpu_ms": reported["cpu_ms"], "rss_mib": reported["peak_memory_mib"]}
    return {
        "host_cpu_ms": batch.cpu.total_s * 1000 / executions,
        "daemon_cpu_ms": batch.cpu.daemon_s * 1000 / executions,
        "jail_cpu_ms": reported["cpu_ms"],
        "jail_peak_mib": reported["peak_memory_mib"],
        "rss_mib": idle_jail_rss_mib,
    }


def _idle_jail_rss_mib(memory: dict[str, Any]) -> float | None:
    """RSS of one warm jail, from the warm daemon's idle pool right after start."""
    figures = memory.get("sandboxd_warm") or {}
    jails = figures.get("jails")
    return figures["jails_rss_bytes"] / jails / 2**20 if jails else None


async def _demo(bench: Bench) -> dict[str, Any]:
    runs = bench.plan.demo_runs
    bench.progress.say(f"demo: the 6-step integration, {runs} runs per system")
    samples = await load.sequential(bench.systems, workloads.demo(), runs)
    return {name: stats.latency(values) for name, values in samples.items()}


async def _payloads(bench: Bench) -> dict[str, Any]:
    """Latency per payload size, into the step, out of it and from step 1 to step 2."""
    plan = bench.plan
    results: dict[str, Any] = {}
    for direction in workloads.DIRECTIONS:
        results[direction] = {system.name: [] for system in bench.systems}
        for size in plan.payload_sizes:
            bench.progress.say(
                f"payload {direction}: {size_label(size)}, {plan.payload_runs} runs each"
            )
            samples = await load.sequential(
                bench.systems, _payload(direction, size), plan.payload_runs
            )
            for name, values in samples.items():
                results[direction][name].append({"size_bytes": size} | stats.latency(values))
    return results


def _payload(direction: str, size: int) -> Workload:
    """The payload workload; at 64 MiB a result (64 MiB plus JSON quotes) is above the daemon's
    default result limit of 64 MiB, so that size raises the limit (within the ceiling)."""
    if size < LARGE_PAYLOAD:
        return workloads.payload(direction, size)
    return workloads.payload(direction, size, Limits(result_bytes=size + MiB))


async def _outcomes(bench: Bench) -> dict[str, Any]:
    """What each daemon counted: outcomes of executions, and jails that failed to start."""
    figures = {}
    for name, client in bench.clients.items():
        status = await client.status()
        figures[name] = {
            "executions_by_outcome": dict(status.executions_by_outcome),
            "pool_failed": status.pool.failed,
            "pool_started": status.pool.started,
        }
    return figures


def run_sync(plan: Plan, out_dir: Path) -> dict[str, Any]:
    return asyncio.run(run(plan, out_dir))
