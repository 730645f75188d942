"""The governor's core with a manual clock and synthetic stress sequences."""
import random
from dataclasses import dataclass, replace

import pytest

from aal_core import errors as E
from aal_core.clock import ManualClock
from aal_core.config import GovernConfig
from aal_core.errors import ParseError, RpcError
from aal_core.govern.governor import Governor
from aal_core.govern.policy import metadata_for, threshold
from aal_core.runes import PROFILES, Step

FIVE = ("MEM[SOFT=100,HARD=200,VOL=MED]; PRIORITY=5; DEGRADE{STEP1:SHRINK_KV(0.75),"
        "STEP2:SHRINK_KV(0.5),STEP3:CONTEXT(4096),STEP4:CONTEXT(1024),STEP5:OFFLOAD(COLD)}")


@dataclass(frozen=True)
class Sample:
    stress: float
    monotonic: float
    timestamp: float
    band: str = "MODERATE"
    model: str = "test"


class Rig:
    def __init__(self, dt=0.1, **cfg):
        self.clock = ManualClock()
        self.gov = Governor(replace(GovernConfig(), **cfg), self.clock)
        self.dt = dt
        self.pushed = []

    def feed(self, stress):
        self.clock.advance(self.dt)
        s = Sample(stress, self.clock.monotonic(), self.clock.wall())
        out = self.gov.on_sample(s)
        self.pushed.extend(out)
        return out

    def feed_many(self, seq):
        out = []
        for x in seq:
            out.extend(self.feed(x))
        return out


# ------------------------------------------------------------------ seed mode

def test_seed_threshold_is_0_3_plus_0_05_per_priority():
    assert [round(threshold(p), 10) for p in range(10)] == [
        0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75]


def test_seed_metadata_mapping():
    steps = [Step(1, "SHRINK_KV", 0.75), Step(2, "CONTEXT", 4096), Step(3, "SHRINK_KV", 0.5),
             Step(4, "CONTEXT", 2048), Step(5, "DISABLE", "HIGH_COST_METRICS"), Step(6, "DISABLE", "TELEMETRY"),
             Step(7, "DISABLE", "TELEMETRY"), Step(8, "BATCH", "ASYNC"), Step(9, "OFFLOAD", "EXTENDED")]
    md = metadata_for(steps)
    assert md["kv_shrink_factor"] == 0.375                  # multiplied across SHRINK_KV steps
    assert md["max_context_tokens"] == 2048                  # the minimum across CONTEXT steps
    assert md["disabled_features"] == ["HIGH_COST_METRICS", "TELEMETRY"]   # a set
    assert md["batch_mode"] == "ASYNC" and md["offload_tier"] == "EXTENDED"
    assert md["degraded"] is True and md["degradation_level"] == 9
    none = metadata_for([])
    assert none == {"kv_shrink_factor": 1.0, "max_context_tokens": None, "disabled_features": [],
                    "batch_mode": None, "offload_tier": None, "degraded": False, "degradation_level": 0}


@pytest.mark.parametrize("priority", [0, 3, 5, 9])
def test_seed_activates_all_steps_strictly_above_threshold(priority):
    r = Rig(mode="seed")
    text = FIVE.replace("PRIORITY=5", f"PRIORITY={priority}")
    r.gov.submit("j", text, {"model": "llama"})
    t = 0.3 + 0.05 * priority
    assert r.feed(t) == []                                  # at the threshold: nothing
    (d,) = r.feed(t + 0.001)                                # just above: everything at once
    assert d["kind"] == "APPLY" and [s["order"] for s in d["steps"]] == [1, 2, 3, 4, 5]
    md = d["metadata"]
    assert md["kv_shrink_factor"] == 0.375 and md["max_context_tokens"] == 1024
    assert md["offload_tier"] == "COLD" and md["model"] == "llama"
    assert r.feed(0.999) == []                              # no more steps to apply
    (d,) = r.feed(t)                                        # at or below: all lifted at once
    assert d["kind"] == "LIFT" and d["metadata"]["kv_shrink_factor"] == 1.0
    assert d["metadata"]["degraded"] is False


def test_seed_submit_result_reflects_current_stress():
    r = Rig(mode="seed")
    r.feed(0.9)
    job = r.gov.submit("j", "BALANCED", {})
    md = job.metadata()
    assert md["kv_shrink_factor"] == 0.75 and md["max_context_tokens"] == 4096
    assert md["disabled_features"] == ["HIGH_COST_METRICS"]
    assert r.gov.job_dict(job)["admitted"] is True


@pytest.mark.parametrize("mode", ["seed", "progressive"])
def test_refusal_at_0_98_for_priority_3_and_below(mode):
    r = Rig(mode=mode)
    r.feed(0.98)
    for prio in (0, 3):
        with pytest.raises(RpcError) as ei:
            r.gov.submit(f"p{prio}", f"MEM[SOFT=1,HARD=1,VOL=LOW]; PRIORITY={prio}", {})
        assert ei.value.code == E.ADMISSION_REFUSED == -32005
        assert ei.value.data["stress"] == 0.98 and ei.value.data["priority"] == prio
    r.gov.submit("p4", "MEM[SOFT=1,HARD=1,VOL=LOW]; PRIORITY=4", {})      # priority 4 admitted
    r.feed(0.979)
    r.gov.submit("p3", "MINIMAL", {})                                     # below 0.98 admitted
    assert set(r.gov.jobs) == {"p4", "p3"} and r.gov.refused_total == 2


def test_submit_rejects_bad_input_and_keeps_state():
    r = Rig()
    r.gov.submit("a", "MINIMAL", {})
    with pytest.raises(RpcError) as ei:
        r.gov.submit("a", "MINIMAL", {})
    assert ei.value.code == E.CONFLICT
    with pytest.raises(RpcError) as ei:
        r.gov.submit("../etc", "MINIMAL", {})
    assert ei.value.code == E.INVALID_PARAMS
    with pytest.raises(RpcError) as ei:
        r.gov.submit("b", "MINIMAL", "not an object")
    assert ei.value.code == E.INVALID_PARAMS and ei.value.data["param"] == "metadata"
    with pytest.raises(ParseError) as ei:
        r.gov.submit("b", "MEM[SOFT=2,HARD=1,VOL=LOW]", {})
    assert (ei.value.line, ei.value.column) == (1, 17)
    assert list(r.gov.jobs) == ["a"]


# ----------------------------------------------------------- progressive mode

def test_progressive_applies_one_step_at_a_time_as_stress_climbs():
    r = Rig()
    r.gov.submit("j", FIVE, {})                      # threshold 0.55, setpoint 0.6
    applied = []
    for i in range(120):                             # a ramp 0.40 -> 0.995 over 12 s
        for d in r.feed(min(0.995, 0.40 + 0.005 * i)):
            assert d["kind"] == "APPLY" and len(d["steps"]) == 1
            applied.append((i, d["steps"][0]["order"], d["cause"]["stress"]))
    assert [o for _, o, _ in applied] == [1, 2, 3, 4, 5]
    first_i, _, first_stress = applied[0]
    assert first_stress > 0.55 and first_stress - 0.005 <= 0.55     # the first as soon as it passes
    gaps = [b[0] - a[0] for a, b in zip(applied, applied[1:])]
    assert all(g >= 1 for g in gaps)                                # never two in one sample
    assert applied[-1][0] - first_i >= 5                            # spread out, not all at once


def test_progressive_lifts_in_reverse_after_hold_and_not_in_the_band():
    r = Rig(hold_s=5.0, hysteresis=0.05)
    r.gov.submit("j", FIVE, {})
    r.feed_many([0.95] * 60)
    assert [s.order for s in r.gov.jobs["j"].active_steps] == [1, 2, 3, 4, 5]
    r.pushed.clear()
    r.feed_many([0.52] * 200)                     # inside the band (0.50..0.55): nothing lifts
    assert r.pushed == []
    out = r.feed_many([0.40] * 49)                # below the band, 4.9 s: still held
    assert out == []
    out = r.feed_many([0.40] * 251)               # then one lift per 5 s, last step first
    assert [d["kind"] for d in out] == ["LIFT"] * 5
    assert [d["steps"][0]["order"] for d in out] == [5, 4, 3, 2, 1]
    times = [d["issued_monotonic"] for d in out]
    assert all(b - a >= 5.0 - 1e-9 for a, b in zip(times, times[1:]))
    assert out[-1]["metadata"]["degraded"] is False


def test_progressive_does_not_flap_on_a_noisy_signal():
    rnd = random.Random(7)
    r = Rig()
    r.gov.submit("j", FIVE, {})
    # noise of +/-0.04 (below the 0.05 hysteresis) around the 0.55 threshold, for 60 s
    out = r.feed_many([0.56 + rnd.uniform(-0.04, 0.04) for _ in range(600)])
    kinds = [d["kind"] for d in out]
    assert "LIFT" not in kinds                       # never oscillates
    assert kinds.count("APPLY") >= 1


def test_progressive_hold_restarts_when_stress_comes_back():
    r = Rig(hold_s=2.0)
    r.gov.submit("j", FIVE, {})
    r.feed_many([0.7] * 3)
    n = len(r.gov.jobs["j"].active_steps)
    r.feed_many([0.4] * 15)                          # 1.5 s below
    r.feed_many([0.53] * 5)                          # back in the band: hold restarts
    out = r.feed_many([0.4] * 15)                    # 1.5 s again: not 2 s in a row
    assert out == [] and len(r.gov.jobs["j"].active_steps) == n


def test_early_recovery_skips_the_hold_once():
    r = Rig(hold_s=10.0)
    r.gov.submit("j", FIVE, {})
    r.feed_many([0.9] * 50)
    assert r.feed(0.3) == []
    r.gov.allow_early_recovery("venom APPLY_OPTIMIZE")
    (d,) = r.feed(0.3)
    assert d["kind"] == "LIFT" and "early recovery" in d["cause"]["reason"]
    assert r.feed_many([0.3] * 50) == []             # the next one waits the full hold again


def test_raise_level_engages_below_threshold_and_notches_decay():
    r = Rig(hold_s=1.0)
    r.gov.submit("j", FIVE, {})
    r.feed_many([0.3] * 10)
    assert r.gov.jobs["j"].active_steps == ()
    # below the setpoint a notch is refused (issue 9: APPLY_BALANCE ran away at idle)
    res = r.gov.raise_level("venom APPLY_BALANCE")
    assert res["added"] is False and "below the setpoint" in res["why"] and r.gov.status()["notches"] == 0
    first = r.feed(0.6)                              # at the setpoint: allowed
    assert r.gov.raise_level("venom APPLY_BALANCE")["added"] is True
    assert r.gov.raise_level("venom APPLY_BALANCE") == {"added": True, "notches": 2,
                                                        "level": round(r.gov.level.value, 6)}
    out = first + r.feed_many([0.6] * 3)
    assert [s["order"] for d in out for s in d["steps"]] == [1, 2, 3]      # 1 + 2 notches
    assert len(r.gov.jobs["j"].active_steps) == 3
    assert r.gov.status()["notches"] == 2
    # calm: the notches go one per hold time even while the loop keeps asking
    for _ in range(40):
        r.feed(0.3)
        r.gov.raise_level("venom APPLY_BALANCE")
    assert r.gov.status()["notches"] == 0
    r.feed_many([0.3] * 40)
    assert r.gov.jobs["j"].active_steps == ()


def test_notches_are_capped_at_a_full_level():
    r = Rig(level_per_step=0.3)
    r.feed(0.9)
    added = [r.gov.raise_level("x")["added"] for _ in range(10)]
    assert added == [True] * 4 + [False] * 6 and r.gov.level.notches == 4 == r.gov.level.max_notches


def test_level_rises_with_sustained_stress_and_falls_after():
    r = Rig()
    levels = []
    for _ in range(100):
        r.feed(0.9)
        levels.append(r.gov.level.value)
    assert all(b >= a for a, b in zip(levels, levels[1:])) and levels[-1] > 0.2
    down = []
    for _ in range(100):
        r.feed(0.2)
        down.append(r.gov.level.value)
    assert all(b <= a for a, b in zip(down, down[1:])) and down[-1] == 0.0
    assert all(a - b <= 0.05 + 1e-9 for a, b in zip([levels[-1]] + down, down))


# ------------------------------------------------------- acks and reporting

def test_directives_are_versioned_and_acks_are_cumulative():
    r = Rig()
    r.gov.submit("j", FIVE, {})
    out = r.feed_many([0.99] * 30)
    versions = [d["version"] for d in out]
    assert versions == list(range(1, len(out) + 1)) and len(out) == 5
    assert all(d["schema"] == 1 and d["job_id"] == "j" for d in out)
    assert r.gov.unacked_directives() == 5
    r.clock.advance(0.25)
    res = r.gov.ack("j", 3)
    assert res["acked_version"] == 3 and res["unacked"] == 2
    # latency: from directive 3's stress sample to now
    assert res["latency_s"] == pytest.approx(r.clock.monotonic() - out[2]["cause"]["sample_monotonic"])
    assert r.gov.unacked_directives() == 2
    with pytest.raises(RpcError) as ei:
        r.gov.ack("j", 99)
    assert ei.value.code == E.INVALID_PARAMS and r.gov.unacked_directives() == 2
    with pytest.raises(RpcError) as ei:
        r.gov.ack("nope", 1)
    assert ei.value.code == E.NOT_FOUND
    r.gov.ack("j", 5)
    assert r.gov.unacked_directives() == 0


def test_ack_latency_is_from_the_causing_sample():
    r = Rig()
    r.gov.submit("j", FIVE, {})
    (d,) = r.feed(0.9)
    r.clock.advance(0.42)
    res = r.gov.ack("j", d["version"])
    assert res["latency_s"] == pytest.approx(0.42)
    assert r.gov.job_dict(r.gov.jobs["j"])["last_ack_latency_s"] == pytest.approx(0.42)


def test_overdue_directives_are_reported():
    r = Rig(ack_timeout_s=1.0)
    r.gov.submit("j", FIVE, {})
    r.feed(0.9)
    assert r.gov.overdue_directives() == 0
    r.clock.advance(1.5)
    assert r.gov.overdue_directives() == 1
    assert r.gov.status()["overdue_directives"] == 1
    assert r.gov.jobs_list()[0]["anomalies"] == 1


def test_state_directive_only_when_something_is_unacked():
    r = Rig()
    r.gov.submit("j", FIVE, {})
    assert r.gov.state_directive("j") is None
    (d,) = r.feed(0.9)
    s = r.gov.state_directive("j")
    assert s["kind"] == "STATE" and s["version"] == d["version"] and s["metadata"] == d["metadata"]


def test_heartbeat_expiry():
    r = Rig(heartbeat_timeout_s=3.0)
    r.gov.submit("a", "MINIMAL", {})
    r.gov.submit("b", "MINIMAL", {})
    r.clock.advance(2.0)
    r.gov.heartbeat("a")
    r.clock.advance(2.0)
    assert r.gov.expired() == ["b"]


def test_quarantine_blocks_admissions_at_that_priority():
    r = Rig()
    r.gov.submit("q", "BALANCED", {})                # priority 5
    d = r.gov.quarantine("q", "anomalies")
    assert d["kind"] == "QUARANTINE" and d["metadata"]["quarantined"] is True
    with pytest.raises(RpcError) as ei:
        r.gov.submit("other", "MEM[SOFT=1,HARD=1,VOL=LOW]; PRIORITY=5", {})
    assert ei.value.code == E.QUARANTINED
    r.gov.submit("p6", "MEM[SOFT=1,HARD=1,VOL=LOW]; PRIORITY=6", {})
    d = r.gov.release_quarantine("q")
    assert d["kind"] == "RELEASE_QUARANTINE"
    r.gov.submit("other", "MEM[SOFT=1,HARD=1,VOL=LOW]; PRIORITY=5", {})


def test_user_metadata_cannot_spoof_degradation_fields():
    r = Rig()
    job = r.gov.submit("j", "BALANCED", {"kv_shrink_factor": 0.01, "note": "x"})
    md = job.metadata()
    assert md["kv_shrink_factor"] == 1.0 and md["note"] == "x"


def test_builtin_profiles_resolve_by_name():
    r = Rig()
    job = r.gov.submit("j", "performance", {})
    assert job.profile == PROFILES["PERFORMANCE"] and job.profile_name == "PERFORMANCE"
