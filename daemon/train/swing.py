"""The run's own step, told apart from a ramp (the own-swing discount).

A training step allocates its activations and frees them again: the budget's
use rises by the run's `swing` (peak - trough RSS) every step, in a fraction
of a second.  The fused trend reads that rise as a ramp to exhaustion within
a second, and a ladder that climbs on one sample pauses the run for its own
step, each time it is back at its base knobs (bench/governed_train.py before
this: 5-7 pauses per run instead of 1).  Pure: the numbers in, a stress out.
"""
from __future__ import annotations

from ..stress.classic import level

__all__ = ["STRESS_PARTS", "learn", "peak_level", "policy_stress"]

# The fused model's stress components (the rest of `components` are figures).
STRESS_PARTS = ("level", "trend", "psi", "swap", "fragmentation", "gpu_mem")


def learn(old: float | None, measured: float) -> float:
    """The swing kept for a micro-batch: the larger of this step's and its
    mean with the last (one short step is no proof of a smaller one)."""
    return measured if old is None else max(measured, 0.5 * (old + measured))


def peak_level(trough_used: float, swing: float) -> float:
    """The level curve at the run's next peak: trough + its own swing."""
    return level(min(1.0, max(0.0, trough_used + swing)))


def policy_stress(stress: float, comp: dict, *, trough_used: float | None, swing: float | None,
                  margin: float, trend_age_s: float | None, trend_max_s: float) -> tuple[float, bool]:
    """(the stress the ladder reads, whether the trend was left out).

    The trend is left out while
      - the run's swing at its current micro-batch is known,
      - the budget's use is within what that cycle explains
        (trough_used + margin x swing), and
      - the trend has lasted less than trend_max_s (a step's rise does not);
    the run's next peak (trough_used + swing, the used fraction it will
    reach) is judged through the level curve instead, every other component
    as it is.  Growth beyond the run's own swing, or growth that goes on
    (another process, a leak), is seen in full."""
    if swing is None or trough_used is None or "trend" not in comp or "used" not in comp:
        return stress, False
    if comp["trend"] <= 0.0 or comp["used"] > trough_used + margin * swing:
        return stress, False
    if trend_age_s is not None and trend_age_s >= trend_max_s:
        return stress, False
    others = max(float(comp.get(k, 0.0)) for k in STRESS_PARTS if k != "trend")
    return min(stress, max(others, peak_level(trough_used, swing))), True
