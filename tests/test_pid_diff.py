"""The compiled PID and the pure-Python reference agree on arbitrary inputs."""
import math

from hypothesis import given, settings, strategies as st

from aal_core import pid as pid_c
from aal_core import pid_ref

finite = st.floats(min_value=-10.0, max_value=10.0, allow_nan=False)
steps = st.lists(st.tuples(finite, st.floats(min_value=1e-3, max_value=5.0)), min_size=1, max_size=200)
gains = st.fixed_dictionaries({
    "kp": st.floats(0.0, 5.0), "ki": st.floats(0.0, 5.0), "kd": st.floats(0.0, 2.0),
    "setpoint": st.floats(-1.0, 1.0), "integral_limit": st.floats(0.0, 5.0),
    "epsilon": st.sampled_from([0.0, 1e-4, 1e-2]), "rate_limit": st.floats(1e-3, 2.0),
    "window": st.integers(1, 20),
})


def _close(a, b):
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


@settings(max_examples=300, deadline=None)
@given(gains, steps, st.booleans())
def test_cython_matches_reference(kw, seq, bounded):
    if bounded:
        kw = dict(kw, out_min=0.0, out_max=1.0)
    a, b = pid_c.PID(**kw), pid_ref.PID(**kw)
    for m, dt in seq:
        assert _close(a.update(m, dt), b.update(m, dt))
        assert _close(a.error, b.error) and _close(a.integral, b.integral)
        assert _close(a.derivative, b.derivative)
        assert a.stable == b.stable and a.streak == b.streak and a.updates == b.updates
    sa, sb = a.state(), b.state()
    assert sa.keys() == sb.keys()
    for k in sa:
        if isinstance(sa[k], float):
            assert _close(sa[k], sb[k]), k
        else:
            assert sa[k] == sb[k], k


@settings(max_examples=100, deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True), st.floats(allow_nan=True, allow_infinity=True))
def test_both_reject_the_same_bad_input(m, dt):
    outcomes = []
    for impl in (pid_c.PID, pid_ref.PID):
        p = impl()
        try:
            outcomes.append(("ok", p.update(m, dt)))
        except ValueError:
            outcomes.append(("error", None))
    assert outcomes[0][0] == outcomes[1][0]
    if outcomes[0][0] == "ok":
        assert _close(outcomes[0][1], outcomes[1][1])
