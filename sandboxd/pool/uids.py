"""Host uids for jails: one distinct unprivileged uid per live jail."""

from __future__ import annotations

import collections

from sandboxd.jail.errors import JailError


class UidAllocator:
    """Distinct unprivileged host uids, one per live jail."""

    def __init__(self, base: int, count: int):
        self._free = collections.deque(range(base, base + count))

    def take(self) -> int:
        if not self._free:
            raise JailError("no free jail uid")
        return self._free.popleft()

    def give_back(self, uid: int) -> None:
        self._free.append(uid)
