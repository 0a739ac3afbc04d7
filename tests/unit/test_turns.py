"""The round-robin queue under admission and the pool's leases (sandboxd.turns), driven alone.

What each user builds on it (quotas, the reserve rule) is tested in test_tenants.py and
test_fair_leases.py; these pin the queue's own rules."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sandboxd.turns import TenantTurns


def everyone(tenant: str) -> bool:
    return True


async def queue_of(*tenants: str) -> tuple[TenantTurns[None], list[asyncio.Future[None]]]:
    turns: TenantTurns[None] = TenantTurns()
    waiters = [asyncio.get_running_loop().create_future() for _ in tenants]
    for tenant, waiter in zip(tenants, waiters, strict=True):
        turns.add(tenant, waiter)
    return turns, waiters


def served_order(
    turns: TenantTurns[None], may_serve: Callable[[str], bool] = everyone
) -> list[str]:
    order = []
    while (turn := turns.serve(may_serve)) is not None:
        order.append(turn[0])
    return order


async def test_tenants_take_turns_and_each_tenants_waiters_go_first_in_first_out() -> None:
    turns, waiters = await queue_of("a", "a", "a", "b", "c")
    first = turns.serve(everyone)
    assert first == ("a", waiters[0])
    assert served_order(turns) == ["b", "c", "a", "a"]
    assert len(turns) == 0
    assert list(turns.tenants()) == []


async def test_a_tenant_that_may_not_be_served_keeps_its_place_in_the_order() -> None:
    turns, _ = await queue_of("held", "b", "held", "c")
    assert served_order(turns, lambda tenant: tenant != "held") == ["b", "c"]
    assert (len(turns), turns.queued("held")) == (2, 2)
    assert served_order(turns) == ["held", "held"]


async def test_a_cancelled_waiter_uses_no_turn_and_is_dropped_when_it_comes_first() -> None:
    turns, waiters = await queue_of("a", "b", "a")
    waiters[0].cancel()
    assert turns.serve(everyone) == ("a", waiters[2])
    assert (len(turns), turns.queued("a")) == (1, 0)
    assert served_order(turns) == ["b"]


async def test_a_newcomer_joins_ahead_of_the_first_tenant_goes_before_names() -> None:
    turns, _ = await queue_of("x", "y", "z")
    late: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    turns.add("new", late, goes_before=lambda other: other in ("y", "z"))
    # A tenant already queued keeps its place whatever goes_before says.
    turns.add("x", asyncio.get_running_loop().create_future(), goes_before=everyone)
    assert served_order(turns) == ["x", "new", "y", "z", "x"]


async def test_removing_a_tenants_last_waiter_takes_it_out_of_the_order() -> None:
    turns, waiters = await queue_of("a", "b")
    turns.remove("a", waiters[0])
    turns.remove("a", waiters[0])  # already gone: nothing happens
    assert (len(turns), list(turns.tenants())) == (1, ["b"])
    assert served_order(turns) == ["b"]


async def test_clear_hands_back_every_waiter_and_leaves_the_queue_empty() -> None:
    turns, waiters = await queue_of("a", "b", "a")
    assert sorted(map(id, turns.clear())) == sorted(map(id, waiters))
    assert (len(turns), turns.serve(everyone)) == (0, None)
