"""What one execution costs sandboxd's own processes: CPU of the daemon and of its fork server,
and their syscalls, beside what one bare node execution costs (measured in the same run).

Both are taken around a run of sequential trivial executions with no settling in between (a
settle polls GetStatus, which is daemon work of its own), then one coarse settle so the jails
those executions used up are replaced and counted: the refill is part of an execution's cost.
"""

from __future__ import annotations

import resource
from pathlib import Path
from statistics import median
from typing import Any

from benchmarks import stats, syscalls, workloads
from benchmarks.systems import ProcessSystem, SandboxdSystem

# Between GetStatus polls while waiting for the refill: a few polls in all, not one per 10 ms.
_COARSE_POLL_S = 0.1


async def own_cpu(system: SandboxdSystem, runs: int) -> dict[str, Any]:
    """CPU ms per execution of the daemon's process and of its fork server (psutil), fork server
    CPU per jail it started, and the benchmark's own (client) CPU per execution."""
    workload = workloads.trivial()
    await system.settle()
    jails_before = await _jails_started(system)
    before = system.daemon.own_cpu()
    client_before = _client_cpu_s()
    samples = [await system.execute(workload) for _ in range(runs)]
    client_s = _client_cpu_s() - client_before
    await system.settle(poll_s=_COARSE_POLL_S)
    spent = system.daemon.own_cpu().since(before)
    jails = await _jails_started(system, runs) - jails_before
    return {
        "executions": runs,
        "jails_started": jails,
        "daemon_cpu_ms": spent.daemon_s * 1000 / runs,
        "fork_server_cpu_ms": spent.fork_server_s * 1000 / runs,
        "own_cpu_ms": (spent.daemon_s + spent.fork_server_s) * 1000 / runs,
        "fork_server_cpu_ms_per_jail": spent.fork_server_s * 1000 / jails if jails else None,
        "client_cpu_ms": client_s * 1000 / runs,
        "latency": stats.latency(samples),
    }


async def own_syscalls(system: SandboxdSystem, runs: int, out_dir: Path) -> dict[str, Any]:
    """Syscalls per execution of the daemon (every thread, ``strace -f``) and of its fork server
    (its own calls: the jails it forks are not followed)."""
    workload = workloads.trivial()
    await system.settle()
    daemon_summary = out_dir / f"strace_{system.name}_daemon.txt"
    fork_summary = out_dir / f"strace_{system.name}_fork_server.txt"
    fork_server = system.daemon.fork_server().pid
    with (
        syscalls.Attached(system.daemon.process.pid, daemon_summary, follow=True) as daemon,
        syscalls.Attached(fork_server, fork_summary, follow=False) as fork,
    ):
        jails_before = await _jails_started(system)
        samples = [await system.execute(workload) for _ in range(runs)]
        await system.settle(poll_s=_COARSE_POLL_S)
        jails = await _jails_started(system, runs) - jails_before
    daemon_counts, fork_counts = daemon.counts(), fork.counts()
    return {
        "executions": runs,
        "jails_started": jails,
        "errors": stats.latency(samples)["errors"],
        "per_execution": (daemon_counts.total + fork_counts.total) / runs,
        "daemon": daemon_counts.figures(runs),
        "fork_server": fork_counts.figures(runs),
    }


def process_syscalls(system: ProcessSystem, runs: int, out_dir: Path) -> dict[str, Any]:
    """Syscalls of a baseline's execution (the process and its children), the median of
    ``runs`` executions; the figures of the median one."""
    workload = workloads.trivial()
    counted = [
        syscalls.count_process(
            system.argv, workload.harness_stdin, out_dir / f"strace_{system.name}_{index}.txt"
        )
        for index in range(runs)
    ]
    typical = sorted(counted, key=lambda counts: counts.total)[len(counted) // 2]
    return {
        "executions": runs,
        "per_execution": median(counts.total for counts in counted),
        "totals": [counts.total for counts in counted],
        "typical": typical.figures(1),
    }


async def _jails_started(system: SandboxdSystem, executions: int = 0) -> int:
    """Jails the daemon started so far: its pool's count, plus, for the cold system, the jail
    each of ``executions`` started for itself (the pool does not count those)."""
    return int((await system.client.status()).pool.started) + (executions if system.cold else 0)


def _client_cpu_s() -> float:
    """CPU seconds of this (the benchmark's) process so far, every thread."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
