"""Anomalies per beat, from what the daemon observes.

Sensing keeps monotonically increasing counters (CRITICAL samples, OOM kills,
thermal breaches, throttle events, source failures); the governor reports
how many directives are unacknowledged right now; the beat timer says how
late this beat fired.  `AnomalyCounter` turns those into the increments of
one beat.  A counter that goes backwards (its source restarted) counts from
its new value; newly unacknowledged directives count once, when they appear.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

__all__ = ["KINDS", "Anomalies", "AnomalyCounter"]

# Counters read from SensingUnit.anomaly_counters().
SENSED = ("critical_samples", "oom_kills", "thermal_breaches", "throttle_events", "source_failures")
KINDS = SENSED + ("unacked_directives", "late_beats")


@dataclass(frozen=True)
class Anomalies:
    critical_samples: int = 0
    oom_kills: int = 0
    thermal_breaches: int = 0
    throttle_events: int = 0
    source_failures: int = 0
    unacked_directives: int = 0
    late_beats: int = 0

    @property
    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self))

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["total"] = self.total
        return d


class AnomalyCounter:
    __slots__ = ("_last", "_last_unacked")

    def __init__(self):
        self._last: dict[str, int] | None = None
        self._last_unacked = 0

    def step(self, counters: dict | None, unacked: int = 0, late: int = 0) -> Anomalies:
        """This beat's anomalies.  The first call sets the baseline for the
        sensed counters (anything before the loop started is not this beat's)."""
        counters = counters or {}
        cur = {k: int(counters.get(k, 0) or 0) for k in SENSED}
        if self._last is None:
            inc = dict.fromkeys(SENSED, 0)
        else:
            inc = {}
            for k in SENSED:
                d = cur[k] - self._last[k]
                inc[k] = d if d >= 0 else cur[k]
        self._last = cur
        unacked = max(0, int(unacked))
        new_unacked = unacked - self._last_unacked if unacked > self._last_unacked else 0
        self._last_unacked = unacked
        return Anomalies(unacked_directives=new_unacked, late_beats=max(0, int(late)), **inc)
