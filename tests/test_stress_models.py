"""The models, pure: classic exactly as the seed, fused early on a ramp and
quiet on a flat line; bands; thermal scalars.  A manual clock, no sleeping."""
from __future__ import annotations

import random

import pytest

from aal_core.clock import ManualClock
from aal_core.config import Config
from aal_core.sources.cgroup import CgroupMem
from aal_core.sources.meminfo import Meminfo
from aal_core.sources.psi import Psi
from aal_core.stress import band_of
from aal_core.stress.classic import ClassicModel, level
from aal_core.stress.fused import FusedModel, tte_stress
from aal_core.stress.sample import Reading
from aal_core.stress.thermal import scalars

GiB = 1 << 30
MiB = 1 << 20


def mem(total=8 * GiB, available=6 * GiB, swap_total=0, swap_free=0, **kw) -> Meminfo:
    return Meminfo(total=total, available=available, free=available, buffers=0, cached=0,
                   swap_total=swap_total, swap_free=swap_free, shmem=0, **kw)


def reading(clock, m, **kw) -> Reading:
    return Reading(t=clock.monotonic(), wall=clock.wall(), meminfo=m, **kw)


@pytest.mark.parametrize("used,expected", [(0.0, 0.0), (0.3, 0.15), (0.6, 0.3), (0.775, 0.65),
                                           (0.95, 1.0), (0.99, 1.0)])
def test_classic_curve_is_the_seed(used, expected):
    assert level(used) == pytest.approx(expected)


@pytest.mark.parametrize("s,band", [(0.0, "LOW"), (0.2499, "LOW"), (0.25, "MODERATE"), (0.4999, "MODERATE"),
                                    (0.5, "HIGH"), (0.7499, "HIGH"), (0.75, "CRITICAL"), (1.0, "CRITICAL")])
def test_bands(s, band):
    assert band_of(s) == band


def test_classic_rate_limit_window_and_force():
    clock = ManualClock()
    m = ClassicModel()
    first = m.update(reading(clock, mem(available=2 * GiB)))
    assert first.stress == pytest.approx(level(0.75)) and first.model == "classic"
    clock.advance(0.2)
    assert m.update(reading(clock, mem())) is None                 # within 0.5 s
    assert m.update(reading(clock, mem()), force=True) is not None  # unless forced
    for _ in range(30):
        clock.advance(0.5)
        m.update(reading(clock, mem()))
    assert len(m.window) == 20


def ramp(model, clock, start_avail, rate_bytes_s, total=8 * GiB, hz=10, until_avail=0, cgroup=None):
    """Feed a linear ramp; yield (available, sample)."""
    avail = start_avail
    while avail > until_avail:
        yield avail, model.update(reading(clock, mem(total=total, available=int(avail)), cgroup=cgroup))
        clock.advance(1 / hz)
        avail -= rate_bytes_s / hz


@pytest.mark.parametrize("total,rate,lead", [
    (2 * GiB, 100 * MiB, 2.0),    # issue 9's goals, in bench/ramp.py's 2 GiB budget
    (2 * GiB, 400 * MiB, 1.0),
    # issue 9 traded lead on a small budget for quiet model loads: the trend is
    # capped by the used fraction (CRITICAL on trend from 65 % used), so 100
    # MiB/s into 512 MiB warns 1.7 s ahead (3.5 s before the cap), still
    # twice the level alone's
    (512 * MiB, 100 * MiB, 1.5),
])
def test_fused_warns_on_a_fast_ramp_before_the_level_does(total, rate, lead):
    clock = ManualClock()
    fused = FusedModel(Config())
    crit_avail = level_crit_avail = None
    for avail, s in ramp(fused, clock, total - 12 * MiB, rate, total=total):
        if crit_avail is None and s.band == "CRITICAL":
            crit_avail = avail
            assert s.seconds_to_exhaustion == pytest.approx(avail / rate, rel=0.05)
            assert s.components["trend"] >= 0.75
        if level_crit_avail is None and s.components["level"] >= 0.75:
            level_crit_avail = avail
    assert crit_avail is not None and level_crit_avail is not None
    lead_fused, lead_level = crit_avail / rate, level_crit_avail / rate
    assert lead_fused >= lead and lead_fused > lead_level


def test_fused_flat_noisy_high_usage_has_no_trend():
    clock = ManualClock()
    fused = FusedModel(Config())
    rnd = random.Random(7)
    samples = []
    for _ in range(300):
        avail = int(3 * GiB + rnd.uniform(-50, 50) * MiB)
        samples.append(fused.update(reading(clock, mem(available=avail))))
        clock.advance(0.1)
    assert all(s.components["trend"] == 0.0 for s in samples[-200:])
    assert {s.band for s in samples} == {"MODERATE"}
    # the stress is the level of the noisy used fraction, nothing more
    assert max(s.stress for s in samples) <= level(1 - (3 * GiB - 50 * MiB) / (8 * GiB)) + 1e-6


def test_fused_takes_the_tighter_of_host_and_cgroup():
    clock = ManualClock()
    fused = FusedModel(Config())
    cg = CgroupMem(version=2, path="/x", limit=512 * MiB, usage=480 * MiB, working_set=470 * MiB,
                   active_file=0, inactive_file=10 * MiB, oom_kill=0)
    s = fused.update(reading(clock, mem(total=64 * GiB, available=60 * GiB), cgroup=cg))
    assert s.components["cgroup_used"] == pytest.approx(470 / 512, abs=1e-4)
    assert s.components["used"] == s.components["cgroup_used"]
    assert s.band == "CRITICAL"
    # without a limit the host view stands
    s2 = fused.update(reading(clock, mem(total=64 * GiB, available=60 * GiB),
                              cgroup=CgroupMem(1, "/x", None, 1, 1, 0, 0, 0)))
    assert s2.band == "LOW" and "cgroup_used" not in s2.components


def test_fused_psi_and_swap_are_secondary():
    clock = ManualClock()
    fused = FusedModel(Config())
    psi = Psi(some_avg10=95.0, some_avg60=90.0, some_avg300=50.0, some_total=1, full_avg10=90.0)
    s = fused.update(reading(clock, mem(available=7 * GiB, swap_total=GiB, swap_free=0), psi=psi))
    assert s.components["psi"] > 0.4 and s.components["swap"] > 0.4
    assert s.band == "MODERATE"             # neither alone makes it HIGH


def test_fused_jetson_fragmentation_from_lfb():
    clock = ManualClock()
    fused = FusedModel(Config())
    tegra = {"ram": {"used_mb": 6000, "total_mb": 7620, "lfb_blocks": 1, "lfb_block_kb": 2048}}
    s = fused.update(reading(clock, mem(total=7620 * MiB, available=1620 * MiB), tegra=tegra))
    assert s.components["lfb_mb"] == 2.0
    assert s.components["fragmentation"] > 0.5
    calm = fused.update(reading(clock, mem(total=7620 * MiB, available=1620 * MiB),
                                tegra={"ram": {"used_mb": 1, "total_mb": 2, "lfb_blocks": 400, "lfb_block_kb": 4096}}))
    assert calm.components["fragmentation"] == 0.0


def test_fused_discrete_gpu_memory_is_its_own_component():
    clock = ManualClock()
    fused = FusedModel(Config())
    s = fused.update(reading(clock, mem(), gpu_mem=(76 * GiB, 80 * GiB)))
    assert s.components["gpu_mem"] == pytest.approx(level(0.95)) == s.stress and s.band == "CRITICAL"
    assert s.components["level"] < 0.25                      # the host itself is calm
    assert "gpu_mem" not in fused.update(reading(clock, mem())).components


def test_tte_curve_boundaries():
    assert tte_stress(None) == 0.0
    assert tte_stress(5.0) == pytest.approx(0.75)
    assert tte_stress(15.0) == pytest.approx(0.5)
    assert tte_stress(1000.0) == 0.0
    assert tte_stress(1.0) > tte_stress(3.0) > tte_stress(30.0)


def test_thermal_scalars_prefer_tj_and_sum_no_input_rail():
    out = scalars({"temps_c": {"cpu": 60.0, "tj": 70.5, "gpu": 80.0},
                   "power_mw": {"VDD_GPU_SOC": {"current": 3000, "average": 1}, "VDD_CPU_CV": {"current": 500, "average": 1}}},
                  95.0)
    assert out == {"temp_c": 70.5, "thermal_sensor": "tj", "thermal_margin_c": 24.5, "power_mw": 3500.0}
    out = scalars({"temps_c": {"cpu": 60.0, "gpu": 81.0}, "power_mw": {"VDD_IN": {"current": 5000, "average": 1},
                                                                   "VDD_SOC": {"current": 900, "average": 1}}}, 95.0)
    assert out["thermal_sensor"] == "gpu" and out["power_mw"] == 5000.0
    assert scalars(None, 95.0) == {}
