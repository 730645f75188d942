"""Recovery follows the evidence (issue 9): once memory stopped growing with
ample headroom, every step is lifted after one hold, not one hold per step;
while the evidence is missing (still growing, or used close to the line)
the lifts stay one per hold.  The governor's core, a manual clock."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest

from aal_core.clock import ManualClock
from aal_core.config import GovernConfig
from aal_core.govern.governor import Governor
from aal_core.govern.policy import calm_level
from aal_core.stress.classic import level

FIVE = ("MEM[SOFT=100,HARD=200,VOL=MED]; PRIORITY=5; DEGRADE{STEP1:SHRINK_KV(0.75),"
        "STEP2:SHRINK_KV(0.5),STEP3:CONTEXT(4096),STEP4:CONTEXT(1024)}")


@dataclass(frozen=True)
class Sample:
    stress: float
    monotonic: float
    timestamp: float
    components: dict = field(default_factory=dict)
    seconds_to_exhaustion: float | None = None
    band: str = "MODERATE"
    model: str = "fused"


def sample(clock, used, trend=0.0, tte=None):
    lvl = level(used)
    return Sample(max(lvl, trend), clock.monotonic(), clock.wall(),
                  {"used": used, "level": lvl, "trend": trend}, tte)


def run(used_after, trend_after=0.0, tte_after=None, hold_s=5.0, dt=0.1):
    """A burst drives a priority-5 job to 3 steps, then the given calm; returns
    (seconds from the end of the burst to the last lift, directives after it)."""
    clock = ManualClock()
    gov = Governor(replace(GovernConfig(), hold_s=hold_s), clock)
    gov.submit("p5", FIVE, None)
    for _ in range(8):                           # 0.8 s at stress 0.95: first step, then the level adds more
        clock.advance(dt)
        gov.on_sample(sample(clock, 0.9, trend=0.95, tte=1.0))
    applied = len(gov.get("p5").active_steps)
    assert applied >= 3
    t_end = clock.monotonic()
    lifts = []
    for _ in range(int(40 / dt)):
        clock.advance(dt)
        for d in gov.on_sample(sample(clock, used_after, trend_after, tte_after)):
            lifts.append((clock.monotonic() - t_end, d))
    assert all(d["kind"] == "LIFT" for _t, d in lifts)
    assert gov.get("p5").active_steps == ()
    return lifts[-1][0], lifts


def test_a_stopped_load_with_headroom_is_lifted_in_one_directive_after_one_hold():
    last, lifts = run(used_after=0.6)            # stopped at 60 %: level 0.3, no trend
    assert len(lifts) == 1 and len(lifts[0][1]["steps"]) >= 3
    assert last <= 5.0 + 1.0
    assert "every step lifted" in lifts[0][1]["cause"]["reason"]


def test_used_close_to_the_line_keeps_one_lift_per_hold():
    # 68.5 % used → level 0.47: below threshold - hysteresis (0.50), not below 0.45 (ample)
    last, lifts = run(used_after=0.685)
    assert len(lifts) >= 3 and all(len(d["steps"]) == 1 for _t, d in lifts)
    assert last >= 3 * 5.0


def test_still_growing_keeps_one_lift_per_hold():
    # a rise still extrapolated (time to exhaustion 40 s, trend 0.3): not calm
    last, lifts = run(used_after=0.5, trend_after=0.3, tte_after=40.0)
    assert len(lifts) >= 3 and all(len(d["steps"]) == 1 for _t, d in lifts)


def test_calm_level_reads_the_evidence():
    clock = ManualClock()
    assert calm_level(sample(clock, 0.6)) == pytest.approx(0.3)
    assert calm_level(sample(clock, 0.6, trend=0.4, tte=3.0)) is None
    # the host's own slow drift (exhaustion in minutes) is no trend: still calm
    assert calm_level(sample(clock, 0.6, tte=80.0)) == pytest.approx(0.3)
    classic = Sample(0.3, 0.0, 0.0, {"used": 0.6, "level": 0.3}, 80.0)
    assert calm_level(classic) is None                         # no trend component: no tte at all
    assert calm_level(replace(classic, seconds_to_exhaustion=None)) == pytest.approx(0.3)
    assert calm_level(Sample(0.3, 0.0, 0.0)) is None          # a sample that does not say
    assert calm_level(None) is None
