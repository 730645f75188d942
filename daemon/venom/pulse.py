"""The T_Λ pulse: how long one beat of the control loop lasts.

    T_Λ(k, P, U) = (T1 · ln U) / (1 − 1/(kP)),  kP > 1,  floored at 1e-6 s

k is the number of flows, P the number of nodes and U the "universe"
constant (e⁴ by default, so ln U = 4).  The seed's T1 = 1 ms gives a 4.2 ms
beat; the daemon defaults to T1 = 0.2375 s, a 1.0 s beat (see README,
"venom"), because a battery-powered board should not wake 240 times a second
to find nothing changed.

`BeatTimer` schedules beats on the monotonic clock at fixed deadlines (no
drift from the work done in a beat) and measures how late each one fired.
"""
from __future__ import annotations

import math

from ..errors import AalError

__all__ = ["PulseError", "T_FLOOR", "U_DEFAULT", "BeatTimer", "t_lambda"]

T_FLOOR = 1e-6
U_DEFAULT = math.exp(4.0)


class PulseError(AalError, ValueError):
    """T_Λ is undefined for these parameters (kP ≤ 1, U ≤ 0, non-finite input)."""


def t_lambda(k: float = 4, p: float = 5, t1: float = 0.001, u: float = U_DEFAULT) -> float:
    """Beat interval in seconds; raises PulseError where the formula is undefined."""
    for name, v in (("k", k), ("P", p), ("T1", t1), ("U", u)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise PulseError(f"T_Λ: {name} must be a finite number, got {v!r}")
    kp = k * p
    if kp <= 1:
        raise PulseError(f"T_Λ is defined only for k·P > 1 (got k={k}, P={p}, k·P={kp}): "
                         f"1 − 1/(kP) would be ≤ 0")
    if u <= 0:
        raise PulseError(f"T_Λ: U must be > 0 for ln U (got {u})")
    if t1 < 0:
        raise PulseError(f"T_Λ: T1 must be ≥ 0 seconds (got {t1})")
    value = (t1 * math.log(u)) / (1.0 - 1.0 / kp)
    return value if value > T_FLOOR else T_FLOOR


class BeatTimer:
    """Fixed-rate deadlines on a monotonic clock.

    `next_delay(now)` says how long to sleep until the next deadline;
    `fired(now)` is called when the beat starts and returns its lateness in
    seconds.  When a beat is more than one whole period late the schedule
    skips ahead instead of firing a burst of catch-up beats, and the skipped
    beats are counted (`missed`).
    """

    __slots__ = ("period", "deadline", "missed")

    def __init__(self, period: float, start: float):
        if not period > 0:
            raise PulseError(f"beat period must be > 0, got {period}")
        self.period = period
        self.deadline = start + period
        self.missed = 0

    def next_delay(self, now: float) -> float:
        d = self.deadline - now
        return d if d > 0 else 0.0

    def fired(self, now: float) -> float:
        lateness = now - self.deadline
        if lateness < 0:
            lateness = 0.0
        self.deadline += self.period
        if now >= self.deadline:  # more than a whole period behind: skip ahead
            skipped = int((now - self.deadline) // self.period) + 1
            self.missed += skipped
            self.deadline += skipped * self.period
        return lateness
