"""A short numpy ring buffer of (time, value) and its least-squares slope.

Why least squares over a window rather than the last two points: at 10-50 Hz
the kernel's counters move in batches (per-CPU charge caches, LRU
batching), so a two-point difference is mostly noise; a fit over ~2 s is
steady on a real ramp and near zero on a flat line, and its R² says how much
to trust it."""
from __future__ import annotations

import numpy as np


class Ring:
    __slots__ = ("t", "v", "n", "i", "cap")

    def __init__(self, capacity: int = 128):
        self.cap = capacity
        self.t = np.zeros(capacity)
        self.v = np.zeros(capacity)
        self.n = 0
        self.i = 0

    def push(self, t: float, v: float) -> None:
        self.t[self.i] = t
        self.v[self.i] = v
        self.i = (self.i + 1) % self.cap
        if self.n < self.cap:
            self.n += 1

    def clear(self) -> None:
        self.n = self.i = 0

    def window(self, since: float) -> tuple[np.ndarray, np.ndarray]:
        t = self.t[:self.n]
        v = self.v[:self.n]
        m = t >= since
        return t[m], v[m]

    def fit(self, since: float) -> tuple[float, float, int, float]:
        """(slope per second, R², points, time span) of the points at or after `since`."""
        t, v = self.window(since)
        n = len(t)
        if n < 2:
            return 0.0, 0.0, n, 0.0
        tm = t - t.mean()
        vm = v - v.mean()
        sxx = float(tm @ tm)
        if sxx <= 0.0:
            return 0.0, 0.0, n, 0.0
        sxy = float(tm @ vm)
        syy = float(vm @ vm)
        slope = sxy / sxx
        r2 = (sxy * sxy) / (sxx * syy) if syy > 0.0 else 0.0
        return slope, r2, n, float(t.max() - t.min())
