"""Degradation policy: which of a job's DEGRADE steps are in force.

Pure: a stress value, the machine-wide level and a monotonic time in, a
decision out.  Two modes (config `govern.mode`):

- seed: the seed's semantics, literally.  A job's steps are all in force
  while stress > threshold(priority) = 0.3 + 0.05 x priority, none otherwise.
- progressive: a controller.  Steps are applied one at a time, at most one
  per sample: the first as soon as stress passes the threshold, step k+1 once
  the machine-wide level (the PID's output, see level.py) has reached
  k x `level_per_step`.  They are lifted in reverse order, one per
  `hold_s`, only once stress has stayed below threshold - hysteresis for the
  whole hold time.  Between the two lines nothing changes, so a signal whose
  noise is smaller than the hysteresis cannot make a step flap.  When the
  evidence says the episode is over (`calm_level`: memory stopped growing,
  and the used fraction alone is below threshold - 2 x hysteresis, as after
  a model load), the first lift after the hold takes every step at once: the
  job is back to full service hold_s after the stress fell, not one hold
  per step later.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..runes import Step

SEED_BASE = 0.3
SEED_PER_PRIORITY = 0.05

APPLY, LIFT = "APPLY", "LIFT"


def threshold(priority: int) -> float:
    """Stress above which a job of this priority degrades (the seed's rule)."""
    return SEED_BASE + SEED_PER_PRIORITY * priority


def metadata_for(steps) -> dict:
    """The seed's metadata fields for the steps in force.

    kv_shrink_factor: product of the SHRINK_KV fractions (1.0: no shrink);
    max_context_tokens: the smallest CONTEXT (None: no limit);
    disabled_features: the DISABLE names (a set, sent sorted);
    batch_mode: the last BATCH mode in force (None: unchanged);
    offload_tier: the last OFFLOAD tier in force (None: stay local)."""
    kv = 1.0
    ctx = None
    disabled: set[str] = set()
    batch = None
    offload = None
    n = 0
    for s in steps:
        n += 1
        if s.action == "SHRINK_KV":
            kv *= s.arg
        elif s.action == "CONTEXT":
            ctx = s.arg if ctx is None else min(ctx, s.arg)
        elif s.action == "DISABLE":
            disabled.add(s.arg)
        elif s.action == "BATCH":
            batch = s.arg
        elif s.action == "OFFLOAD":
            offload = s.arg
    return {"kv_shrink_factor": kv, "max_context_tokens": ctx,
            "disabled_features": sorted(disabled), "batch_mode": batch,
            "offload_tier": offload, "degraded": n > 0, "degradation_level": n}


def calm_level(sample) -> float | None:
    """The stress of the used fraction alone (the sample's `level`) when
    memory is not growing towards exhaustion: the fused model's `trend` is 0
    (no budget above trend_min_used runs out within 2 minutes at its recent
    rate); a model without a trend component: no time to exhaustion at all.
    None while it grows, or when the sample does not say."""
    if sample is None:
        return None
    comp = getattr(sample, "components", None) or {}
    if "level" not in comp:
        return None
    if "trend" in comp:
        if comp["trend"] > 0.0:
            return None
    elif getattr(sample, "seconds_to_exhaustion", None) is not None:
        return None
    return float(comp["level"])


@dataclass(frozen=True)
class Change:
    """A decision: apply or lift these steps, and why."""

    kind: str                 # APPLY or LIFT
    steps: tuple[Step, ...]
    reason: str


class SeedStepper:
    """All steps at once above the threshold, none at or below it."""

    def __init__(self, steps: tuple[Step, ...], thresh: float):
        self.steps = steps
        self.threshold = thresh
        self.active = 0

    def target(self, stress: float, level: float, forced: bool) -> int:
        """Steps wanted now: all above the threshold, none at or below it
        (the level and the control loop's notches do not count in seed mode)."""
        return len(self.steps) if stress > self.threshold else 0

    def evaluate(self, stress: float, level: float, now: float, *, forced: bool = False,
                 early: bool = False, calm_level: float | None = None) -> Change | None:
        want = self.target(stress, level, forced)
        if want == self.active or not self.steps:
            return None
        if want:
            self.active = want
            return Change(APPLY, self.steps, f"stress {stress:.3f} above threshold {self.threshold:.3f}")
        lifted = self.steps[:self.active]
        self.active = 0
        return Change(LIFT, tuple(reversed(lifted)),
                      f"stress {stress:.3f} at or below threshold {self.threshold:.3f}")


class ProgressiveStepper:
    """One step at a time up, one per hold time down, with hysteresis."""

    def __init__(self, steps: tuple[Step, ...], thresh: float, *, level_per_step: float,
                 hysteresis: float, hold_s: float):
        self.steps = steps
        self.threshold = thresh
        self.level_per_step = level_per_step
        self.hysteresis = hysteresis
        self.hold_s = hold_s
        self.active = 0
        self.below_since: float | None = None

    def target(self, stress: float, level: float, forced: bool) -> int:
        """Steps wanted now: 0 below the threshold, else 1 + one per level_per_step."""
        if not (stress > self.threshold or forced):
            return 0
        extra = math.floor(level / self.level_per_step + 1e-9) if level > 0 else 0
        return min(len(self.steps), 1 + extra)

    def evaluate(self, stress: float, level: float, now: float, *, forced: bool = False,
                 early: bool = False, calm_level: float | None = None) -> Change | None:
        """`forced`: the control loop raised the level (engage even below the
        threshold, never lift).  `early`: skip the rest of the hold time.
        `calm_level`: the stress of the used fraction alone when memory is not
        growing (None while it grows); below threshold - 2 x hysteresis the
        lift after the hold takes every step left."""
        if not self.steps:
            return None
        want = self.target(stress, level, forced)
        if want > self.active:
            self.below_since = None
            step = self.steps[self.active]
            self.active += 1
            why = (f"stress {stress:.3f} above threshold {self.threshold:.3f}" if stress > self.threshold
                   else f"control loop raised the level (stress {stress:.3f})")
            return Change(APPLY, (step,), f"{why}, level {level:.3f}: step {self.active} of {len(self.steps)}")
        low = self.threshold - self.hysteresis
        if self.active and stress < low and not forced:
            if self.below_since is None:
                self.below_since = now
            held = now - self.below_since
            if held >= self.hold_s or early:
                why = "early recovery allowed" if early and held < self.hold_s else f"for {held:.1f} s"
                if calm_level is not None and calm_level < low - self.hysteresis:
                    lifted = tuple(reversed(self.steps[:self.active]))
                    self.active = 0
                    self.below_since = None
                    return Change(LIFT, lifted, f"stress {stress:.3f} below {low:.3f} {why}, memory not "
                                                f"growing with ample headroom (used {calm_level:.3f}): "
                                                f"every step lifted")
                step = self.steps[self.active - 1]
                self.active -= 1
                self.below_since = now          # the next lift waits a full hold again
                return Change(LIFT, (step,), f"stress {stress:.3f} below {low:.3f} {why}: "
                                             f"{self.active} of {len(self.steps)} steps left")
            return None
        self.below_since = None
        return None


def make_stepper(mode: str, steps: tuple[Step, ...], thresh: float, cfg):
    if mode == "seed":
        return SeedStepper(steps, thresh)
    return ProgressiveStepper(steps, thresh, level_per_step=cfg.level_per_step,
                              hysteresis=cfg.hysteresis, hold_s=cfg.hold_s)
