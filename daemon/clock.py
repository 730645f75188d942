"""Clocks.  Every interval and timeout uses the monotonic clock, so a jump of
the wall clock neither speeds up nor stalls a loop.  `ManualClock` lets tests
step time without sleeping."""
from __future__ import annotations

import time


class Clock:
    """Monotonic time for intervals; wall time only for timestamps shown to people."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


class ManualClock(Clock):
    def __init__(self, start: float = 1000.0, wall_start: float = 1.7e9):
        self._t = start
        self._wall_offset = wall_start - start

    def monotonic(self) -> float:
        return self._t

    def wall(self) -> float:
        return self._t + self._wall_offset

    def advance(self, dt: float) -> None:
        if dt < 0:
            raise ValueError("a monotonic clock does not go back")
        self._t += dt


SYSTEM = Clock()
