"""The trend's compiled Ring (ext/lsq.pyx, exported as aal_core.stress.trend.Ring)
and its pure-Python reference agree exactly on arbitrary points; the fit is
the least-squares line (checked against an independent closed form); the
daemon's trend needs no numpy."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest
from hypothesis import example, given, settings, strategies as st

from aal_core.stress import trend, trend_ref

times = st.floats(min_value=-1e7, max_value=1e7, allow_nan=False, allow_infinity=False)
values = st.floats(min_value=-1e13, max_value=1e13, allow_nan=False, allow_infinity=False)
ops = st.lists(st.one_of(st.tuples(st.just("push"), times, values),
                         st.tuples(st.just("fit"), st.one_of(times, st.just(-math.inf), st.just(math.inf))),
                         st.tuples(st.just("clear"))), max_size=300)


def same(a, b) -> bool:
    """Bit-identical floats (NaN only matches NaN)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


@settings(max_examples=400, deadline=None)
@given(st.integers(1, 40), ops)
# sxx and syy > 0 whose product underflows to 0 (found on 3.10's hypothesis)
@example(2, [("push", 0.0, 2.003234638797807e-115), ("push", 2.003234638797807e-115, 0.0), ("fit", 0.0)])
def test_compiled_ring_matches_the_reference(cap, seq):
    a, b = trend.Ring(cap), trend_ref.Ring(cap)
    for op in seq:
        if op[0] == "push":
            a.push(op[1], op[2])
            b.push(op[1], op[2])
        elif op[0] == "clear":
            a.clear()
            b.clear()
        else:
            fa, fb = a.fit(op[1]), b.fit(op[1])
            assert type(fa[2]) is int and len(fa) == 4
            assert all(same(x, y) for x, y in zip(fa, fb)), (fa, fb)
            assert a.window(op[1]) == b.window(op[1])
        assert (a.n, a.i, a.cap) == (b.n, b.i, b.cap)


def test_fit_is_the_least_squares_line():
    r = trend.Ring(256)
    for k in range(50):
        t = 1000.0 + 0.1 * k
        r.push(t, 3.0 * t + 7.0 + (0.5 if k % 2 else -0.5))
    slope, r2, n, span = r.fit(1000.0 + 0.1 * 10)      # the last 40 points
    assert n == 40 and span == pytest.approx(3.9)
    # closed form, computed independently
    ts = [1000.0 + 0.1 * k for k in range(10, 50)]
    vs = [3.0 * t + 7.0 + (0.5 if k % 2 else -0.5) for k, t in zip(range(10, 50), ts)]
    mt, mv = sum(ts) / 40, sum(vs) / 40
    b = sum((t - mt) * (v - mv) for t, v in zip(ts, vs)) / sum((t - mt) ** 2 for t in ts)
    assert slope == pytest.approx(b, rel=1e-9) and slope == pytest.approx(3.0, abs=0.1)
    assert 0.9 < r2 < 1.0


def test_degenerate_windows():
    r = trend.Ring(4)
    assert r.fit(-math.inf) == (0.0, 0.0, 0, 0.0)
    r.push(1.0, 5.0)
    assert r.fit(-math.inf) == (0.0, 0.0, 1, 0.0)
    r.push(1.0, 6.0)                        # same time twice: no slope
    assert r.fit(-math.inf) == (0.0, 0.0, 2, 0.0)
    r.push(2.0, 6.0)
    assert r.fit(0.0)[2] == 3 and r.fit(1.5)[2] == 1
    for k in range(10):                     # wraps: only the last 4 count
        r.push(10.0 + k, 2.0 * k)
    slope, r2, n, span = r.fit(-math.inf)
    assert (n, span) == (4, 3.0) and slope == pytest.approx(2.0) and r2 == pytest.approx(1.0)
    flat = trend.Ring(8)
    for k in range(5):
        flat.push(float(k), 1.0)
    assert flat.fit(-math.inf) == (0.0, 0.0, 5, 4.0)   # no variance in v: R² 0
    with pytest.raises(ValueError):
        trend.Ring(0)
    with pytest.raises(ValueError):
        trend_ref.Ring(0)


def test_stress_models_import_no_numpy():
    code = ("import sys; import aal_core.stress.fused, aal_core.stress.classic, aal_core.stress.unit; "
            "print('numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
