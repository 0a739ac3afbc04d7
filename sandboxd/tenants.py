"""Per-tenant quotas and fair admission: who may start an execution on this daemon, and when.

Every execution holds a slot of the daemon's capacity while it runs. A request that cannot get a
slot at once waits in its tenant's queue, unless that queue is full: then it is refused at once
with QuotaExceeded and a retry hint, so an overloaded tenant learns early instead of timing out.

Freed slots go round-robin over the tenants that have waiters (FIFO within a tenant), skipping a
tenant only while it runs its own `max_concurrent`. With K tenants waiting each gets one of every K
grants, so a tenant with 500 queued executions delays a tenant with 2 by at most K - 1 grants each.

A tenant with nothing running and nothing queued is admitted at once even when the capacity is
full, into one of `spare` slots above it (the pool keeps as many warm jails in reserve for such
tenants): a quiet tenant does not wait for a flood's executions to end. Spare slots are taken only
this way; a freed slot goes to a waiter only while fewer than `capacity` run, so at most
`capacity + spare` executions ever run at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field

from sandboxd.turns import TenantTurns

RETRY_AFTER_MIN_S = 0.1
RETRY_AFTER_MAX_S = 60.0
# Before any execution has finished there is no measured hold time; one second is a typical run.
INITIAL_HOLD_S = 1.0
# Weight of the newest hold time in the moving average: recent load matters, one outlier little.
HOLD_EWMA_ALPHA = 0.2


class AdmissionError(Exception):
    """An execution was not admitted."""


class QuotaExceeded(AdmissionError):
    """The tenant's queue is full: retry after `retry_after_s` seconds."""

    def __init__(self, tenant: str, reason: str, retry_after_s: float):
        super().__init__(f"{reason}; retry after {retry_after_s:.1f} s")
        self.tenant = tenant
        self.reason = reason
        self.retry_after_s = retry_after_s


class AdmissionClosed(AdmissionError):
    """The daemon is draining and admits nothing more."""


@dataclass(frozen=True, slots=True)
class TenantLimits:
    max_concurrent: int  # executions running at once
    max_queued: int  # executions waiting for a slot; 0 means "run now or be refused"

    def __post_init__(self) -> None:
        if self.max_concurrent < 1:
            raise ValueError(f"max_concurrent must be at least 1, not {self.max_concurrent}")
        if self.max_queued < 0:
            raise ValueError(f"max_queued must be at least 0, not {self.max_queued}")


@dataclass(frozen=True, slots=True)
class TenantPolicy:
    default: TenantLimits
    overrides: Mapping[str, TenantLimits] = field(default_factory=dict)

    def limits_for(self, tenant: str) -> TenantLimits:
        return self.overrides.get(tenant, self.default)


@dataclass(frozen=True, slots=True)
class TenantLoad:
    running: int
    queued: int


@dataclass(frozen=True, slots=True)
class Slot:
    """An admitted execution's hold on capacity; `waited_s` is the time it spent queued."""

    tenant: str
    waited_s: float


@dataclass(eq=False)
class _Tenant:
    limits: TenantLimits
    running: int = 0

    @property
    def can_run(self) -> bool:
        return self.running < self.limits.max_concurrent


class Admission:
    """Admits executions up to `capacity` at once (`spare` more for tenants with nothing
    running), within each tenant's limits, fairly."""

    def __init__(
        self,
        policy: TenantPolicy,
        capacity: int,
        *,
        spare: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        if spare < 0:
            raise ValueError(f"spare must be at least 0, not {spare}")
        self.policy = policy
        self.capacity = capacity
        self.spare = spare
        self._clock = clock
        self._tenants: dict[str, _Tenant] = {}
        self._waiters: TenantTurns[None] = TenantTurns()
        self._running = 0
        self._hold_s = INITIAL_HOLD_S
        self._closed = False

    @property
    def running(self) -> int:
        return self._running

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def snapshot(self) -> dict[str, TenantLoad]:
        """Running and queued executions of every tenant that has any."""
        return {
            tenant: TenantLoad(state.running, self._waiters.queued(tenant))
            for tenant, state in self._tenants.items()
        }

    def close(self) -> None:
        """Admit nothing more; every queued request raises AdmissionClosed. Slots held stay."""
        self._closed = True
        for waiter in self._waiters.clear():
            if not waiter.done():
                waiter.set_exception(AdmissionClosed("the daemon is draining"))
        for tenant in list(self._tenants):
            self._forget_if_idle(tenant)

    @contextlib.asynccontextmanager
    async def admit(self, tenant: str) -> AsyncIterator[Slot]:
        """Hold a slot for `tenant` during the block: at once, after a fair wait, or refused."""
        began = self._clock()
        await self._acquire(tenant)
        acquired = self._clock()
        try:
            yield Slot(tenant, waited_s=acquired - began)
        finally:
            self._observe_hold(self._clock() - acquired)
            self._release(tenant)

    async def _acquire(self, tenant: str) -> None:
        if self._closed:
            raise AdmissionClosed("the daemon is draining")
        state = self._tenants.get(tenant)
        if state is None:
            state = self._tenants[tenant] = _Tenant(self.policy.limits_for(tenant))
        # Waiters of this tenant come first (FIFO); waiters of others are only ever left waiting
        # while capacity is free if their own tenant is at its limit, so this does not jump them.
        # A spare slot does jump them: it is what spare slots are for, and no waiter takes one.
        queued = self._waiters.queued(tenant)
        if not queued and state.can_run and self._running < self._room_for(state):
            self._grant(state)
            return
        if queued >= state.limits.max_queued:
            error = self._quota_exceeded(tenant, state)
            self._forget_if_idle(tenant)
            raise error
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.add(tenant, waiter)
        try:
            await waiter
        except BaseException:
            self._abandon(tenant, waiter)
            raise

    def _abandon(self, tenant: str, waiter: asyncio.Future[None]) -> None:
        """Undo a wait that ended without the caller taking its slot (cancelled or closed)."""
        if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
            # Granted, but cancelled before it woke up: pass the slot on.
            self._release(tenant)
            return
        self._waiters.remove(tenant, waiter)
        self._forget_if_idle(tenant)

    def _room_for(self, state: _Tenant) -> int:
        """How many may run at once when this tenant's request arrives: the spare slots too for
        a tenant with nothing running (nor queued: then it would not jump its own waiters)."""
        return self.capacity + self.spare if not state.running else self.capacity

    def _grant(self, state: _Tenant) -> None:
        state.running += 1
        self._running += 1

    def _release(self, tenant: str) -> None:
        state = self._tenants[tenant]
        state.running -= 1
        self._running -= 1
        self._dispatch()
        self._forget_if_idle(tenant)

    def _dispatch(self) -> None:
        """Hand free capacity to waiters, one grant per turn, skipping tenants at their limit."""
        while self._running < self.capacity:
            turn = self._waiters.serve(self._can_run)
            if turn is None:
                return
            tenant, waiter = turn
            self._grant(self._tenants[tenant])
            waiter.set_result(None)

    def _can_run(self, tenant: str) -> bool:
        return self._tenants[tenant].can_run

    def _forget_if_idle(self, tenant: str) -> None:
        """Drop a tenant with nothing running or queued, so state stays bounded by activity."""
        state = self._tenants.get(tenant)
        if state is not None and not state.running and not self._waiters.queued(tenant):
            del self._tenants[tenant]

    def _observe_hold(self, seconds: float) -> None:
        self._hold_s += HOLD_EWMA_ALPHA * (seconds - self._hold_s)

    def _quota_exceeded(self, tenant: str, state: _Tenant) -> QuotaExceeded:
        limits = state.limits
        queued = self._waiters.queued(tenant)
        reason = (
            f"tenant {tenant!r} has {state.running} executions running "
            f"(limit {limits.max_concurrent}) and {queued} queued "
            f"(limit {limits.max_queued})"
        )
        return QuotaExceeded(tenant, reason, self._retry_after_s(state, queued))

    def _retry_after_s(self, state: _Tenant, queued: int) -> float:
        """When the tenant's next request would likely get a slot: its queue, drained at the
        rate its slots free up (bounded by its own limit or the daemon's capacity, the lower)."""
        rate = min(state.limits.max_concurrent, self.capacity)
        estimate = self._hold_s * (queued + 1) / rate
        return min(RETRY_AFTER_MAX_S, max(RETRY_AFTER_MIN_S, estimate))
