"""A stress sample and the bands every consumer agrees on."""
from __future__ import annotations

from dataclasses import dataclass, field

# Upper bounds (exclusive) of each band; CRITICAL is everything from 0.75.
BANDS = (("LOW", 0.25), ("MODERATE", 0.50), ("HIGH", 0.75), ("CRITICAL", float("inf")))
BAND_ORDER = {name: i for i, (name, _) in enumerate(BANDS)}


def band_of(stress: float) -> str:
    for name, upper in BANDS:
        if stress < upper:
            return name
    return "CRITICAL"


@dataclass(frozen=True)
class StressSample:
    stress: float
    band: str
    model: str
    components: dict = field(default_factory=dict)
    # Change of the used fraction of the tighter memory budget, per second
    # (least squares over the trend window); 0.0 until there are enough points.
    trend_per_s: float = 0.0
    # Seconds until that budget is exhausted at the current slope; None when
    # memory is not growing (or the fit is not trustworthy).
    seconds_to_exhaustion: float | None = None
    timestamp: float = 0.0          # wall clock, for people
    monotonic: float = 0.0          # for intervals
    seq: int = 0
    # Thermal and power, not folded into the stress (absent without tegrastats).
    temp_c: float | None = None
    thermal_sensor: str | None = None
    thermal_margin_c: float | None = None
    power_mw: float | None = None
    # The memory view it was computed from: "cgroup" when the watched
    # cgroup was read for it, "host" (/proc/meminfo only) otherwise.
    view: str = "host"

    def to_dict(self) -> dict:
        d = {"stress": self.stress, "band": self.band, "model": self.model,
             "components": dict(self.components), "trend_per_s": self.trend_per_s,
             "timestamp": self.timestamp, "seq": self.seq, "view": self.view}
        if self.seconds_to_exhaustion is not None:
            d["seconds_to_exhaustion"] = self.seconds_to_exhaustion
        for k in ("temp_c", "thermal_sensor", "thermal_margin_c", "power_mw"):
            v = getattr(self, k)
            if v is not None:
                d[k] = v
        return d


@dataclass(frozen=True)
class Reading:
    """One round of the memory sources, handed to a model."""

    t: float                    # monotonic
    wall: float
    meminfo: object             # sources.meminfo.Meminfo
    cgroup: object = None       # sources.cgroup.CgroupMem or None
    psi: object = None          # sources.psi.Psi or None
    tegra: dict | None = None   # latest parsed tegrastats line, if fresh
    gpu_mem: tuple | None = None  # (used, total) bytes of a discrete GPU (NVML)
