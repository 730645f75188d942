"""Pure-Python reference of the trend's Ring (ext/lsq.pyx, exported by trend.py).

Same API and the same arithmetic in the same order (two passes: the sums
for the means, then the centred sums of squares and products), so the
differential test (tests/test_trend_diff.py) can require identical results.
Production code uses the compiled one; this says what it must compute.
"""
from __future__ import annotations


class Ring:
    __slots__ = ("t", "v", "n", "i", "cap")

    def __init__(self, capacity: int = 128):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.cap = capacity
        self.t = [0.0] * capacity
        self.v = [0.0] * capacity
        self.n = 0
        self.i = 0

    def push(self, t: float, v: float) -> None:
        self.t[self.i] = float(t)
        self.v[self.i] = float(v)
        self.i = (self.i + 1) % self.cap
        if self.n < self.cap:
            self.n += 1

    def clear(self) -> None:
        self.n = self.i = 0

    def window(self, since: float) -> tuple[list, list]:
        """([t], [v]) of the points at or after `since`, in storage order."""
        keep = [k for k in range(self.n) if self.t[k] >= since]
        return [self.t[k] for k in keep], [self.v[k] for k in keep]

    def fit(self, since: float) -> tuple[float, float, int, float]:
        """(slope per second, R², points, time span) of the points at or after `since`."""
        t, v = self.window(since)
        n = len(t)
        if n < 2:
            return 0.0, 0.0, n, 0.0
        st = sv = 0.0
        for a, b in zip(t, v):
            st += a
            sv += b
        mt, mv = st / n, sv / n
        sxx = sxy = syy = 0.0
        for a, b in zip(t, v):
            dt, dv = a - mt, b - mv
            sxx += dt * dt
            sxy += dt * dv
            syy += dv * dv
        if sxx <= 0.0:
            return 0.0, 0.0, n, 0.0
        slope = sxy / sxx
        den = sxx * syy     # > 0 each, yet their product can underflow to 0
        r2 = (sxy * sxy) / den if den > 0.0 else 0.0
        return slope, r2, n, max(t) - min(t)
