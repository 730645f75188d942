"""The machine-wide degradation level: the PID's output plus notches.

The PID (aal_core.pid, Cython) regulates stress towards `govern.setpoint`:
stress above it raises the level (rate-limited to 0.05 per sample), stress
below lowers it, both smoothly.  The step logic (policy.py) reads the level
to decide how many of each job's steps to apply.  The control loop can add a
notch (`raise_level`, APPLY_BALANCE), but only while stress is at or above the
setpoint, and never more than the notches that take the level to 1.0; notches
are taken back one per hold time while stress stays below setpoint -
hysteresis, whether or not the loop keeps asking for more (a request refused
below the setpoint does not reset that clock).
"""
from __future__ import annotations

import math

from ..pid import PID

# dt for the first sample, before there is an interval to measure.
FIRST_DT = 0.1


class Level:
    def __init__(self, cfg):
        self.pid = PID(kp=cfg.kp, ki=cfg.ki, kd=cfg.kd, setpoint=cfg.setpoint,
                       out_min=0.0, out_max=1.0)
        self.cfg = cfg
        self.notches = 0
        self.value = 0.0
        self.last_t: float | None = None
        self.last_stress: float | None = None
        self.calm_since: float | None = None

    def reconfigure(self, cfg) -> None:
        """Gains and setpoint from a reloaded config; history is kept."""
        self.cfg = cfg
        self.pid.kp, self.pid.ki, self.pid.kd = cfg.kp, cfg.ki, cfg.kd
        self.pid.setpoint = cfg.setpoint

    def update(self, stress: float, now: float) -> float:
        dt = FIRST_DT if self.last_t is None else now - self.last_t
        if dt > 0:
            self.pid.update(stress, dt)
            self.last_t = now
        self.last_stress = stress
        if self.notches and stress < self.cfg.setpoint - self.cfg.hysteresis:
            if self.calm_since is None:
                self.calm_since = now
            elif now - self.calm_since >= self.cfg.hold_s:
                self.notches -= 1
                self.calm_since = now
        else:
            self.calm_since = None
        self._compose()
        return self.value

    @property
    def max_notches(self) -> int:
        """Notches past this add nothing: the level is already 1.0 from them alone."""
        per = self.cfg.level_per_step
        return max(1, math.ceil(1.0 / per - 1e-9)) if per > 0 else 0

    def raise_notch(self) -> str | None:
        """One more notch; None when added, else why not (stress below the
        setpoint or unknown, or the level already at its most)."""
        s = self.last_stress
        if s is None or s < self.cfg.setpoint:
            return (f"stress {s:.3f} is below the setpoint {self.cfg.setpoint}" if s is not None
                    else "no stress sample yet")
        if self.notches >= self.max_notches:
            return f"already {self.notches} notches (level {self.value:.2f})"
        self.notches += 1
        self._compose()
        return None

    def _compose(self) -> None:
        """value = the PID's output plus the notches, within [0, 1]."""
        self.value = min(1.0, max(0.0, self.pid.output + self.notches * self.cfg.level_per_step))

    def state(self) -> dict:
        return self.pid.state()
