"""ns per PID step: the Cython aal_core.pid against the pure-Python reference
and against simple-pid (what a user would otherwise reach for).

    .venv/bin/python bench/pid.py [--n 200000]

All three run side by side in one process on the same measurement sequence
(a noisy stress signal around the 0.6 setpoint, dt = 0.1 s).  The floor is
the cost of the cheapest Python-level call with two float arguments
(operator.add, a C builtin), which no per-sample controller called from Python
can beat: what is above it is the controller's own work.  Best of 5 repeats.
"""
from __future__ import annotations

import argparse
import operator
import random
import time

from simple_pid import PID as SimplePID

from aal_core.pid import PID as CythonPID
from aal_core.pid_ref import PID as RefPID


def ns_per_call(step, xs, dt) -> float:
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter_ns()
        for x in xs:
            step(x, dt)
        best = min(best, (time.perf_counter_ns() - t0) / len(xs))
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    args = ap.parse_args()
    rnd = random.Random(1)
    xs = [min(1.0, max(0.0, 0.6 + rnd.gauss(0, 0.1))) for _ in range(args.n)]
    dt = 0.1

    c = CythonPID(setpoint=0.6, out_min=0.0, out_max=1.0)
    r = RefPID(setpoint=0.6, out_min=0.0, out_max=1.0)
    # simple-pid: same gains; its error is setpoint - input, so negate the gains
    # to get the same sign; its output limits and anti-windup are its own.
    s = SimplePID(-0.6, -0.1, -0.05, setpoint=0.6, output_limits=(0.0, 1.0), sample_time=None)

    results = {
        "floor (operator.add call)": ns_per_call(operator.add, xs, dt),
        "aal_core.pid (Cython)": ns_per_call(c.update, xs, dt),
        "aal_core.pid_ref (pure Python)": ns_per_call(r.update, xs, dt),
        "simple-pid 2.0.1": ns_per_call(lambda x, d: s(x, dt=d), xs, dt),
    }
    cy = results["aal_core.pid (Cython)"]
    floor = results["floor (operator.add call)"]
    print(f"PID step, {args.n} samples, best of 5")
    print(f"{'implementation':34s} {'ns/step':>9s} {'x floor':>8s} {'x Cython':>9s}")
    for name, ns in results.items():
        print(f"{name:34s} {ns:9.1f} {ns / floor:8.2f} {ns / cy:9.2f}")


if __name__ == "__main__":
    main()
