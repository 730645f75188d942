"""The genome (the four cores' weights), the decision rule and recalibration.

Decision vector: each core's value times its weight,

    threat = E.threat × w_E        stability = B.conserve × w_B
    repair = R.urgency × w_R       opt_gain  = O.expected_gain × w_O

with the unweighted values kept beside them (raw_*).  The rule, first match
wins (THRESHOLDS):

    raw threat ≥ 0.85                     → QUARANTINE
    raw threat ≥ 0.60                     → ALERT
    stability > 0.25 and repair < 0.10    → APPLY_BALANCE
    opt_gain > 0.10                       → APPLY_OPTIMIZE
    otherwise                             → NOOP

Recalibration after each beat (`recalibrate`):
  1. ΔO = clamp(−u, −0.05, +0.05) where u is the PID's output for
     error = T_Λ − T_threshold (beat slower than the threshold → less O);
     O ← clamp(O + ΔO, 0.1, 0.9).
  2. When raw threat > 0.5: E ← clamp(0.15 · threat · e^(−t/50) ·
     max(0, 1 − O/0.3), 0.05, 0.30), t = beats since threat went above 0.5
     (the current episode; 0 on its first beat).  Otherwise E is unchanged.
  3. All four renormalised to sum to 1.
"""
from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass

from .cores import CoreOutputs

__all__ = ["Action", "DecisionVector", "Genome", "THRESHOLDS", "decide", "decision_vector",
           "recalibrate"]


class Action(str, enum.Enum):
    QUARANTINE = "QUARANTINE"
    ALERT = "ALERT"
    APPLY_BALANCE = "APPLY_BALANCE"
    APPLY_OPTIMIZE = "APPLY_OPTIMIZE"
    NOOP = "NOOP"


THRESHOLDS = {
    "quarantine_threat": 0.85,
    "alert_threat": 0.60,
    "balance_stability": 0.25,
    "balance_repair": 0.10,
    "optimize_gain": 0.10,
}

DELTA_O_LIMIT = 0.05
O_MIN, O_MAX = 0.1, 0.9
E_MIN, E_MAX = 0.05, 0.30
E_BASE, E_TAU, E_O_REF = 0.15, 50.0, 0.3


@dataclass(frozen=True)
class Genome:
    r: float = 0.25
    b: float = 0.25
    e: float = 0.15
    o: float = 0.35

    @classmethod
    def normalised(cls, r: float, b: float, e: float, o: float) -> "Genome":
        for name, v in (("R", r), ("B", b), ("E", e), ("O", o)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"genome weight {name} must be a finite number ≥ 0, got {v!r}")
        total = r + b + e + o
        if not total > 0:
            raise ValueError("genome weights must not all be 0")
        return cls(r / total, b / total, e / total, o / total)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DecisionVector:
    threat: float
    stability: float
    repair: float
    opt_gain: float
    raw_threat: float
    raw_urgency: float
    raw_conserve: float
    raw_gain: float

    def to_dict(self) -> dict:
        return asdict(self)


def decision_vector(cores: CoreOutputs, g: Genome) -> DecisionVector:
    return DecisionVector(
        threat=cores.e.threat * g.e,
        stability=cores.b.conserve * g.b,
        repair=cores.r.urgency * g.r,
        opt_gain=cores.o.expected_gain * g.o,
        raw_threat=cores.e.threat,
        raw_urgency=cores.r.urgency,
        raw_conserve=cores.b.conserve,
        raw_gain=cores.o.expected_gain,
    )


def decide(v: DecisionVector) -> Action:
    t = THRESHOLDS
    if v.raw_threat >= t["quarantine_threat"]:
        return Action.QUARANTINE
    if v.raw_threat >= t["alert_threat"]:
        return Action.ALERT
    if v.stability > t["balance_stability"] and v.repair < t["balance_repair"]:
        return Action.APPLY_BALANCE
    if v.opt_gain > t["optimize_gain"]:
        return Action.APPLY_OPTIMIZE
    return Action.NOOP


def delta_o(pid_output: float) -> float:
    """The O adjustment for a PID output: negative feedback, limited to ±0.05."""
    d = -pid_output
    return DELTA_O_LIMIT if d > DELTA_O_LIMIT else (-DELTA_O_LIMIT if d < -DELTA_O_LIMIT else d)


def e_weight(threat: float, t: float, o: float) -> float:
    """E under threat: 0.15 · threat · e^(−t/50) · max(0, 1 − O/0.3), clamped to [0.05, 0.30]."""
    e = E_BASE * threat * math.exp(-t / E_TAU) * max(0.0, 1.0 - o / E_O_REF)
    return E_MIN if e < E_MIN else (E_MAX if e > E_MAX else e)


def recalibrate(g: Genome, pid_output: float, raw_threat: float, episode_beats: int) -> tuple[Genome, float]:
    """(new genome, ΔO applied) — see the module docstring for the three steps."""
    d = delta_o(pid_output)
    o = g.o + d
    o = O_MIN if o < O_MIN else (O_MAX if o > O_MAX else o)
    e = e_weight(raw_threat, episode_beats, o) if raw_threat > 0.5 else g.e
    total = g.r + g.b + e + o
    return Genome(g.r / total, g.b / total, e / total, o / total), d
