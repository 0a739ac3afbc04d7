"""Warm jails: started before they are needed, leased once, then destroyed. Never reused.

A warm jail is a runner that has loaded and said `ready` and has seen no tenant code. The pool
is split by concern:

- `sizing`: how many jails to keep warm (configured size, raised by demand) and to start now;
- `spawning`: one jail started (uid, cgroup, launcher, channel) until its runner is `ready`;
- `leasing`: which waiter gets the next warm jail (round robin by tenant, a small reserve);
- `destruction`: a jail killed at once, freed (exit, cgroup, uid) once dead, in the background;
- `jail_pool`: the `JailPool` that ties them together and owns the warm jails.
"""

from sandboxd.pool.jail_pool import JailPool
from sandboxd.pool.leasing import FairLeases, PoolClosed
from sandboxd.pool.pooled import PooledJail
from sandboxd.pool.sizing import PoolStats
from sandboxd.pool.spawning import READY_TIMEOUT_S
from sandboxd.pool.uids import UidAllocator

__all__ = [
    "READY_TIMEOUT_S",
    "FairLeases",
    "JailPool",
    "PoolClosed",
    "PoolStats",
    "PooledJail",
    "UidAllocator",
]
