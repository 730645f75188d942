"""The own-swing discount (aal_core.train.swing): pure, numbers in.

The samples are the shape bench/governed_train.py recorded: the run's trough
at 0.49 of its cgroup, its own step taking it to 0.66 in 0.1 s with a
fitted time to exhaustion of 0.5 s (trend 0.81, above pause_at 0.75) while
its level is 0.42."""
import pytest

from aal_core.stress.classic import level
from aal_core.train.swing import learn, policy_stress

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
])
def test_the_trend_counts_in_full_otherwise(change, why):
    stress, discounted = policy_stress(0.806, STEP, **{**KW, **change})
    assert (stress, discounted) == (0.806, False), why


def test_other_components_are_never_discounted():
    comp = dict(STEP, psi=0.45, swap=0.0)
    stress, discounted = policy_stress(0.806, comp, **{**KW, "swing": 0.02, "trough_used": 0.65})
    assert discounted and stress == pytest.approx(0.45)


def test_no_trend_no_change():
    comp = dict(STEP, trend=0.0)
    assert policy_stress(0.423, comp, **KW) == (0.423, False)


def test_a_swing_is_forgotten_slowly_and_raised_at_once():
    assert learn(None, 0.1) == 0.1
    assert learn(0.1, 0.3) == 0.3
    assert learn(0.3, 0.1) == pytest.approx(0.2)
