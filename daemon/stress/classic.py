"""The seed model, kept exactly, as `--model classic`.

used = 1 - MemAvailable/MemTotal; used <= 0.6 → used * 0.5; used >= 0.95 →
1.0; between, 0.3 + 0.7 * (used - 0.6) / 0.35.  A window of 20 samples, at
most one sample per 0.5 s unless forced."""
from __future__ import annotations

from collections import deque

from .sample import StressSample, band_of
from .trend import Ring

WINDOW = 20
MIN_INTERVAL_S = 0.5


def level(used: float) -> float:
    if used <= 0.6:
        return used * 0.5
    if used >= 0.95:
        return 1.0
    return 0.3 + 0.7 * (used - 0.6) / 0.35


class ClassicModel:
    name = "classic"

    def __init__(self, config=None):
        self.window: deque = deque(maxlen=WINDOW)
        self._ring = Ring(WINDOW)
        self._last_t: float | None = None

    def update(self, r, force: bool = False) -> StressSample | None:
        """A new sample from Reading r, or None when within 0.5 s of the last (unless forced)."""
        if not force and self._last_t is not None and r.t - self._last_t < MIN_INTERVAL_S:
            return None
        self._last_t = r.t
        m = r.meminfo
        used = 1.0 - m.available / m.total
        s = level(used)
        self._ring.push(r.t, used)
        slope, _r2, n, _span = self._ring.fit(float("-inf"))
        tte = None
        if n >= 2 and slope > 0:
            tte = (1.0 - used) / slope
        sample = StressSample(stress=s, band=band_of(s), model=self.name,
                              components={"used": used, "level": s}, trend_per_s=slope,
                              seconds_to_exhaustion=tte, timestamp=r.wall, monotonic=r.t)
        self.window.append(sample)
        return sample
