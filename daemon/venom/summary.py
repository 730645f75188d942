"""NOOP beats are not written one by one: flash wear matters.

`BeatSummary` accumulates every beat of a window (default one minute on the
monotonic clock) and, when the window is over, gives one ledger entry with
the counts: beats and actions, the anomaly histogram and sums of the NOOP
beats, the action beats coalesced into it and their anomaly sums (other
beats with an action have their own entries), late beats and the
worst lateness, the genome at the end.  The unit adds the ledger's Merkle
root and length at that moment.  With a 1 s beat that is 1,440 entries a
day on an idle board (README, "venom", has the measured size).
"""
from __future__ import annotations

from .anomalies import KINDS
from .arbiter import BeatResult
from .genome import Action

__all__ = ["BeatSummary"]


class BeatSummary:
    def __init__(self, interval_s: float, now: float):
        if not interval_s > 0:
            raise ValueError(f"summary interval must be > 0 s, got {interval_s}")
        self.interval_s = interval_s
        self._reset(now)

    def _reset(self, now: float) -> None:
        self.window_start = now
        self.beats = 0
        self.first_beat = None
        self.last_beat = None
        self.actions = {a.value: 0 for a in Action}
        self.noop_hist: dict[str, int] = {}
        self.noop_anomalies = dict.fromkeys(KINDS, 0)
        self.coalesced: dict[str, int] = {}
        self.coalesced_anomalies = dict.fromkeys(KINDS, 0)
        self.late_beats = 0
        self.max_lateness_s = 0.0
        self.last: BeatResult | None = None

    def add(self, r: BeatResult, lateness_s: float, coalesced: bool = False) -> None:
        """One beat; `coalesced`: an action beat with no entry of its own
        (the same as the beat before it, engine.py)."""
        self.beats += 1
        if self.first_beat is None:
            self.first_beat = r.beat
        self.last_beat = r.beat
        self.actions[r.action.value] += 1
        if r.action is Action.NOOP:
            key = str(r.anomalies.total)
            self.noop_hist[key] = self.noop_hist.get(key, 0) + 1
            for k in KINDS:
                self.noop_anomalies[k] += getattr(r.anomalies, k)
        elif coalesced:
            self.coalesced[r.action.value] = self.coalesced.get(r.action.value, 0) + 1
            for k in KINDS:
                self.coalesced_anomalies[k] += getattr(r.anomalies, k)
        self.late_beats += r.anomalies.late_beats
        if lateness_s > self.max_lateness_s:
            self.max_lateness_s = lateness_s
        self.last = r

    def due(self, now: float) -> bool:
        return self.beats > 0 and now - self.window_start >= self.interval_s

    def take(self, now: float) -> dict | None:
        """The summary entry for the window so far (None if empty); starts a new window."""
        if self.beats == 0:
            self._reset(now)
            return None
        entry = {
            "type": "venom.summary",
            "window_s": round(now - self.window_start, 6),
            "beats": self.beats,
            "first_beat": self.first_beat,
            "last_beat": self.last_beat,
            "actions": {k: v for k, v in self.actions.items() if v},
            "noop_anomaly_hist": dict(sorted(self.noop_hist.items(), key=lambda kv: int(kv[0]))),
            "noop_anomalies": {k: v for k, v in self.noop_anomalies.items() if v},
            "coalesced": dict(self.coalesced),
            "coalesced_anomalies": {k: v for k, v in self.coalesced_anomalies.items() if v},
            "late_beats": self.late_beats,
            "max_lateness_s": round(self.max_lateness_s, 6),
            "t_lambda": self.last.t_lambda,
            "genome": self.last.genome_next.to_dict(),
        }
        self._reset(now)
        return entry
