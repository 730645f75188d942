"""The machine-wide degradation level: the PID's output plus notches.

The PID (aal_core.pid, Cython) regulates stress towards `govern.setpoint`:
stress above it raises the level (rate-limited to 0.05 per sample), stress
below lowers it, both smoothly.  The step logic (policy.py) reads the level
to decide how many of each job's steps to apply.  The control loop can add a
notch (`raise_level`, APPLY_BALANCE); notches are taken back one per hold
time once stress has stayed below setpoint - hysteresis.
"""
from __future__ import annotations

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

    def raise_notch(self) -> None:
        self.notches += 1
        self.calm_since = None
        self._compose()

    def _compose(self) -> None:
        """value = the PID's output plus the notches, within [0, 1]."""
        self.value = min(1.0, max(0.0, self.pid.output + self.notches * self.cfg.level_per_step))

    def state(self) -> dict:
        return self.pid.state()
