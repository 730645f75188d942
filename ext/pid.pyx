# cython: language_level=3
"""PID controller for the degradation level: the hot step of the control loop.

Why Cython: the governor runs one step per stress sample (10-50 Hz) and the
control loop engineer's arbiter calls it too; the step creates no Python
objects.  The pure-Python reference is aal_core.pid_ref (same arithmetic, in
the same order); tests/test_pid_diff.py checks that both agree.

Conventions (shared with pid_ref):
- error = measurement - setpoint (positive when above the setpoint);
- integral += error * dt, clamped to +/- integral_limit, and reset to 0 when
  |error| < epsilon (the seed's ε-reset and ±1 clamp);
- anti-windup by conditional integration: the step's integration is not
  taken when the unclamped P + I output (the derivative left out, so its
  noise cannot unpin the output) would pass out_max with error > 0 or
  out_min with error < 0 (integrating would only push further into the
  clamp).  Without it, a governor idle at stress 0.1 held the integral at −1
  while its output sat at 0, and the first steps of the next ramp came late;
  with unbounded output (the default) it never applies;
- derivative on measurement (no kick when the setpoint moves), 0 on the
  first update;
- raw = kp*error + ki*integral + kd*derivative, clamped to [out_min, out_max];
  the output moves towards it by at most rate_limit per update;
- V = error**2; `stable` is True when V decreased (dV < 0) on each of the
  last `window` updates.

The cdef API is declared in ext/aal_core/pid.pxd: Cython looks a .pxd up by
the module's qualified name (aal_core.pid), so it lives under ext/aal_core/.
"""
from libc.math cimport fabs, isnan, isinf, INFINITY


cdef inline double _clamp(double x, double lo, double hi) nogil:
    if x < lo:
        return lo
    if x > hi:
        return hi
    return x


cdef class PID:
    def __init__(self, double kp=0.6, double ki=0.1, double kd=0.05, double setpoint=0.0,
                 double integral_limit=1.0, double epsilon=1e-4, double rate_limit=0.05,
                 double out_min=-INFINITY, double out_max=INFINITY, int window=10):
        if integral_limit < 0 or epsilon < 0 or rate_limit <= 0:
            raise ValueError("integral_limit and epsilon must be >= 0, rate_limit > 0")
        if not out_min <= out_max:
            raise ValueError(f"out_min ({out_min}) must be <= out_max ({out_max})")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.kp = kp
        self.ki = ki
        self.kd = kd
        self.setpoint = setpoint
        self.integral_limit = integral_limit
        self.epsilon = epsilon
        self.rate_limit = rate_limit
        self.out_min = out_min
        self.out_max = out_max
        self.window = window
        self.reset()

    cpdef void reset(self):
        """Forget all history (integral, last measurement, output, streak)."""
        self.error = 0.0
        self.integral = 0.0
        self.derivative = 0.0
        self.output = _clamp(0.0, self.out_min, self.out_max)
        self.v = 0.0
        self.dv = 0.0
        self.updates = 0
        self.streak = 0
        self._last_measurement = 0.0

    cpdef double update(self, double measurement, double dt) except? -1.0:
        """One step: the new output for `measurement` after `dt` seconds."""
        cdef double err, integral, deriv, raw, step, v
        if not dt > 0.0 or isinf(dt):
            raise ValueError(f"dt must be a positive finite number of seconds, got {dt}")
        if isnan(measurement) or isinf(measurement):
            raise ValueError(f"measurement must be finite, got {measurement}")
        err = measurement - self.setpoint
        if self.updates > 0:
            deriv = (measurement - self._last_measurement) / dt
        else:
            deriv = 0.0
        integral = _clamp(self.integral + err * dt, -self.integral_limit, self.integral_limit)
        # The clamp test looks at P + I only: a noisy derivative must not
        # unpin the output for one update and let the integral wind up.
        raw = self.kp * err + self.ki * integral
        if (raw > self.out_max and err > 0.0) or (raw < self.out_min and err < 0.0):
            # conditional integration: keep the integral where it was
            integral = self.integral
        raw = self.kp * err + self.ki * integral + self.kd * deriv
        if fabs(err) < self.epsilon:
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
    def stable(self):
        """True when the error shrank (dV < 0) on each of the last `window` updates."""
        return self.streak >= self.window

    def state(self):
        return {"error": self.error, "integral": self.integral, "derivative": self.derivative,
                "output": self.output, "stable": self.streak >= self.window, "v": self.v,
                "dv": self.dv, "updates": self.updates, "setpoint": self.setpoint,
                "kp": self.kp, "ki": self.ki, "kd": self.kd}

    def __repr__(self):
        return (f"PID(kp={self.kp}, ki={self.ki}, kd={self.kd}, setpoint={self.setpoint}, "
                f"output={self.output:.4f})")
