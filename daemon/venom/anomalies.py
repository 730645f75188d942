"""Anomalies per beat, from what the daemon observes.

Sensing keeps monotonically increasing counters (CRITICAL samples, OOM kills,
thermal breaches, throttle events, source failures: failure *episodes*, one
per source going absent until it reads again, never one per failed sample,
so a cgroup gone for a minute is one anomaly, not one every beat); so does the governor,
for directives a job left unacknowledged past `govern.ack_timeout_s` (each
directive counted once, when it becomes overdue: one acked in time is never
an anomaly, one acked late or never is exactly one); the beat timer says how
late this beat fired.  `AnomalyCounter` turns the counters into the
increments of one beat.  A counter that goes backwards (its source
restarted) counts from its new value.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

__all__ = ["KINDS", "Anomalies", "AnomalyCounter"]

# Counters read from SensingUnit.anomaly_counters().
SENSED = ("critical_samples", "oom_kills", "thermal_breaches", "throttle_events", "source_failures")
# Every monotonic counter: the sensed ones and GovernorUnit.overdue_directives_total().
COUNTED = SENSED + ("unacked_directives",)
KINDS = COUNTED + ("late_beats",)


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
    __slots__ = ("_last",)

    def __init__(self):
        self._last: dict[str, int] | None = None

    def step(self, counters: dict | None, late: int = 0) -> Anomalies:
        """This beat's anomalies from the COUNTED totals in `counters` (a
        missing key reads 0).  The first call sets the baseline (anything
        before the loop started is not this beat's)."""
        counters = counters or {}
        cur = {k: int(counters.get(k, 0) or 0) for k in COUNTED}
        if self._last is None:
            inc = dict.fromkeys(COUNTED, 0)
        else:
            inc = {}
            for k in COUNTED:
                d = cur[k] - self._last[k]
                inc[k] = d if d >= 0 else cur[k]
        self._last = cur
        return Anomalies(late_beats=max(0, int(late)), **inc)
