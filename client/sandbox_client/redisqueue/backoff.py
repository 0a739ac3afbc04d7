"""Exponential backoff for reconnecting to Redis: 0.1 s doubling up to a cap, reset on success."""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, first_s: float = 0.1, cap_s: float = 5.0):
        self._first = first_s
        self._cap = cap_s
        self._next = first_s

    def next_delay(self) -> float:
        """The next delay, with jitter so that a fleet does not reconnect in lockstep."""
        delay = self._next
        self._next = min(self._cap, self._next * 2)
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self._next = self._first
