"""The default model, `fused`: explainable, and early on a fast ramp.

    used        the tighter of host (1 - MemAvailable/MemTotal) and cgroup
                (working set / limit) budgets: the one with fewer bytes left
    level       the seed's curve applied to `used`
    trend       from the least-squares slope of each budget's consumption over
                the last `trend_window_s` (and over the last 0.5 s, so a ramp
                that starts from flat shows within a few samples; that fit
                needs R² >= 0.9), and only when the fitted rise is >= 2 % of
                the budget (noise is not a ramp):
                seconds_to_exhaustion = headroom /
                slope, mapped onto the bands (<= 5 s CRITICAL, <= 15 s HIGH,
                <= 60 s MODERATE); only once used >= trend_min_used and the fit
                is straight (R² >= 0.6), so noise and a mostly empty machine
                do not raise it.  Two pieces of evidence bound it:
                  recent growth: the slope over the last 0.3 s must still be
                    >= 1/4 of the fitted one, else growth has stopped and
                    nothing is extrapolated (a finished model load or ramp
                    stops counting within ~0.3 s instead of the window's 2 s);
                  headroom: the trend's stress is capped by the used fraction
                    (TREND_CAP: 0.3 at 30 %, 0.5 at 60 %, 1.0 at 70 %), so a
                    burst that stops with ample headroom, a model load, is at
                    most HIGH (never above a priority-5 job's threshold 0.55
                    while <= 60 % is used), and a ramp that keeps going turns
                    CRITICAL from 65 % used on, or earlier through the level.
                The trade-off (bench/ramp.py): on a 2 GiB budget CRITICAL comes
                >= 1.7 s before the OOM kill at 400 MiB/s; on a 512 MiB one a
                400 MiB/s ramp is CRITICAL only ~0.45 s before it.
    psi         PSI some/full avg10 (the cgroup's on v2), capped below HIGH:
                secondary, it lags and it fires on cache churn
    swap        host swap in use, capped below HIGH
    fragmentation  Jetson: tegrastats' largest free blocks (lfb) and CMA
                nearly gone while memory is in use; capped below CRITICAL
    gpu_mem     a discrete GPU's memory (NVML), through the same curve

stress = the largest component; every sample carries them all.
view = "cgroup" when the watched cgroup was read for the sample, else "host".
"""
from __future__ import annotations

import bisect

from .classic import level
from .sample import StressSample, band_of
from .trend import Ring

# seconds_to_exhaustion → stress (piecewise linear; beyond the last point 0).
TTE_POINTS = ((0.0, 1.0), (2.5, 0.9), (5.0, 0.75), (15.0, 0.5), (60.0, 0.25), (120.0, 0.0))
_TTE_X = [p[0] for p in TTE_POINTS]

PSI_CAP = 0.45
SWAP_CAP = 0.45
FRAG_CAP = 0.6
MIN_R2 = 0.6
MIN_POINTS = 4
MIN_SPAN_S = 0.25
SHORT_WINDOW_S = 0.5
SHORT_MIN_R2 = 0.9
# The fitted rise over the window must be at least this fraction of the budget.
MIN_RISE = 0.02
# Growth is still going on when the slope over the last RECENT_S is at least
# STOP_RATIO of the fitted one (fewer than RECENT_MIN_POINTS there: not judged).
RECENT_S = 0.3
RECENT_MIN_POINTS = 3
STOP_RATIO = 0.25
# used fraction → the most the trend may add (piecewise linear, flat beyond the ends):
# a budget with ample headroom left is not an emergency on a slope alone.
TREND_CAP = ((0.3, 0.3), (0.6, 0.5), (0.7, 1.0))
_CAP_X = [p[0] for p in TREND_CAP]


def tte_stress(tte: float | None) -> float:
    if tte is None or tte >= TTE_POINTS[-1][0]:
        return 0.0
    if tte <= 0.0:
        return 1.0
    k = bisect.bisect_right(_TTE_X, tte)
    (x0, y0), (x1, y1) = TTE_POINTS[k - 1], TTE_POINTS[k]
    return y0 + (y1 - y0) * (tte - x0) / (x1 - x0)


def trend_cap(used: float) -> float:
    """The highest stress the trend may give at this used fraction (TREND_CAP)."""
    if used <= TREND_CAP[0][0]:
        return TREND_CAP[0][1]
    if used >= TREND_CAP[-1][0]:
        return TREND_CAP[-1][1]
    k = bisect.bisect_right(_CAP_X, used)
    (x0, y0), (x1, y1) = TREND_CAP[k - 1], TREND_CAP[k]
    return y0 + (y1 - y0) * (used - x0) / (x1 - x0)


def _clamp01(x: float) -> float:
    return 0.0 if x < 0.0 else 1.0 if x > 1.0 else x


class _Budget:
    """One memory budget (host or cgroup): its consumption over time."""

    def __init__(self):
        self.ring = Ring(256)
        self.total = 0

    def update(self, t: float, consumed: float, total: float, window_s: float):
        """(slope in bytes/s, seconds to exhaustion or None).  Two fits: the
        configured window, steady; and a short one, so a ramp that starts
        from flat is seen within a few samples instead of being diluted by
        the flat points before it.  The earlier warning of the two that
        passes the gates wins; none once the last RECENT_S shows the growth
        has stopped (`growth_stopped`)."""
        if total != self.total:            # limit changed: old points mean something else
            self.ring.clear()
            self.total = total
        self.ring.push(t, consumed)
        headroom = max(0.0, total - consumed)
        best_slope, best_tte = None, None
        for w, min_r2 in ((window_s, MIN_R2), (min(window_s, SHORT_WINDOW_S), SHORT_MIN_R2)):
            slope, r2, n, span = self.ring.fit(t - w)
            if best_slope is None:
                best_slope = slope
            # a real ramp is straight (R²) and moves the budget by more than noise does
            if (n >= MIN_POINTS and span >= MIN_SPAN_S and r2 >= min_r2 and slope > 0
                    and slope * span >= MIN_RISE * total):
                tte = headroom / slope
                if best_tte is None or tte < best_tte:
                    best_slope, best_tte = slope, tte
        if best_tte is not None and self.growth_stopped(t, best_slope):
            return best_slope, None
        return best_slope, best_tte

    def growth_stopped(self, t: float, fitted_slope: float) -> bool:
        """The recent evidence: the last RECENT_S rose at less than STOP_RATIO
        of the fitted slope (a window still full of the ramp keeps a steep
        fit for its whole length after the ramp ended)."""
        slope, _r2, n, span = self.ring.fit(t - RECENT_S)
        if n < RECENT_MIN_POINTS or span <= 0.0:
            return False
        return slope < STOP_RATIO * fitted_slope


class FusedModel:
    name = "fused"

    def __init__(self, config):
        self.configure(config)
        self.host = _Budget()
        self.cg = _Budget()

    def configure(self, config) -> None:
        sig = config.signal
        self.window_s = sig.trend_window_s
        self.min_used = sig.trend_min_used

    def _trend(self, tte: float | None, used: float) -> float:
        """One budget's trend stress: its time to exhaustion, capped by how
        much of it is used (TREND_CAP); nothing below trend_min_used."""
        if used < self.min_used:
            return 0.0
        return min(tte_stress(tte), trend_cap(used))

    def update(self, r, force: bool = False) -> StressSample:
        m = r.meminfo
        comp: dict = {}
        host_used = 1.0 - m.available / m.total
        comp["host_used"] = host_used
        h_slope, h_tte = self.host.update(r.t, float(m.total - m.available), float(m.total), self.window_s)
        used, slope_frac, tte = host_used, h_slope / m.total, h_tte
        trend = self._trend(h_tte, host_used)
        headroom = m.available
        cg = r.cgroup
        if cg is not None and cg.limit:
            cg_used = cg.working_set / cg.limit
            comp["cgroup_used"] = cg_used
            c_slope, c_tte = self.cg.update(r.t, float(cg.working_set), float(cg.limit), self.window_s)
            if cg.limit - cg.working_set < headroom:
                used, slope_frac, headroom = cg_used, c_slope / cg.limit, cg.limit - cg.working_set
            if c_tte is not None and (tte is None or c_tte < tte):
                tte = c_tte
            trend = max(trend, self._trend(c_tte, cg_used))
        comp["used"] = used
        comp["level"] = lvl = level(min(max(used, 0.0), 1.0))
        comp["trend"] = trend
        comp["headroom_mb"] = round(headroom / 1048576.0, 1)

        psi = cg.psi if (cg is not None and cg.psi is not None) else r.psi
        p = 0.0
        if psi is not None:
            p = max(psi.some_avg10 / 100.0, (psi.full_avg10 or 0.0) / 50.0)
            p = min(PSI_CAP, p)
        comp["psi"] = p

        sw = 0.0
        if m.swap_total > 0:
            sw = SWAP_CAP * _clamp01(1.0 - m.swap_free / m.swap_total)
        comp["swap"] = sw

        frag = 0.0
        weight = _clamp01((used - 0.3) / 0.4)
        tg = r.tegra
        if tg is not None and "ram" in tg and "lfb_blocks" in tg["ram"]:
            lfb_mb = tg["ram"]["lfb_blocks"] * tg["ram"]["lfb_block_kb"] / 1024.0
            comp["lfb_mb"] = lfb_mb
            frag = max(frag, FRAG_CAP * _clamp01(1.0 - lfb_mb / 64.0) * weight)
        if m.cma_total:
            frag = max(frag, FRAG_CAP * _clamp01(1.0 - (m.cma_free or 0) / m.cma_total / 0.25) * weight)
        if m.nvmap_used is not None:
            comp["nvmap_used"] = m.nvmap_used / m.total
        comp["fragmentation"] = frag

        g = 0.0
        if r.gpu_mem is not None and r.gpu_mem[1]:
            g = level(_clamp01(r.gpu_mem[0] / r.gpu_mem[1]))
            comp["gpu_mem"] = g

        s = max(lvl, trend, p, sw, frag, g)
        s = round(_clamp01(s), 6)
        return StressSample(stress=s, band=band_of(s), model=self.name,
                            components={k: (round(v, 6) if isinstance(v, float) else v) for k, v in comp.items()},
                            trend_per_s=round(slope_frac, 6),
                            seconds_to_exhaustion=None if tte is None else round(tte, 3),
                            timestamp=r.wall, monotonic=r.t, view="host" if cg is None else "cgroup")
