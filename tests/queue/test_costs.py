"""What each script costs Redis with 100,000 active tenants (Redis's own SLOWLOG timings).

SLOWLOG times are wall-clock: on a shared host a call that Redis was preempted in takes long
whatever it does, so the checks are on the median and the 90th percentile of each script's calls.
A script whose cost grew with the number of tenants would be slow in every call (at 100,000
tenants the old TAKE took about 200 ms). The bounds (5 and 10 ms) sit far below that and far
above a quiet host's figures (medians ~0.1-0.4 ms): a test catches the growth; the speed itself
is benchmarks/queue_ceiling.py's (a CI run once saw a median of 0.57 ms against a 0.5 ms bound).
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from typing import Any

import redis.asyncio as redis

from sandbox_client.redisqueue import keys, lua
from sandbox_client.redisqueue.store import TAKE_BATCH, Failure, QueueStore

TENANTS = 100_000
RETENTION_MS = 600_000
# Scripts by SHA1, to name the SLOWLOG's EVALSHA entries.
SCRIPTS = {
    name: getattr(lua, name)
    for name in ("ENQUEUE", "TAKE", "HOLD", "BEGIN", "APPEND", "FINISH", "RETRY", "DEPTH")
}


async def fill(raw: redis.Redis, tenants: int) -> None:
    """One waiting execution per tenant, pipelined (the fill is not what is measured)."""
    enqueue = raw.register_script(lua.script(lua.ENQUEUE))
    for first in range(0, tenants, 2000):
        async with raw.pipeline(transaction=False) as pipe:
            for n in range(first, min(tenants, first + 2000)):
                await enqueue(args=[f"x{n}", f"tenant-{n}", b"r", 0, RETENTION_MS], client=pipe)
            await pipe.execute()


async def script_times(raw: redis.Redis) -> dict[str, list[int]]:
    """Microseconds of each script call since the reset, by script name (the commands a script
    runs are logged too, and left out here)."""
    names = {raw.register_script(lua.script(body)).sha: name for name, body in SCRIPTS.items()}
    durations: dict[str, list[int]] = defaultdict(list)
    for entry in await raw.slowlog_get(1_000_000):
        command: list[Any] = entry["command"].split()
        if command[0].upper() == b"EVALSHA":
            durations[names[command[1].decode()]].append(int(entry["duration"]))
    return durations


async def test_script_costs_do_not_grow_with_100000_tenants(
    store: QueueStore, raw: redis.Redis
) -> None:
    await fill(raw, TENANTS)
    assert (await store.depth(0)).tenants_waiting == TENANTS
    await raw.config_set("slowlog-max-len", 1_000_000)
    await raw.config_set("slowlog-log-slower-than", 0)
    await raw.slowlog_reset()
    calls: Counter[str] = Counter()

    taken = []
    for _ in range(200):  # one at a time, as a busy fleet takes
        entries, _due = await store.take("w1", 1, 30_000, 3, RETENTION_MS)
        taken += [one.entry for one in entries]
    entries, _due = await store.take("w1", 64, 30_000, 3, RETENTION_MS)  # TAKE_BATCH
    taken += [one.entry for one in entries]
    calls["TAKE"] += 201
    assert len({entry.tenant_id for entry in taken}) == 216  # round robin: all different
    for entry in taken[:100]:
        await store.begin(entry, "w1", 3, RETENTION_MS)  # as for a large request
        event = ("1-0", keys.EVENT_INLINE, b"x" * 200)
        await store.append(entry, "w1", [event], RETENTION_MS)
        await store.finish(entry, "w1", [("1-1", keys.EVENT_INLINE, b"y")], RETENTION_MS,
                           state=keys.SUCCEEDED)  # fmt: skip
    calls.update({"BEGIN": 100, "APPEND": 100, "FINISH": 100})
    for entry in taken[100:150]:
        await store.retry(entry, "w1", Failure("CRASHED", "boom"), 10, refund=False)
    calls["RETRY"] += 50
    for _ in range(10):  # 66 claims: 3 calls each
        assert await store.hold("w1", taken[150:], 30_000) == []
    assert await store.hold("w1", taken[150:], 1) == []  # due in 1 ms: w2 takes them over
    calls["HOLD"] += 33
    await asyncio.sleep(0.05)
    over, _due = await store.take("w2", 64, 30_000, 3, RETENTION_MS)
    assert len(over) == TAKE_BATCH
    calls["TAKE"] += 1
    for n in range(100):
        await store.enqueue(f"late{n}", f"tenant-{n}", b"r", 0, RETENTION_MS)
    calls["ENQUEUE"] += 100
    for _ in range(50):
        depth = await store.depth(20)
    calls["DEPTH"] += 50
    assert len(depth.tenants) == 20
    # The retried ones are delayed, or waiting again once a TAKE found them due.
    assert depth.waiting + depth.delayed == TENANTS - 216 + 50 + 100

    times = {name: sorted(values) for name, values in (await script_times(raw)).items()}
    # Each script's first call is logged twice: refused (NOSCRIPT), then run once loaded.
    assert all(calls[name] <= len(values) <= calls[name] + 1 for name, values in times.items())
    assert set(times) == set(calls)
    medians = {name: values[len(values) // 2] for name, values in times.items()}
    p90s = {name: values[len(values) * 9 // 10] for name, values in times.items()}
    # Logging every command costs Redis too: these are upper bounds of the scripts' own time.
    assert all(us < 5_000 for us in medians.values()), (medians, p90s)
    assert all(us < 10_000 for us in p90s.values()), (medians, p90s)
