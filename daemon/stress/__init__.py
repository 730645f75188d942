"""The stress signal: RAM_STRESS in [0, 1] with its band, its components,
the trend and the time to exhaustion; thermal and power as separate scalars.

    sample.py    StressSample, the bands
    classic.py   the seed model, kept exactly
    fused.py     the default model (tighter of host/cgroup, trend, PSI, swap, fragmentation)
    trend.py     ring buffer + least-squares slope (compiled: ext/lsq.pyx; trend_ref.py the reference)
    thermal.py   temperature margin and rail power from tegrastats
    unit.py      SensingUnit: the sampling loop, listeners, counters, RPC methods
"""
from .sample import BANDS, StressSample, band_of

__all__ = ["BANDS", "StressSample", "band_of"]
