"""The load generator: sequential rounds and closed-loop concurrent streams, interleaved.

Every phase goes round-robin over the systems, one turn each per round, and each round starts
with the next system in line, so machine drift (thermal, page cache, other tenants of the host)
and "who ran right before me" hit every system alike. After each turn the system settles (its
pool refilled), so no system's background work lands in another system's measurement.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from benchmarks.daemons import CpuTime
from benchmarks.systems import Sample, System
from benchmarks.workloads import Workload


def rotated(systems: Sequence[System], round_index: int) -> list[System]:
    """The systems in order, starting at the round's own position."""
    start = round_index % len(systems) if systems else 0
    return [*systems[start:], *systems[:start]]


async def sequential(
    systems: Sequence[System], workload: Workload, rounds: int
) -> dict[str, list[Sample]]:
    """``rounds`` executions per system, one at a time, alternating between systems."""
    samples: dict[str, list[Sample]] = {system.name: [] for system in systems}
    for round_index in range(rounds):
        for system in rotated(systems, round_index):
            samples[system.name].append(await system.execute(workload))
            await system.settle()
    return samples


@dataclass
class Batches:
    """What one system did in closed-loop batches, summed: samples, time, and the CPU time of
    its long-lived processes (None for systems whose samples carry their own)."""

    samples: list[Sample] = field(default_factory=list)
    elapsed_s: float = 0.0
    cpu: CpuTime | None = None

    def add(self, other: Batches) -> None:
        self.samples += other.samples
        self.elapsed_s += other.elapsed_s
        if other.cpu is not None:
            self.cpu = other.cpu if self.cpu is None else self.cpu.plus(other.cpu)


async def closed_loop(
    system: System, workload: Workload, concurrency: int, duration_s: float
) -> tuple[list[Sample], float]:
    """``concurrency`` streams, each starting its next execution as soon as one ends, until
    ``duration_s`` has passed; executions running then finish and count. Returns the samples and
    the time from start to the last completion."""
    started = time.perf_counter()
    deadline = started + duration_s
    samples: list[Sample] = []

    async def stream() -> None:
        while time.perf_counter() < deadline:
            samples.append(await system.execute(workload))

    await asyncio.gather(*(stream() for _ in range(concurrency)))
    return samples, time.perf_counter() - started


async def concurrent(
    systems: Sequence[System],
    workload: Workload,
    concurrency: int,
    rounds: int,
    duration_s: float,
) -> dict[str, Batches]:
    """``rounds`` closed-loop batches per system at ``concurrency``, alternating systems."""
    batches = {system.name: Batches() for system in systems}
    for round_index in range(rounds):
        for system in rotated(systems, round_index):
            before = system.daemon_cpu()
            samples, elapsed_s = await closed_loop(system, workload, concurrency, duration_s)
            # The settle (pool refill) belongs to the batch: each execution used up one jail.
            await system.settle()
            after = system.daemon_cpu()
            cpu = None if before is None or after is None else after.since(before)
            batches[system.name].add(Batches(samples, elapsed_s, cpu))
    return batches
