"""Sustained anomaly evidence: what the entropy model is fed.

A beat's anomalies are counts, and one of them scales with the sampling
rate: sensing samples at 50 Hz while the band is HIGH, so one CRITICAL
second was ~50 `critical_samples`, σ(0.12·50) ≈ 0.998, a QUARANTINE on the
spot.  The evidence instead weighs

    a CRITICAL second     `critical_weight` units (venom.critical_weight,
                          default 2): a beat that saw any CRITICAL sample
                          counts T_Λ seconds of CRITICAL, however many
                          samples it saw
    every other anomaly   1 unit (OOM kills, thermal breaches, throttle
                          events, source failure episodes, overdue
                          directives, late beats: each is already an event,
                          not a sample)

and sums them over the last `venom.evidence_window_s` seconds (default 10):
a rate of anomaly units times the window.  With the defaults one CRITICAL
second is 2 units (σ(0.24) = 0.56: NOOP), ALERT (0.60) takes 2 CRITICAL
seconds in the window, QUARANTINE (0.85, 14.45 units) 8, or 15 OOM kills.
The same CRITICAL second gives the same evidence at any sampling rate.
"""
from __future__ import annotations

import collections
import math
from dataclasses import dataclass

from .anomalies import Anomalies

__all__ = ["CRITICAL_WEIGHT", "EVIDENCE_WINDOW_S", "Evidence", "EvidenceWindow"]

CRITICAL_WEIGHT = 2.0
EVIDENCE_WINDOW_S = 10.0
MEMORY_KINDS = ("critical_samples", "oom_kills")
DIRECTIVE_KINDS = ("unacked_directives",)


@dataclass(frozen=True)
class Evidence:
    value: float            # anomaly units in the window: the model's input
    window_s: float
    beats: int              # beats the window holds now
    critical_s: float       # seconds of CRITICAL in the window
    events: int             # other anomalies in the window
    memory_units: float     # of value: CRITICAL seconds and OOM kills
    directive_units: float  # of value: overdue directives

    def to_dict(self) -> dict:
        return {"value": round(self.value, 9), "window_s": self.window_s, "beats": self.beats,
                "critical_s": round(self.critical_s, 9), "events": self.events,
                "memory_units": round(self.memory_units, 9), "directive_units": self.directive_units,
                "rate_per_s": round(self.value / self.window_s, 9)}


class EvidenceWindow:
    """The last `window_s` seconds of beats (at T_Λ each, so
    round(window_s / T_Λ) beats, at least one)."""

    def __init__(self, t_lambda: float, window_s: float = EVIDENCE_WINDOW_S,
                 critical_weight: float = CRITICAL_WEIGHT):
        if not (window_s > 0 and math.isfinite(window_s)):
            raise ValueError(f"evidence window must be a finite number of seconds > 0, got {window_s!r}")
        if not (critical_weight >= 0 and math.isfinite(critical_weight)):
            raise ValueError(f"critical weight must be finite and >= 0, got {critical_weight!r}")
        self.t_lambda = t_lambda
        self.window_s = window_s
        self.critical_weight = critical_weight
        self.size = max(1, round(window_s / t_lambda))
        self._beats: collections.deque = collections.deque(maxlen=self.size)
        self._crit = 0          # beats in the window that saw CRITICAL
        self._oom = 0
        self._directives = 0
        self._events = 0

    def step(self, a: Anomalies) -> Evidence:
        crit = 1 if a.critical_samples > 0 else 0
        events = a.total - a.critical_samples
        rec = (crit, a.oom_kills, a.unacked_directives, events)
        if len(self._beats) == self.size:
            old = self._beats[0]
            self._crit -= old[0]
            self._oom -= old[1]
            self._directives -= old[2]
            self._events -= old[3]
        self._beats.append(rec)
        self._crit += crit
        self._oom += a.oom_kills
        self._directives += a.unacked_directives
        self._events += events
        critical_s = self._crit * self.t_lambda
        crit_units = self.critical_weight * critical_s
        return Evidence(value=crit_units + self._events, window_s=self.window_s, beats=len(self._beats),
                        critical_s=critical_s, events=self._events,
                        memory_units=crit_units + self._oom, directive_units=float(self._directives))
