"""The run's own step, told apart from a ramp (the own-swing discount).

A training step allocates its activations and frees them again: the budget's
use rises by the run's `swing` (peak - trough RSS) every step, in a fraction
of a second.  The fused trend reads that rise as a ramp to exhaustion within
a second, and a ladder that climbs on one sample pauses the run for its own
step, each time it is back at its base knobs (bench/governed_train.py before
this: 5-7 pauses per run instead of 1).

The other way round, a sample between two peaks does not see the next one:
the ladder reads at least the level of the run's next peak (its trough, what
the troughs' slope adds until then, and its swing), known before it comes.
Pure: the numbers in, a stress out.
"""
from __future__ import annotations

from ..stress.classic import level
from ..stress.trend import Ring

__all__ = ["STRESS_PARTS", "ahead", "learn", "lift_level", "peak_level", "policy_stress", "trough_slope"]

# The fused model's stress components (the rest of `components` are figures).
STRESS_PARTS = ("level", "trend", "psi", "swap", "fragmentation", "gpu_mem")
# Troughs kept for their slope, and the least time they must span.
TROUGH_POINTS = 5
TROUGH_MIN_SPAN_S = 0.5
# Troughs older than this are no evidence of what grows now (a run that
# stopped reporting leaves no slope behind).
TROUGH_WINDOW_S = 30.0
# Troughs rising faster than this (fraction of the budget per second):
# something besides the run grows, and no rung is lifted meanwhile.
RISING_PER_S = 0.005
# A step longer than this is looked ahead only this far (a slope measured
# over seconds says little about a minute).
MAX_AHEAD_S = 10.0


def learn(old: float | None, measured: float) -> float:
    """The swing kept for a micro-batch: the larger of this step's and its
    mean with the last (one short step is no proof of a smaller one)."""
    return measured if old is None else max(measured, 0.5 * (old + measured))


def peak_level(trough_used: float, swing: float, grow: float = 0.0) -> float:
    """The level curve at the run's next peak: trough + what the budget's
    use grows by until then (`ahead`) + its own swing."""
    return level(min(1.0, max(0.0, trough_used + grow + swing)))


def trough_slope(troughs: Ring, now: float | None = None) -> float | None:
    """The least-squares slope (fraction of the budget per second) of the
    run's troughs, a Ring of (monotonic t, used fraction) at its latest
    reports, those within TROUGH_WINDOW_S of `now` (when given); None with
    fewer than 3 or spanning under TROUGH_MIN_SPAN_S.  Rising: something
    besides the run's own step is growing (another process, a leak), and
    the run's next peak will be that much higher."""
    slope, _, n, span = troughs.fit(float("-inf") if now is None else now - TROUGH_WINDOW_S)
    if n < 3 or span < TROUGH_MIN_SPAN_S:
        return None
    return slope


def ahead(slope: float | None, step_s: float) -> float:
    """What the budget's use grows by until the run's next peak (one step
    away): the troughs' slope times the step's time; nothing when falling."""
    if slope is None or slope <= 0.0 or not step_s > 0.0:
        return 0.0
    return slope * min(step_s, MAX_AHEAD_S)


def lift_level(trough_used: float, swing: float | None, slope: float | None, step_s: float) -> float | None:
    """The stress a rung's lift is judged by: the level of the run's next
    peak one rung down (trough + growth until then + `swing`, its swing at
    that rung's micro-batch; None where that was never measured), or 1.0
    while the troughs rise faster than RISING_PER_S: a lift in the middle
    of a ramp would be taken back within seconds, or be too late."""
    if slope is not None and slope > RISING_PER_S:
        return 1.0
    return None if swing is None else peak_level(trough_used, swing, ahead(slope, step_s))


def policy_stress(stress: float, comp: dict, *, trough_used: float | None, swing: float | None,
                  margin: float, trend_age_s: float | None, trend_max_s: float,
                  grow: float = 0.0) -> tuple[float, bool]:
    """(the stress the ladder reads, whether the trend was left out).

    Where the run's trough and its swing at its current micro-batch are
    known, the ladder reads at least the level of its next peak (trough +
    `grow`, what the budget's use grows by until then, + swing): the peak is
    known before it comes, and a sample between two peaks does not see it.

    The trend is left out while
      - the run's swing at its current micro-batch is known,
      - the budget's use is within what that cycle explains
        (trough_used + margin x swing), and
      - the trend has lasted less than trend_max_s (a step's rise does not);
    the run's next peak (trough_used + swing, the used fraction it will
    reach) is judged through the level curve instead, every other component
    as it is.  Growth beyond the run's own swing, or growth that goes on
    (another process, a leak), is seen in full."""
    if swing is None or trough_used is None:
        return stress, False
    peak = peak_level(trough_used, swing, grow)
    if "trend" not in comp or "used" not in comp or comp["trend"] <= 0.0 \
            or comp["used"] > trough_used + grow + margin * swing \
            or (trend_age_s is not None and trend_age_s >= trend_max_s):
        return max(stress, peak), False
    others = max(float(comp.get(k, 0.0)) for k in STRESS_PARTS if k != "trend")
    return max(peak, min(stress, others)), True
