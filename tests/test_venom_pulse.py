"""T_Λ: the formula, its domain (kP ≤ 1 is an error), the 1e-6 floor, and
the beat timer's deadlines and lateness on a manual clock."""
import math

import pytest
from hypothesis import given, strategies as st

from aal_core.clock import ManualClock
from aal_core.venom.pulse import T_FLOOR, U_DEFAULT, BeatTimer, PulseError, t_lambda


def test_seed_defaults_give_4_2_ms():
    # (0.001 · ln e⁴) / (1 − 1/20) = 0.004 / 0.95
    assert t_lambda() == pytest.approx(0.004 / 0.95, rel=1e-12)
    assert U_DEFAULT == pytest.approx(math.e ** 4)


def test_daemon_default_t1_gives_one_second_beat():
    from aal_core.config import VenomConfig
    c = VenomConfig()
    assert t_lambda(c.k_flows, c.p_nodes, c.t1, c.u) == pytest.approx(1.0, rel=1e-9)


@pytest.mark.parametrize("k,p", [(1, 1), (0.5, 2), (1, 0.5), (0, 5), (-4, 5), (-1, -1)])
def test_kp_at_most_one_is_an_error(k, p):
    with pytest.raises(PulseError, match=r"k·P > 1"):
        t_lambda(k, p)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "4", None, True])
def test_non_numbers_are_errors(bad):
    with pytest.raises(PulseError, match="finite number"):
        t_lambda(bad, 5)
    with pytest.raises(PulseError):
        t_lambda(4, 5, t1=bad)


def test_u_must_be_positive_and_t1_not_negative():
    with pytest.raises(PulseError, match="U must be > 0"):
        t_lambda(4, 5, 0.001, 0.0)
    with pytest.raises(PulseError, match="T1 must be"):
        t_lambda(4, 5, -0.001)


def test_floor_at_one_microsecond():
    assert t_lambda(4, 5, t1=1e-9) == T_FLOOR
    assert t_lambda(4, 5, t1=0.0) == T_FLOOR
    assert t_lambda(4, 5, t1=0.001, u=0.5) == T_FLOOR  # ln U < 0
    # just above the floor it is the formula, not the floor
    t1 = 2e-6
    assert t_lambda(4, 5, t1) == pytest.approx(t1 * 4 / 0.95) and t_lambda(4, 5, t1) > T_FLOOR


@given(k=st.integers(1, 64), p=st.integers(1, 64), t1=st.floats(1e-5, 10), logu=st.floats(0.01, 20))
def test_matches_formula(k, p, t1, logu):
    if k * p <= 1:
        with pytest.raises(PulseError):
            t_lambda(k, p, t1, math.exp(logu))
        return
    want = max(T_FLOOR, t1 * logu / (1 - 1 / (k * p)))
    assert t_lambda(k, p, t1, math.exp(logu)) == pytest.approx(want, rel=1e-9)


def test_beat_timer_fixed_deadlines_and_lateness():
    clk = ManualClock(100.0)
    bt = BeatTimer(1.0, clk.monotonic())
    assert bt.next_delay(clk.monotonic()) == 1.0
    clk.advance(1.0)
    assert bt.fired(clk.monotonic()) == 0.0
    # work in the beat does not shift the schedule
    clk.advance(0.3)
    assert bt.next_delay(clk.monotonic()) == pytest.approx(0.7)
    clk.advance(0.9)            # fires 0.2 s late
    assert bt.fired(clk.monotonic()) == pytest.approx(0.2)
    assert bt.next_delay(clk.monotonic()) == pytest.approx(0.8)
    assert bt.missed == 0


def test_beat_timer_skips_ahead_after_a_stall():
    clk = ManualClock(0.0)
    bt = BeatTimer(1.0, 0.0)
    clk.advance(4.5)            # deadline was 1.0: 3.5 s late, beats at 2,3,4 missed
    assert bt.fired(clk.monotonic()) == pytest.approx(3.5)
    assert bt.missed == 3
    assert bt.deadline == pytest.approx(5.0)


def test_beat_timer_rejects_bad_period():
    with pytest.raises(PulseError):
        BeatTimer(0.0, 0.0)
