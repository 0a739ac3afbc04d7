"""Admission: quotas, capacity, fairness across tenants, cancellation and closing.

Driven by events, not sleeps: every request is a task that holds its slot until the test releases
it, and announces its grant on a queue, so the order of grants is observed exactly.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

import pytest

from sandboxd.tenants import (
    Admission,
    AdmissionClosed,
    QuotaExceeded,
    TenantLimits,
    TenantLoad,
    TenantPolicy,
)

ROOMY = TenantLimits(max_concurrent=1000, max_queued=1000)


class Request:
    """One execution's admission: holds its slot until `release()`."""

    def __init__(self, admission: Admission, tenant: str, granted: asyncio.Queue[Request]):
        self.tenant = tenant
        self._admission = admission
        self._granted = granted
        self._done = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async with self._admission.admit(self.tenant):
            await self._granted.put(self)
            await self._done.wait()

    def release(self) -> None:
        self._done.set()


class Harness:
    def __init__(self, admission: Admission):
        self.admission = admission
        self.granted: asyncio.Queue[Request] = asyncio.Queue()
        self.holding: list[Request] = []  # granted and not yet released, oldest first

    async def submit(self, tenant: str, count: int = 1) -> list[Request]:
        """`count` requests of `tenant`, each either granted or queued when this returns."""
        requests = [Request(self.admission, tenant, self.granted) for _ in range(count)]
        await settle()
        self._collect()
        return requests

    async def next_grant(self) -> Request:
        request = await asyncio.wait_for(self.granted.get(), timeout=1)
        self.holding.append(request)
        return request

    async def release_oldest(self) -> Request:
        """Release the oldest held slot and return the request it was handed to."""
        self.holding.pop(0).release()
        return await self.next_grant()

    def _collect(self) -> None:
        while not self.granted.empty():
            self.holding.append(self.granted.get_nowait())

    def load(self, tenant: str) -> TenantLoad:
        return self.admission.snapshot().get(tenant, TenantLoad(0, 0))


async def settle() -> None:
    """Let every ready task run until it blocks (a few loop turns; no wall-clock time)."""
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.fixture
async def cleanup() -> AsyncIterator[list[asyncio.Task[None]]]:
    tasks: list[asyncio.Task[None]] = []
    yield tasks
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def tasks_of(requests: Iterable[Request]) -> list[asyncio.Task[None]]:
    return [request.task for request in requests]


async def test_over_quota_is_refused_at_once_with_a_retry_hint(
    cleanup: list[asyncio.Task[None]],
) -> None:
    policy = TenantPolicy(default=TenantLimits(max_concurrent=1, max_queued=2))
    harness = Harness(Admission(policy, capacity=8))
    cleanup += tasks_of(await harness.submit("acme", 3))
    assert harness.load("acme") == TenantLoad(running=1, queued=2)

    with pytest.raises(QuotaExceeded) as refused:
        async with harness.admission.admit("acme"):
            pytest.fail("admitted over quota")

    assert refused.value.tenant == "acme"
    assert refused.value.reason == (
        "tenant 'acme' has 1 executions running (limit 1) and 2 queued (limit 2)"
    )
    # No hold time measured yet: 1 s per execution, 3rd in line, 1 slot at a time for acme.
    assert refused.value.retry_after_s == pytest.approx(3.0)
    assert harness.load("acme") == TenantLoad(running=1, queued=2)


async def test_a_full_queue_is_refused_even_below_the_concurrency_limit(
    cleanup: list[asyncio.Task[None]],
) -> None:
    policy = TenantPolicy(default=TenantLimits(max_concurrent=4, max_queued=0))
    harness = Harness(Admission(policy, capacity=1))
    cleanup += tasks_of(await harness.submit("busy"))

    with pytest.raises(QuotaExceeded) as refused:
        async with harness.admission.admit("acme"):
            pytest.fail("admitted with no capacity and no queue")

    assert refused.value.reason == (
        "tenant 'acme' has 0 executions running (limit 4) and 0 queued (limit 0)"
    )
    assert refused.value.retry_after_s == pytest.approx(1.0)
    assert "acme" not in harness.admission.snapshot()  # a refusal leaves no tenant state


async def test_retry_hint_follows_measured_hold_times() -> None:
    now = [0.0]
    policy = TenantPolicy(default=TenantLimits(max_concurrent=2, max_queued=0))
    admission = Admission(policy, capacity=2, clock=lambda: now[0])
    for _ in range(40):  # the moving average converges on the 10 s holds
        async with admission.admit("acme"):
            now[0] += 10.0
    async with admission.admit("acme"), admission.admit("acme"):
        with pytest.raises(QuotaExceeded) as refused:
            async with admission.admit("acme"):
                pass
    assert refused.value.retry_after_s == pytest.approx(10.0 * 1 / 2, rel=1e-3)

    for _ in range(40):
        async with admission.admit("acme"):
            now[0] += 1000.0
    async with admission.admit("acme"), admission.admit("acme"):
        with pytest.raises(QuotaExceeded) as refused:
            async with admission.admit("acme"):
                pass
    assert refused.value.retry_after_s == 60.0  # bounded above


async def test_per_tenant_overrides_apply() -> None:
    policy = TenantPolicy(
        default=TenantLimits(max_concurrent=1, max_queued=0),
        overrides={"big": TenantLimits(max_concurrent=3, max_queued=0)},
    )
    assert policy.limits_for("big") == TenantLimits(3, 0)
    assert policy.limits_for("small") == TenantLimits(1, 0)
    admission = Admission(policy, capacity=10)
    async with admission.admit("big"), admission.admit("big"), admission.admit("big"):
        with pytest.raises(QuotaExceeded):
            async with admission.admit("big"):
                pass
    async with admission.admit("small"):
        with pytest.raises(QuotaExceeded):
            async with admission.admit("small"):
                pass


async def test_capacity_is_never_exceeded(cleanup: list[asyncio.Task[None]]) -> None:
    harness = Harness(Admission(TenantPolicy(default=ROOMY), capacity=3))
    cleanup += tasks_of(await harness.submit("a", 5))
    cleanup += tasks_of(await harness.submit("b", 5))
    assert harness.admission.running == 3
    assert len(harness.holding) == 3
    for _ in range(7):
        await harness.release_oldest()
        await settle()
        assert harness.admission.running == 3
        assert len(harness.holding) == 3
    assert harness.admission.queued == 0


async def test_a_tenant_with_nothing_running_takes_a_spare_slot_above_full_capacity(
    cleanup: list[asyncio.Task[None]],
) -> None:
    harness = Harness(Admission(TenantPolicy(default=ROOMY), capacity=2, spare=1))
    cleanup += tasks_of(await harness.submit("flood", 4))
    assert harness.load("flood") == TenantLoad(running=2, queued=2)  # not the spare slot
    quiet = await harness.submit("quiet")
    cleanup += tasks_of(quiet)
    assert harness.load("quiet") == TenantLoad(running=1, queued=0)
    assert harness.admission.running == 3
    # The spare slot is taken: the next newcomer queues like anyone.
    cleanup += tasks_of(await harness.submit("other"))
    assert harness.load("other") == TenantLoad(running=0, queued=1)


async def test_a_tenant_that_runs_something_gets_no_spare_slot(
    cleanup: list[asyncio.Task[None]],
) -> None:
    harness = Harness(Admission(TenantPolicy(default=ROOMY), capacity=1, spare=2))
    cleanup += tasks_of(await harness.submit("flood"))
    cleanup += tasks_of(await harness.submit("quiet", 2))
    assert harness.load("quiet") == TenantLoad(running=1, queued=1)
    assert harness.admission.running == 2


async def test_a_freed_slot_goes_to_a_waiter_only_below_capacity(
    cleanup: list[asyncio.Task[None]],
) -> None:
    harness = Harness(Admission(TenantPolicy(default=ROOMY), capacity=2, spare=2))
    cleanup += tasks_of(await harness.submit("flood", 5))
    cleanup += tasks_of(await harness.submit("a"))
    cleanup += tasks_of(await harness.submit("b"))
    assert harness.admission.running == 4  # capacity + spare, never more
    for expected_running in (3, 2):  # the flood's waiters wait until fewer than 2 run
        harness.holding.pop(0).release()
        await settle()
        assert harness.admission.running == expected_running
        assert harness.load("flood").queued == 3
    assert (await harness.release_oldest()).tenant == "flood"
    assert harness.admission.running == 2


async def test_a_single_tenant_is_held_to_capacity_whatever_the_spare(
    cleanup: list[asyncio.Task[None]],
) -> None:
    harness = Harness(Admission(TenantPolicy(default=ROOMY), capacity=2, spare=2))
    cleanup += tasks_of(await harness.submit("solo", 5))
    assert harness.load("solo") == TenantLoad(running=2, queued=3)
    for _ in range(3):
        await harness.release_oldest()
        await settle()
        assert harness.admission.running == 2


async def test_a_flooding_tenant_cannot_delay_a_light_one_beyond_its_share(
    cleanup: list[asyncio.Task[None]],
) -> None:
    harness = Harness(Admission(TenantPolicy(default=ROOMY), capacity=2))
    cleanup += tasks_of(await harness.submit("flood", 500))
    assert harness.load("flood") == TenantLoad(running=2, queued=498)
    cleanup += tasks_of(await harness.submit("light", 2))
    assert harness.load("light") == TenantLoad(running=0, queued=2)

    order = [(await harness.release_oldest()).tenant for _ in range(6)]

    # Two tenants waiting: the light tenant's 2 are among the first 2 * 2 grants, alternating.
    assert order == ["flood", "light", "flood", "light", "flood", "flood"]


@pytest.mark.parametrize("tenants", [2, 3, 5])
async def test_each_of_k_waiting_tenants_gets_one_in_k_grants(
    tenants: int, cleanup: list[asyncio.Task[None]]
) -> None:
    harness = Harness(Admission(TenantPolicy(default=ROOMY), capacity=2))
    names = [f"t{i}" for i in range(tenants)]
    for name, depth in zip(names, [300, 40, 20, 10, 10], strict=False):
        cleanup += tasks_of(await harness.submit(name, depth))
    granted = [(await harness.release_oldest()).tenant for _ in range(tenants * 8)]

    # Strict rotation while all wait: every window of K grants holds each tenant once.
    for start in range(0, len(granted), tenants):
        assert sorted(granted[start : start + tenants]) == names


async def test_fifo_within_a_tenant(cleanup: list[asyncio.Task[None]]) -> None:
    harness = Harness(Admission(TenantPolicy(default=ROOMY), capacity=1))
    requests = await harness.submit("acme", 6)
    cleanup += tasks_of(requests)
    granted = [await harness.release_oldest() for _ in range(5)]
    assert granted == requests[1:]


async def test_max_concurrent_holds_under_saturation(cleanup: list[asyncio.Task[None]]) -> None:
    policy = TenantPolicy(
        default=ROOMY, overrides={"capped": TenantLimits(max_concurrent=2, max_queued=100)}
    )
    harness = Harness(Admission(policy, capacity=4))
    cleanup += tasks_of(await harness.submit("capped", 20))
    cleanup += tasks_of(await harness.submit("other", 20))
    # Work-conserving: the two slots capped cannot use go to the other tenant.
    assert harness.load("capped") == TenantLoad(running=2, queued=18)
    assert harness.load("other") == TenantLoad(running=2, queued=18)
    for _ in range(30):
        await harness.release_oldest()
        assert harness.load("capped").running <= 2
        assert harness.admission.running == 4


async def test_a_tenant_at_its_limit_keeps_its_turn(cleanup: list[asyncio.Task[None]]) -> None:
    policy = TenantPolicy(
        default=ROOMY, overrides={"capped": TenantLimits(max_concurrent=1, max_queued=100)}
    )
    harness = Harness(Admission(policy, capacity=2))
    first = await harness.submit("capped", 5)
    cleanup += tasks_of(first)
    cleanup += tasks_of(await harness.submit("other", 5))
    assert [r.tenant for r in harness.holding] == ["capped", "other"]
    # Releasing other's slot cannot go to capped (at its limit): other gets it.
    harness.holding.pop(1).release()
    assert (await harness.next_grant()).tenant == "other"
    # When capped frees its slot, capped's waiter is next in line (it kept its turn).
    harness.holding.pop(0).release()
    assert (await harness.next_grant()).tenant == "capped"


async def test_a_cancelled_waiter_leaves_no_trace(cleanup: list[asyncio.Task[None]]) -> None:
    harness = Harness(Admission(TenantPolicy(default=ROOMY), capacity=1))
    cleanup += tasks_of(await harness.submit("busy"))
    doomed = await harness.submit("gone", 3)
    cleanup += tasks_of(doomed)
    later = await harness.submit("later")
    cleanup += tasks_of(later)
    assert harness.load("gone") == TenantLoad(running=0, queued=3)

    # The slot frees before the cancelled tasks wake up: their waiters must not take it.
    harness.holding.pop(0).release()
    for request in doomed:
        request.task.cancel()

    assert (await harness.next_grant()) is later[0]
    assert "gone" not in harness.admission.snapshot()
    harness.holding.pop().release()
    await settle()
    assert harness.admission.running == 0
    assert harness.admission.snapshot() == {}


async def test_a_waiter_cancelled_right_after_its_grant_passes_the_slot_on(
    cleanup: list[asyncio.Task[None]],
) -> None:
    harness = Harness(Admission(TenantPolicy(default=ROOMY), capacity=1))
    cleanup += tasks_of(await harness.submit("busy"))
    unlucky = await harness.submit("unlucky")
    cleanup += tasks_of(unlucky)
    cleanup += tasks_of(await harness.submit("next"))

    holder = harness.holding.pop()
    holder.release()
    await asyncio.sleep(0)  # the holder exits its block: the slot is granted to `unlucky`
    assert harness.load("unlucky") == TenantLoad(running=1, queued=0)
    unlucky[0].task.cancel()  # ... which is cancelled before it ever runs with it

    assert (await harness.next_grant()).tenant == "next"
    await asyncio.gather(unlucky[0].task, return_exceptions=True)
    assert unlucky[0].task.cancelled()
    assert harness.admission.running == 1
    assert "unlucky" not in harness.admission.snapshot()


async def test_a_slot_is_released_when_the_block_raises() -> None:
    admission = Admission(TenantPolicy(default=TenantLimits(1, 0)), capacity=1)
    with pytest.raises(RuntimeError):
        async with admission.admit("acme"):
            raise RuntimeError("the execution failed")
    assert admission.running == 0
    async with admission.admit("acme"):
        assert admission.snapshot() == {"acme": TenantLoad(running=1, queued=0)}


async def test_close_fails_waiters_and_refuses_new_requests(
    cleanup: list[asyncio.Task[None]],
) -> None:
    harness = Harness(Admission(TenantPolicy(default=ROOMY), capacity=1))
    running = await harness.submit("acme")
    waiting = await harness.submit("acme", 2)
    cleanup += tasks_of(running + waiting)

    harness.admission.close()

    results = await asyncio.gather(*tasks_of(waiting), return_exceptions=True)
    assert [type(result) for result in results] == [AdmissionClosed, AdmissionClosed]
    with pytest.raises(AdmissionClosed):
        async with harness.admission.admit("other"):
            pass
    # The running execution keeps its slot until it ends, then all is released.
    assert harness.admission.snapshot() == {"acme": TenantLoad(running=1, queued=0)}
    running[0].release()
    await running[0].task
    assert harness.admission.running == 0
    assert harness.admission.snapshot() == {}


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="max_concurrent must be at least 1"):
        TenantLimits(max_concurrent=0, max_queued=1)
    with pytest.raises(ValueError, match="max_queued must be at least 0"):
        TenantLimits(max_concurrent=1, max_queued=-1)
    with pytest.raises(ValueError, match="capacity must be at least 1"):
        Admission(TenantPolicy(default=ROOMY), capacity=0)
    with pytest.raises(ValueError, match="spare must be at least 0"):
        Admission(TenantPolicy(default=ROOMY), capacity=1, spare=-1)
