"""The pool's fair queue (sandboxd.pool.leasing): round robin by tenant, the reserve rule, and no
starvation. Its own logic, so it is driven directly: the jails handed out are plain strings."""

from __future__ import annotations

import asyncio
import collections

import pytest

from sandboxd.pool import FairLeases, PoolClosed
from sandboxd.pool.leasing import PRESENT_S, WINDOW_S


def warm(*names: str) -> collections.deque[str]:
    return collections.deque(names)


def handed(waiters: list[asyncio.Future[str]]) -> list[str | None]:
    return [w.result() if w.done() else None for w in waiters]


async def test_waiters_are_served_round_robin_by_tenant_and_fifo_within_one() -> None:
    leases: FairLeases[str] = FairLeases(reserve=0)
    order = ["flood", "flood", "flood", "b", "c"]
    waiters = [leases.wait(tenant) for tenant in order]
    jails = warm("j1", "j2", "j3", "j4", "j5")
    assert leases.dispatch(jails, starting=0) == 5
    # flood's first, then b and c in their turn, then flood's others in their own order.
    assert handed(waiters) == ["j1", "j4", "j5", "j2", "j3"]
    assert leases.waiting == 0
    assert (leases.holding("flood"), leases.holding("b"), leases.holding("c")) == (3, 1, 1)


async def test_a_newcomer_gets_the_next_jail_ahead_of_a_tenant_with_many_waiters() -> None:
    leases: FairLeases[str] = FairLeases(reserve=0)
    flood = [leases.wait("flood") for _ in range(10)]
    jails = warm("j1")
    leases.dispatch(jails, starting=1)
    quiet = leases.wait("quiet")  # never served: ahead of the flood, served a moment ago
    jails.extend(["j2", "j3"])
    leases.dispatch(jails, starting=1)
    assert quiet.result() == "j2"
    assert handed(flood)[:3] == ["j1", "j3", None]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def seen(leases: FairLeases[str], tenant: str) -> None:
    """`tenant` leased a jail and its lease ended: it is present, with no requests now."""
    waiter = leases.wait(tenant)
    leases.dispatch(warm("earlier"), starting=0)
    assert waiter.result() == "earlier"
    leases.returned(tenant)


async def test_a_tenant_takes_its_turn_ahead_of_those_served_after_it() -> None:
    clock = Clock()
    leases: FairLeases[str] = FairLeases(reserve=0, clock=clock)
    seen(leases, "a")
    clock.now += 1
    seen(leases, "b")
    clock.now += 1
    flood = [leases.wait("flood") for _ in range(3)]
    leases.dispatch(warm("j1"), starting=1)
    b, a = leases.wait("b"), leases.wait("a")  # turns: a (served first), b, then flood
    jails = warm("j2", "j3", "j4")
    assert leases.dispatch(jails, starting=1) == 3
    assert (a.result(), b.result(), handed(flood)) == ("j2", "j3", ["j1", "j4", None])


def granted(leases: FairLeases[str], **counts: int) -> None:
    """Each tenant named was granted that many jails a moment ago (leases still running)."""
    for tenant, count in counts.items():
        for _ in range(count):
            leases.took(tenant)


async def test_a_tenant_at_its_share_may_not_take_the_reserve_while_another_is_below() -> None:
    leases: FairLeases[str] = FairLeases(reserve=2)
    seen(leases, "quiet")
    granted(leases, flood=3)
    # Two present: a fair share is 1/2. Quiet had 1 of 4 jails, the flood 3.
    flood = leases.wait("flood")
    jails = warm("r1", "r2")
    assert leases.dispatch(jails, starting=1) == 0
    assert not flood.done() and list(jails) == ["r1", "r2"]
    quiet = leases.wait("quiet")
    assert leases.dispatch(jails, starting=1) == 1
    assert quiet.result() == "r1" and not flood.done()


async def test_beyond_the_reserve_every_jail_goes_to_the_waiting_flood() -> None:
    leases: FairLeases[str] = FairLeases(reserve=1)
    seen(leases, "quiet")
    flood = [leases.wait("flood") for _ in range(3)]
    jails = warm("j1", "j2", "r1")
    assert leases.dispatch(jails, starting=2) == 2
    assert handed(flood) == ["j1", "j2", None]
    assert list(jails) == ["r1"]


async def test_the_reserve_goes_to_the_flood_when_no_jail_is_starting() -> None:
    # At the pool's maximum (or with failing starts) no jail will come: nothing may starve.
    leases: FairLeases[str] = FairLeases(reserve=2)
    seen(leases, "quiet")
    granted(leases, flood=3)
    flood = leases.wait("flood")
    jails = warm("r1", "r2")
    assert leases.dispatch(jails, starting=0) == 1
    assert flood.result() == "r1"


async def test_the_reserve_is_held_for_grants_below_the_share_not_for_fewer_requests() -> None:
    leases: FairLeases[str] = FairLeases(reserve=1)
    granted(leases, a=1, b=4, light=1)
    # 6 jails over 3 tenants: a and light (1 each) are below 2, b is above.
    b = [leases.wait("b") for _ in range(5)]
    a = leases.wait("a")
    assert leases.dispatch(warm("r1"), starting=1) == 1
    assert (handed(b), a.result()) == ([None] * 5, "r1")


async def test_the_reserve_is_not_held_when_no_present_tenant_is_below_its_share() -> None:
    leases: FairLeases[str] = FairLeases(reserve=2)
    granted(leases, a=2, b=2)
    b = leases.wait("b")
    assert leases.dispatch(warm("r1", "r2"), starting=1) == 1
    assert b.result() == "r1"


async def test_a_closed_loop_quiet_tenant_is_held_to_its_share_of_the_reserve() -> None:
    leases: FairLeases[str] = FairLeases(reserve=1)
    granted(leases, quiet=1, flood=2)
    flood = [leases.wait("flood") for _ in range(3)]
    quiet = [leases.wait("quiet") for _ in range(3)]
    # One jail at a time, each the reserve, while more start: quiet (below) takes one, then
    # both are at 1/2 and turns decide (the flood's), then quiet is below again.
    for jail in ("r1", "r2", "r3", "r4"):
        assert leases.dispatch(warm(jail), starting=1) == 1
    assert (handed(flood), handed(quiet)) == (["r2", "r4", None], ["r1", "r3", None])


async def test_a_tenant_alone_takes_the_reserve() -> None:
    leases: FairLeases[str] = FairLeases(reserve=2)
    granted(leases, solo=5)
    waiter = leases.wait("solo")
    assert leases.dispatch(warm("r1", "r2"), starting=1) == 1
    assert waiter.result() == "r1"


async def test_a_tenant_counts_as_present_for_a_while_after_it_asked() -> None:
    clock = Clock()
    leases: FairLeases[str] = FairLeases(reserve=1, clock=clock)
    seen(leases, "quiet")
    granted(leases, flood=2)
    first = leases.wait("flood")
    jails = warm("r1")
    clock.now += PRESENT_S - 0.1
    assert leases.dispatch(jails, starting=1) == 0
    clock.now += 0.2  # quiet has not asked for PRESENT_S: the flood is alone
    assert leases.dispatch(jails, starting=1) == 1
    assert first.result() == "r1"


async def test_grants_older_than_the_window_no_longer_count() -> None:
    clock = Clock()
    leases: FairLeases[str] = FairLeases(reserve=1, clock=clock)
    granted(leases, flood=5)
    clock.now += WINDOW_S + 1
    seen(leases, "quiet")
    granted(leases, flood=1)
    # Within the window: quiet 1, flood 1. The flood's old 5 would make quiet below its share.
    flood = leases.wait("flood")
    assert leases.dispatch(warm("r1"), starting=1) == 1
    assert flood.result() == "r1"


async def test_a_cancelled_waiter_loses_its_turn_and_a_handed_jail_comes_back() -> None:
    leases: FairLeases[str] = FairLeases(reserve=0)
    gone, stays = leases.wait("a"), leases.wait("b")
    gone.cancel()
    assert leases.dispatch(warm("j1"), starting=0) == 1
    assert stays.result() == "j1"
    assert leases.withdraw("a", gone) is None
    late = leases.wait("c")
    leases.dispatch(warm("j2"), starting=0)
    assert leases.withdraw("c", late) == "j2"  # handed, then its caller went away
    assert (leases.holding("c"), leases.waiting) == (0, 0)


async def test_close_fails_every_waiter_with_the_error_given() -> None:
    leases: FairLeases[str] = FairLeases(reserve=0)
    waiter = leases.wait("a")
    leases.close(PoolClosed("the daemon is shutting down"))
    with pytest.raises(PoolClosed, match="shutting down"):
        await waiter
    assert leases.withdraw("a", waiter) is None
    assert leases.waiting == 0
