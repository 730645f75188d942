"""The own-swing discount (aal_core.train.swing): pure, numbers in.

The samples are the shape bench/governed_train.py recorded: the run's trough
at 0.49 of its cgroup, its own step taking it to 0.66 in 0.1 s with a
fitted time to exhaustion of 0.5 s (trend 0.81, above pause_at 0.75) while
its level is 0.42."""
import pytest
from hypothesis import given, strategies as st

from aal_core.stress.classic import level
from aal_core.stress.trend import Ring
from aal_core.train.swing import (MAX_AHEAD_S, RISING_PER_S, TROUGH_WINDOW_S, ahead, learn, lift_level,
                                  peak_level, policy_stress, trough_slope)

STEP = {"used": 0.661, "level": 0.423, "trend": 0.806, "psi": 0.0, "swap": 0.0, "fragmentation": 0.0}
KW = dict(trough_used=0.49, swing=0.17, margin=1.25, trend_age_s=0.05, trend_max_s=1.0)


def test_the_runs_own_step_is_judged_by_its_next_peak_not_the_trend():
    stress, discounted = policy_stress(0.806, STEP, **KW)
    assert discounted and stress == pytest.approx(max(STEP["level"], level(0.49 + 0.17)))
    assert stress < 0.75


@pytest.mark.parametrize("change, why", [
    ({"swing": None}, "no swing measured at this micro-batch"),
    ({"trough_used": None}, "no trough yet"),
    ({"trend_age_s": 1.0}, "the trend lasted own_trend_max_s: growth that goes on"),
    ({"trough_used": 0.40}, "use above trough + margin x swing: something else grows"),
    ({"trough_used": 0.40, "grow": 0.03}, "grown past what the troughs' slope explains"),
])
def test_the_trend_counts_in_full_otherwise(change, why):
    stress, discounted = policy_stress(0.806, STEP, **{**KW, **change})
    assert (stress, discounted) == (0.806, False), why


def test_other_components_are_never_discounted():
    comp = dict(STEP, psi=0.45, swap=0.0)
    stress, discounted = policy_stress(0.806, comp, **{**KW, "swing": 0.02, "trough_used": 0.65})
    assert discounted and stress == pytest.approx(0.45)


def test_between_peaks_the_next_one_is_read():
    """A sample at the trough (no trend) reads the level of the coming peak."""
    comp = dict(STEP, used=0.49, level=level(0.49), trend=0.0)
    stress, discounted = policy_stress(level(0.49), comp, **KW)
    assert not discounted and stress == pytest.approx(level(0.66)) and stress > level(0.49)
    # without a known swing, the sample as it is
    assert policy_stress(level(0.49), comp, **{**KW, "swing": None}) == (level(0.49), False)


def test_what_grows_until_the_next_peak_raises_it():
    comp = dict(STEP, used=0.49, level=level(0.49), trend=0.0)
    stress, _ = policy_stress(level(0.49), comp, **{**KW, "grow": 0.1})
    assert stress == pytest.approx(level(0.76)) == pytest.approx(peak_level(0.49, 0.17, 0.1))


def test_a_stress_above_the_next_peak_is_kept():
    comp = dict(STEP, trend=0.0, psi=0.9)
    assert policy_stress(0.9, comp, **KW) == (0.9, False)


@given(stress=st.floats(0, 1), trend=st.floats(0, 1), used=st.floats(0, 1), trough=st.floats(0, 1),
       swing=st.floats(0, 0.5), grow=st.floats(0, 0.2), age=st.floats(0, 2))
def test_the_result_lies_between_the_next_peak_and_the_sample(stress, trend, used, trough, swing, grow, age):
    comp = dict(STEP, trend=trend, used=used)
    out, discounted = policy_stress(stress, comp, **{**KW, "trough_used": trough, "swing": swing,
                                                     "grow": grow, "trend_age_s": age})
    peak = peak_level(trough, swing, grow)
    assert peak <= out <= max(stress, peak)
    if not discounted:
        assert out == max(stress, peak)


def ring(points):
    r = Ring(5)
    for t, u in points:
        r.push(t, u)
    return r


def test_the_troughs_slope_is_their_least_squares_line():
    pts = [(10.0 + 0.4 * i, 0.30 + 0.02 * 0.4 * i) for i in range(5)]
    assert trough_slope(ring(pts)) == pytest.approx(0.02)
    noisy = [(t, u + (0.004 if i % 2 else -0.004)) for i, (t, u) in enumerate(pts)]
    assert trough_slope(ring(noisy)) == pytest.approx(0.02, abs=0.01)
    assert trough_slope(ring(pts[:2])) is None                          # too few
    assert trough_slope(ring([(0.0, 0.3), (0.1, 0.4), (0.2, 0.5)])) is None   # too short a span
    assert trough_slope(ring([(0.0, 0.5), (1.0, 0.4), (2.0, 0.3)])) == pytest.approx(-0.1)


def test_troughs_outside_the_window_are_no_evidence():
    pts = [(0.0, 0.3), (1.0, 0.4), (2.0, 0.5)]
    assert trough_slope(ring(pts), now=2.0) == pytest.approx(0.1)
    assert trough_slope(ring(pts), now=TROUGH_WINDOW_S + 0.5) is None   # the first fell out: two left


def test_ahead_is_the_slope_over_one_step_and_nothing_when_falling():
    assert ahead(0.02, 0.5) == pytest.approx(0.01)
    assert ahead(0.02, 600.0) == pytest.approx(0.02 * MAX_AHEAD_S)
    assert ahead(-0.02, 0.5) == ahead(None, 0.5) == ahead(0.02, 0.0) == 0.0


def test_no_rung_is_lifted_while_the_troughs_rise():
    assert lift_level(0.3, 0.1, RISING_PER_S * 2, 0.5) == 1.0
    assert lift_level(0.3, None, RISING_PER_S * 2, 0.5) == 1.0
    assert lift_level(0.3, 0.1, None, 0.5) == pytest.approx(level(0.4))
    assert lift_level(0.3, 0.1, RISING_PER_S / 2, 1.0) == pytest.approx(level(0.4 + RISING_PER_S / 2))
    assert lift_level(0.3, 0.1, -0.05, 0.5) == pytest.approx(level(0.4))   # falling: as it is
    assert lift_level(0.3, None, None, 0.5) is None


def test_a_swing_is_forgotten_slowly_and_raised_at_once():
    assert learn(None, 0.1) == 0.1
    assert learn(0.1, 0.3) == 0.3
    assert learn(0.3, 0.1) == pytest.approx(0.2)
