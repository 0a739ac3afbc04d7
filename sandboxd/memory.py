"""The daemon's memory: malloc in huge pages so that the event loop faults and unmaps large
buffers 2 MiB at a time, and memory given back to the system after large requests, off the loop.

A large request is copied a few times on the event loop (gRPC's receive buffer, the protobuf
message, the joined input), and freed there. With `glibc.malloc.hugetlb=1` (glibc 2.35 and
later) malloc asks for transparent huge pages where the kernel's THP mode is `madvise` (Debian's
and Amazon Linux's default) or `always`: in 4 KiB pages every copy into fresh memory took a
fault per page and every free unmapped them one by one, 10-12 ms of a single loop turn for a
64 MiB input; huge pages take 512 times fewer.

Memory goes back to the system through `give_back()` (malloc_trim, in a thread): after an
execution that moved megabytes, a refused large message or a refused large upload, and, for
what the daemon never sees (gRPC reads a message over its own limit into its threads' arenas
and refuses it), whenever the daemon's RSS has grown by GIVE_BACK_AFTER_BYTES over its lowest
since the last trim (`give_back_after_growth`).

glibc reads its tunables when a process starts, so the daemon's commands start themselves again
with the tunable set (exec: the same pid). The jails are not affected: the fork server and the
runners get an environment of their own.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Final

THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")
HUGE_PAGES = "glibc.malloc.hugetlb=1"
# A request that brought or moved this much gives its memory back once it is over.
GIVE_BACK_AFTER_BYTES: Final = 4 * 1024 * 1024
# gRPC frees a refused call's own buffers only once the refusal is sent: trim again then.
_CALL_TEARDOWN_S: Final = 0.5
_GROWTH_WATCH_S: Final = 2.0
_PAGE_BYTES: Final = os.sysconf("SC_PAGE_SIZE")

_libc = ctypes.CDLL(None)
_libc.malloc_trim.argtypes = [ctypes.c_size_t]
_trims: set[asyncio.Future[None]] = set()

log = logging.getLogger(__name__)


def restart_with_malloc_tunables() -> None:
    """Exec this process again with the tunables set; returns only when they are set already,
    or when the kernel has THP off (nothing to set)."""
    current = os.environ.get("GLIBC_TUNABLES", "")
    names = {entry.partition("=")[0] for entry in current.split(":")}
    wanted = [t for t in tunables() if t.partition("=")[0] not in names]
    if not wanted:
        return
    env = dict(os.environ, GLIBC_TUNABLES=":".join(filter(None, (current, *wanted))))
    log.info("starting again with GLIBC_TUNABLES=%s", env["GLIBC_TUNABLES"])
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)


def tunables() -> tuple[str, ...]:
    """The tunables this host gets: huge pages only where the kernel gives them."""
    return (HUGE_PAGES,) if thp_available() else ()


def thp_available() -> bool:
    """Whether the kernel gives transparent huge pages to a process that asks (madvise)."""
    try:
        return "[never]" not in THP_MODE.read_text()
    except OSError:
        return False


def settle() -> None:
    """Once the daemon has started: collect once, then exempt everything alive from the cyclic
    collector for good.

    What the start built (modules, the proto descriptors, gRPC, the pool) lives as long as the
    daemon; without the freeze every full collection walks all of it on the event loop, 25-80 ms
    (`give_back(collect=True)` runs one after each large execution, and Python runs its own now
    and then). Frozen, a full collection walks only what came after the start.
    """
    gc.collect()
    gc.freeze()


def give_back(collect: bool = False, free_first: Callable[[], None] | None = None) -> None:
    """Return the heap's free memory to the system now and once more after a call's teardown;
    with `collect`, after a full collection; `free_first` runs before, in the trims' thread.

    Some of an execution's objects end in reference cycles (async generators, cancelled tasks,
    tracebacks) that only the cyclic collector frees; with a 16 MiB payload the daemon's memory
    climbed in a saw-tooth to twice its size before a collection came. The collection is short
    because the daemon's start froze its heap (`settle`). malloc_trim walks glibc's arenas
    without the GIL, in a thread, so the loop goes on meanwhile.
    """
    if collect:
        gc.collect()
    task = asyncio.ensure_future(_trim_twice(free_first))
    _trims.add(task)
    task.add_done_callback(_trims.discard)


async def _trim_twice(free_first: Callable[[], None] | None) -> None:
    if free_first is not None:
        await asyncio.to_thread(free_first)
    await asyncio.to_thread(_libc.malloc_trim, 0)
    await asyncio.sleep(_CALL_TEARDOWN_S)
    await asyncio.to_thread(_libc.malloc_trim, 0)


async def give_back_after_growth() -> None:
    """Forever: give memory back whenever RSS has grown by GIVE_BACK_AFTER_BYTES over its lowest
    since the last trim (a burst of 60 MB messages that gRPC refused kept +100 MB in its threads'
    arenas). Memory in use stays in use: after a trim that freed little, the bar is higher."""
    settled = _rss_bytes()  # the lowest since the last trim
    while True:
        await asyncio.sleep(_GROWTH_WATCH_S)
        rss = _rss_bytes()
        if rss - settled >= GIVE_BACK_AFTER_BYTES:
            await _trim_twice(None)
            settled = _rss_bytes()
        else:
            settled = min(settled, rss)


def _rss_bytes() -> int:
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * _PAGE_BYTES
