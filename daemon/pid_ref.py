"""Pure-Python reference of aal_core.pid.PID (ext/pid.pyx).

Same API and the same arithmetic in the same order, so the differential test
(tests/test_pid_diff.py) can run both on the same inputs.  Production code
uses the compiled one; this exists to say what it must compute.  Anti-windup
is conditional integration (see ext/pid.pyx): no integration while the
unclamped output is past a bound in the error's direction.
"""
from __future__ import annotations

import math


def _clamp(x: float, lo: float, hi: float) -> float:
    if x < lo:
        return lo
    if x > hi:
        return hi
    return x


class PID:
    def __init__(self, kp: float = 0.6, ki: float = 0.1, kd: float = 0.05, setpoint: float = 0.0,
                 integral_limit: float = 1.0, epsilon: float = 1e-4, rate_limit: float = 0.05,
                 out_min: float = -math.inf, out_max: float = math.inf, window: int = 10):
        if integral_limit < 0 or epsilon < 0 or rate_limit <= 0:
            raise ValueError("integral_limit and epsilon must be >= 0, rate_limit > 0")
        if not out_min <= out_max:
            raise ValueError(f"out_min ({out_min}) must be <= out_max ({out_max})")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.kp, self.ki, self.kd = float(kp), float(ki), float(kd)
        self.setpoint = float(setpoint)
        self.integral_limit = float(integral_limit)
        self.epsilon = float(epsilon)
        self.rate_limit = float(rate_limit)
        self.out_min, self.out_max = float(out_min), float(out_max)
        self.window = int(window)
        self.reset()

    def reset(self) -> None:
        self.error = 0.0
        self.integral = 0.0
        self.derivative = 0.0
        self.output = _clamp(0.0, self.out_min, self.out_max)
        self.v = 0.0
        self.dv = 0.0
        self.updates = 0
        self.streak = 0
        self._last_measurement = 0.0

    def update(self, measurement: float, dt: float) -> float:
        dt = float(dt)
        measurement = float(measurement)
        if not dt > 0.0 or math.isinf(dt):
            raise ValueError(f"dt must be a positive finite number of seconds, got {dt}")
        if math.isnan(measurement) or math.isinf(measurement):
            raise ValueError(f"measurement must be finite, got {measurement}")
        err = measurement - self.setpoint
        deriv = (measurement - self._last_measurement) / dt if self.updates > 0 else 0.0
        integral = _clamp(self.integral + err * dt, -self.integral_limit, self.integral_limit)
        # The clamp test looks at P + I only: a noisy derivative must not
        # unpin the output for one update and let the integral wind up.
        raw = self.kp * err + self.ki * integral
        if (raw > self.out_max and err > 0.0) or (raw < self.out_min and err < 0.0):
            # conditional integration (anti-windup): keep the integral where it was
            integral = self.integral
        raw = self.kp * err + self.ki * integral + self.kd * deriv
        if abs(err) < self.epsilon:
            integral = 0.0
            raw = self.kp * err + self.kd * deriv
        raw = _clamp(raw, self.out_min, self.out_max)
        step = _clamp(raw - self.output, -self.rate_limit, self.rate_limit)
        v = err * err
        self.dv = v - self.v if self.updates > 0 else 0.0
        if self.updates > 0 and self.dv < 0.0:
            self.streak += 1
        else:
            self.streak = 0
        self.v = v
        self.error = err
        self.integral = integral
        self.derivative = deriv
        self.output = _clamp(self.output + step, self.out_min, self.out_max)
        self._last_measurement = measurement
        self.updates += 1
        return self.output

    @property
    def stable(self) -> bool:
        return self.streak >= self.window

    def state(self) -> dict:
        return {"error": self.error, "integral": self.integral, "derivative": self.derivative,
                "output": self.output, "stable": self.stable, "v": self.v,
                "dv": self.dv, "updates": self.updates, "setpoint": self.setpoint,
                "kp": self.kp, "ki": self.ki, "kd": self.kd}
