"""How many jails the pool wants warm: the configured size, raised by recent demand, and how
many to start now for the callers waiting."""

from __future__ import annotations

import collections
import math
import os
import time
from dataclasses import dataclass, field

import psutil

_DEMAND_WINDOW_S = 10.0
_IDLE_JAIL_BYTES = 64 * 1024 * 1024
_START_SAMPLES = 1000
_FIRST_START_GUESS_S = 0.1


@dataclass
class PoolStats:
    started: int = 0
    failed: int = 0
    start_times_s: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=_START_SAMPLES)
    )


@dataclass(frozen=True, slots=True)
class PoolCounts:
    """The pool's jails now, by state."""

    warm: int
    starting: int
    leased: int
    waiting: int

    @property
    def alive(self) -> int:
        return self.warm + self.starting + self.leased


class PoolSizing:
    """The target of warm jails, from the configured size, recent leases and start times."""

    def __init__(self, size: int, maximum: int, reserve: int):
        self.size = size
        self.maximum = maximum
        self.stats = PoolStats()
        # Jails kept warm beyond the waiters: one spare, or the fair-leasing reserve if larger.
        self._spare = max(1, reserve) if size else 0
        self._arrivals: collections.deque[float] = collections.deque()
        # Idle warm jails cost memory (~40 MB of Node each) and starting them costs cpu.
        self._warm_ceiling = min(maximum, _host_warm_ceiling())

    def arrived(self) -> None:
        """A lease of a warm jail was asked for: it counts towards demand."""
        self._arrivals.append(time.monotonic())

    def started(self, elapsed_s: float) -> None:
        self.stats.started += 1
        self.stats.start_times_s.append(elapsed_s)

    def failed(self) -> None:
        self.stats.failed += 1

    @property
    def target(self) -> int:
        """Warm jails wanted now: enough for the leases expected while one jail starts.

        Arrival rate (leases per second, recent window) times the median start time, doubled
        for bursts; never below the configured size, never above what the host can hold.
        """
        if self.size == 0:
            return 0  # no pool: every execution starts its own jail
        now = time.monotonic()
        while self._arrivals and self._arrivals[0] < now - _DEMAND_WINDOW_S:
            self._arrivals.popleft()
        rate = len(self._arrivals) / _DEMAND_WINDOW_S
        return max(self.size, min(math.ceil(rate * self.start_s * 2), self._warm_ceiling))

    @property
    def start_s(self) -> float:
        """A jail start's usual time: the median of the recent ones."""
        starts = sorted(self.stats.start_times_s)
        return starts[len(starts) // 2] if starts else _FIRST_START_GUESS_S

    def to_start(self, counts: PoolCounts) -> int:
        """Jails to start now: until warm + starting covers the target, or the waiters and the
        spare, within the pool's maximum of jails alive."""
        wanted = max(self.target, counts.waiting + self._spare)
        missing = min(wanted - counts.warm - counts.starting, self.maximum - counts.alive)
        return max(0, missing)


def _host_warm_ceiling() -> int:
    """How many idle jails this host holds comfortably: by cores, and by a quarter of memory."""
    by_cpu = 8 * (os.cpu_count() or 1)
    by_memory = psutil.virtual_memory().available // 4 // _IDLE_JAIL_BYTES
    return max(1, min(by_cpu, int(by_memory)))
