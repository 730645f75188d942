"""A short ring buffer of (time, value) and its least-squares slope.

Why least squares over a window rather than the last two points: at 10-50 Hz
the kernel's counters move in batches (per-CPU charge caches, LRU
batching), so a two-point difference is mostly noise; a fit over ~2 s is
steady on a real ramp and near zero on a flat line, and its R² says how much
to trust it.

`Ring(capacity)`: push(t, v), clear(), window(since) -> ([t], [v]),
fit(since) -> (slope per second, R², points, time span).  Compiled
(ext/lsq.pyx: no numpy in the daemon); the pure-Python reference is
trend_ref.Ring.
"""
from __future__ import annotations

from ..lsq import Ring

__all__ = ["Ring"]
