"""Each documented property of the PID, on both implementations."""
import math

import pytest
from hypothesis import example, given, settings, strategies as st

from aal_core import pid as pid_c
from aal_core import pid_ref

IMPLS = [pytest.param(pid_c.PID, id="cython"), pytest.param(pid_ref.PID, id="reference")]


@pytest.mark.parametrize("PID", IMPLS)
def test_defaults_are_the_documented_ones(PID):
    p = PID()
    assert (p.kp, p.ki, p.kd) == (0.6, 0.1, 0.05)
    assert p.integral_limit == 1.0 and p.epsilon == 1e-4 and p.rate_limit == 0.05
    assert p.out_min == -math.inf and p.out_max == math.inf and p.window == 10


@pytest.mark.parametrize("PID", IMPLS)
def test_error_sign_is_measurement_minus_setpoint(PID):
    p = PID(setpoint=0.6, rate_limit=10.0)
    out = p.update(0.8, 0.1)
    assert p.error == pytest.approx(0.2)
    assert out > 0
    p2 = PID(setpoint=0.6, rate_limit=10.0)
    assert p2.update(0.4, 0.1) < 0


@pytest.mark.parametrize("PID", IMPLS)
def test_integral_is_clamped_anti_windup(PID):
    p = PID(kp=0.0, kd=0.0, ki=1.0, rate_limit=100.0, integral_limit=1.0)
    for _ in range(100):
        p.update(5.0, 1.0)          # error 5 for 100 s would integrate to 500
    assert p.integral == 1.0
    assert p.output == pytest.approx(1.0)
    # Windup would need ~500 s of negative error to unwind; clamped, one step
    # of error -1 brings the integral straight down.
    p.update(-1.0, 1.0)
    assert p.integral == pytest.approx(0.0)
    for _ in range(10):
        p.update(-5.0, 1.0)
    assert p.integral == -1.0


@pytest.mark.parametrize("PID", IMPLS)
def test_integral_resets_inside_epsilon(PID):
    p = PID(setpoint=0.5, rate_limit=100.0)
    for _ in range(5):
        p.update(0.9, 0.5)
    assert p.integral > 0.5
    p.update(0.5 + 5e-5, 0.5)       # |error| < 1e-4
    assert p.integral == 0.0
    p.update(0.5 + 2e-4, 0.5)       # just outside: integrates again
    assert p.integral == pytest.approx(1e-4)


@pytest.mark.parametrize("PID", IMPLS)
def test_output_change_is_rate_limited(PID):
    p = PID(setpoint=0.0)
    outs = [p.update(10.0, 0.1) for _ in range(30)]
    steps = [b - a for a, b in zip([0.0] + outs, outs)]
    assert all(abs(s) <= 0.05 + 1e-12 for s in steps)
    assert outs[-1] == pytest.approx(1.5)           # 30 steps of exactly 0.05
    # and down again, also limited
    downs = [p.update(-10.0, 0.1) for _ in range(5)]
    assert downs[-1] == pytest.approx(1.25)


@pytest.mark.parametrize("PID", IMPLS)
def test_output_is_clamped(PID):
    p = PID(setpoint=0.0, out_min=0.0, out_max=0.3, rate_limit=1.0)
    assert p.update(10.0, 0.1) == 0.3
    assert p.update(-10.0, 0.1) == 0.0


@pytest.mark.parametrize("PID", IMPLS)
def test_derivative_is_on_measurement_no_setpoint_kick(PID):
    p = PID(kp=0.0, ki=0.0, kd=1.0, setpoint=0.0, rate_limit=100.0)
    p.update(0.5, 0.1)
    assert p.derivative == 0.0               # no history on the first step
    p.setpoint = 0.4                          # moving the setpoint: no kick
    p.update(0.5, 0.1)
    assert p.derivative == 0.0
    p.update(0.6, 0.1)
    assert p.derivative == pytest.approx(1.0)


@pytest.mark.parametrize("PID", IMPLS)
def test_stable_needs_window_updates_of_shrinking_error(PID):
    p = PID(setpoint=0.0, window=5)
    for m in (1.0, 0.9, 0.8, 0.7, 0.6):
        p.update(m, 0.1)
    assert not p.stable                      # 4 decreases after the first update
    p.update(0.5, 0.1)
    assert p.stable
    p.update(0.7, 0.1)                       # error grew: streak broken
    assert not p.stable and p.dv > 0
    assert p.state()["stable"] is False


@pytest.mark.parametrize("PID", IMPLS)
def test_bad_input_raises_and_changes_nothing(PID):
    p = PID(setpoint=0.2)
    p.update(0.5, 0.1)
    before = p.state()
    for m, dt in ((0.5, 0.0), (0.5, -1.0), (0.5, math.inf), (math.nan, 0.1), (math.inf, 0.1), (0.5, math.nan)):
        with pytest.raises(ValueError):
            p.update(m, dt)
    assert p.state() == before
    with pytest.raises(ValueError):
        PID(window=0)
    with pytest.raises(ValueError):
        PID(out_min=1.0, out_max=0.0)


@pytest.mark.parametrize("PID", IMPLS)
def test_reset_forgets_history(PID):
    p = PID()
    for _ in range(20):
        p.update(1.0, 0.1)
    p.reset()
    assert p.state()["output"] == 0.0 and p.integral == 0.0 and p.updates == 0


def _simulate(PID, setpoint=0.6, steps=800, dt=0.1, load=0.65, gain=1.0):
    """A first-order plant (time constant 1 s): stress relaxes towards
    `load - gain * level`, the PID output being the degradation level in
    [0, 1].  This plant needs integral action (0.5 of the clamp) to reach the
    setpoint, so the test also shows the integral doing its job."""
    p = PID(setpoint=setpoint, out_min=0.0, out_max=1.0)
    stress, trace = 0.2, []
    for _ in range(steps):
        level = p.update(stress, dt)
        stress += ((load - gain * level) - stress) * dt / 1.0
        trace.append((stress, level))
    return trace


@pytest.mark.parametrize("PID", IMPLS)
def test_step_response_settles_without_oscillation(PID):
    trace = _simulate(PID)
    stresses = [s for s, _ in trace]
    first_above = next(i for i, s in enumerate(stresses) if s > 0.6)
    after = stresses[first_above:]
    assert min(after) > 0.6 - 1e-3                       # never swings back below
    assert max(after) - 0.6 < 0.06                        # small overshoot
    tail = after[-300:]
    assert all(b <= a + 1e-12 for a, b in zip(tail, tail[1:]))   # monotone approach
    assert abs(stresses[-1] - 0.6) < 3e-3                 # settled at the setpoint
    levels = [lvl for _, lvl in trace]
    assert levels[-1] == pytest.approx(0.05, abs=5e-3)    # the level that holds 0.6


@pytest.mark.parametrize("PID", IMPLS)
def test_sustained_ramp_raises_level_steadily(PID):
    p = PID(setpoint=0.6, out_min=0.0, out_max=1.0)
    outs = [p.update(0.6 + 0.004 * i, 0.1) for i in range(1, 100)]
    assert all(b >= a for a, b in zip(outs, outs[1:]))
    assert outs[-1] > 0.3


@pytest.mark.parametrize("PID", IMPLS)
def test_recovery_lowers_level_smoothly(PID):
    p = PID(setpoint=0.6, out_min=0.0, out_max=1.0)
    for _ in range(100):
        p.update(0.95, 0.1)
    high = p.output
    # saturated: kp * error + ki * clamped integral
    assert high == pytest.approx(0.6 * 0.35 + 0.1 * 1.0)
    outs = [p.update(0.3, 0.1) for _ in range(100)]
    assert outs[-1] == 0.0
    assert all(0 <= a - b <= 0.05 + 1e-12 for a, b in zip([high] + outs, outs))


@pytest.mark.parametrize("PID", IMPLS)
def test_no_windup_while_the_output_is_pinned_at_a_bound(PID):
    # Conditional integration: idle below the setpoint with the output at
    # out_min, integrating would only push further into the clamp.
    p = PID(setpoint=0.6, out_min=0.0, out_max=1.0)
    for _ in range(6000):
        p.update(0.1, 0.1)
    assert p.output == 0.0 and p.integral == 0.0      # the seed's PID sat at -1 here
    # and the same above out_max
    q = PID(setpoint=0.0, kp=2.0, out_min=0.0, out_max=1.0, rate_limit=1.0)
    for _ in range(100):
        q.update(0.9, 0.1)
    assert q.output == 1.0 and q.integral == 0.0
    # unbounded output: integration as before (clamped to ±1)
    r = PID(setpoint=0.6)
    for _ in range(200):
        r.update(0.1, 0.1)
    assert r.integral == -1.0


LEVEL_STEP = 0.05      # govern.level_per_step: the level one more step of a job takes


@settings(max_examples=60, deadline=None)
@given(idle=st.floats(0.0, 0.55), dt=st.floats(0.02, 1.0), noise=st.lists(st.floats(-0.05, 0.05), min_size=1,
                                                                            max_size=20))
# a noisy idle just below the setpoint: the derivative's spikes unpinned the
# output and let the integral wind up to -0.58 (found by hypothesis in CI)
@example(idle=0.53125, dt=0.0234375, noise=[0.0, -0.046875])
def test_after_ten_idle_minutes_a_step_is_answered_like_a_fresh_controller(idle, dt, noise):
    """10 simulated minutes at idle stress, then a step to 0.74: the level
    stays within one level step of a fresh controller's, on every update of
    the next 60 s, for both implementations."""
    for PID in (pid_c.PID, pid_ref.PID):
        kw = dict(kp=0.6, ki=0.1, kd=0.05, setpoint=0.6, out_min=0.0, out_max=1.0)
        idled, fresh = PID(**kw), PID(**kw)
        n = int(600 / dt)
        for i in range(n):
            idled.update(min(0.55, max(0.0, idle + noise[i % len(noise)])), dt)
        for _ in range(int(60 / dt)):
            a, b = idled.update(0.74, dt), fresh.update(0.74, dt)
            assert abs(a - b) <= LEVEL_STEP + 1e-12, (PID, a, b, idled.state())
