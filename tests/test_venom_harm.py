"""The control loop does no harm (issue 9, part 3), on a manual clock with
the real governor core and a real in-memory ledger:

- evidence is sustained: the same CRITICAL second at two sampling rates
  gives the same threat, a single CRITICAL second does not quarantine,
  sustained CRITICAL does;
- the culprit is the job whose memory grew most / uses most against its
  SOFT cap; no pid and no cgroup is never a target on memory evidence; a job
  that obeys and shrinks is not a culprit;
- a quarantine ends by itself after venom.release_hold_s below the
  setpoint, and the actuator forgets jobs that end or are released;
- APPLY_BALANCE over a simulated day: level and ledger growth bounded.
"""
import asyncio
from dataclasses import dataclass, replace

import pytest

from aal_core.clock import ManualClock
from aal_core.config import GovernConfig
from aal_core.govern.governor import Governor
from aal_core.ledger import Ledger
from aal_core.venom import Anomalies, Arbiter, Genome
from aal_core.venom.culprit import memory_score, pick_culprit
from aal_core.venom.engine import Settings, VenomLoop
from aal_core.venom.evidence import EvidenceWindow
from aal_core.venom.genome import Action
from aal_core.venom.jobmem import JobMemory

MB = 1 << 20
P5 = "MEM[SOFT=100,HARD=200,VOL=MED]; PRIORITY=5; DEGRADE{STEP1:SHRINK_KV(0.75),STEP2:SHRINK_KV(0.5)}"


# ------------------------------------------------------------- evidence

def critical_second(arbiter: Arbiter, hz: int, beat_s: float):
    """One second of CRITICAL sampled at `hz`, in beats of `beat_s`, then calm
    for the rest of the evidence window: the highest threat seen."""
    per_beat = round(hz * beat_s)
    worst = []
    for _ in range(round(1.0 / beat_s)):
        worst.append(arbiter.beat(Anomalies(critical_samples=per_beat), beat_s))
    for _ in range(round(12.0 / beat_s)):
        worst.append(arbiter.beat(Anomalies(), beat_s))
    return max(worst, key=lambda r: r.vector.raw_threat)


@pytest.mark.parametrize("beat_s", [1.0, 0.1])
def test_the_same_critical_second_at_two_sampling_rates_gives_the_same_threat(beat_s):
    slow = critical_second(Arbiter(t_lambda=beat_s), 10, beat_s)
    fast = critical_second(Arbiter(t_lambda=beat_s), 50, beat_s)
    assert slow.vector.raw_threat == pytest.approx(fast.vector.raw_threat, abs=1e-12)
    assert fast.evidence.critical_s == pytest.approx(1.0)
    # one CRITICAL second: 2 units, σ(0.24) = 0.56 — not even an ALERT (the seed: σ(6) = 0.998)
    assert fast.vector.raw_threat == pytest.approx(1 / (1 + 2.718281828459045 ** -0.24))
    assert fast.action is Action.NOOP


def test_sustained_critical_quarantines_and_a_burst_does_not():
    a = Arbiter(t_lambda=1.0)
    actions = [a.beat(Anomalies(critical_samples=50), 1.0).action for _ in range(10)]
    # 2 s: ALERT (4 units), 8 s: QUARANTINE (16 units, σ(1.92) = 0.87)
    assert actions[:1] == [Action.NOOP] and actions[1] is Action.ALERT
    assert Action.QUARANTINE not in actions[:7] and actions[7] is Action.QUARANTINE
    # and the window forgets: 10 calm seconds later, nothing is left
    for _ in range(10):
        r = a.beat(Anomalies(), 1.0)
    assert r.evidence.value == 0 and r.action is Action.NOOP


def test_evidence_window_counts_events_once_each_and_says_what_they_are():
    w = EvidenceWindow(t_lambda=0.5, window_s=2.0)         # 4 beats
    assert w.size == 4
    e = w.step(Anomalies(oom_kills=3, unacked_directives=2, critical_samples=7))
    assert (e.value, e.critical_s, e.events, e.memory_units, e.directive_units) == (6.0, 0.5, 5, 4.0, 2.0)
    for _ in range(3):
        e = w.step(Anomalies())
    assert e.value == 6.0
    e = w.step(Anomalies())                                # the first beat left the window
    assert e.value == 0.0 and e.beats == 4
    with pytest.raises(ValueError):
        EvidenceWindow(1.0, window_s=0.0)


# --------------------------------------------------------------- culprit

def job(job_id, *, prio=5, mem=None, soft_mb=100, growth=0, overdue=0, quarantined=False, source="cgroup"):
    j = {"job_id": job_id, "priority": prio, "overdue": overdue, "quarantined": quarantined,
         "submitted_at": 1.0}
    if mem is not None:
        j["memory"] = {"bytes": mem * MB, "soft_bytes": soft_mb * MB, "growth_bytes": growth * MB,
                       "source": source}
    return j


MEM_EVIDENCE = {"memory_units": 16.0, "directive_units": 0.0}


def test_culprit_is_the_job_that_grew_most_against_its_soft_cap():
    jobs = [job("big-flat", mem=400, soft_mb=1000),          # 0.4
            job("grower", mem=150, soft_mb=200, growth=100),  # 1.25
            job("newest-low-prio", prio=0)]                    # no memory known
    j, why = pick_culprit(jobs, MEM_EVIDENCE)
    assert j["job_id"] == "grower" and "SOFT cap" in why
    assert memory_score(j) == pytest.approx(1.25)


def test_a_job_without_pid_or_cgroup_is_never_the_target_on_memory_evidence():
    j, why = pick_culprit([job("nopid", prio=0), job("nopid2")], MEM_EVIDENCE)
    assert j is None and "no job's memory is known" in why
    # the seed's rule picked the lowest-priority newest one: here nobody


def test_an_obedient_job_whose_memory_falls_is_not_a_culprit():
    shrinking = job("obeys", mem=900, soft_mb=100, growth=-200, overdue=0)
    j, why = pick_culprit([shrinking], MEM_EVIDENCE)
    assert j is None
    # the same numbers with directives left overdue: it is
    j, _ = pick_culprit([dict(shrinking, overdue=2)], MEM_EVIDENCE)
    assert j["job_id"] == "obeys"
    # flat and under its SOFT cap: not a culprit either
    assert pick_culprit([job("small", mem=10, soft_mb=100)], MEM_EVIDENCE)[0] is None


def test_ignored_directives_blame_the_job_that_ignored_them():
    jobs = [job("prompt", mem=500, soft_mb=100, growth=50), job("deaf", overdue=3)]
    j, why = pick_culprit(jobs, {"memory_units": 0.0, "directive_units": 3.0})
    assert j["job_id"] == "deaf" and "overdue" in why


def test_evidence_no_job_causes_quarantines_nobody():
    j, why = pick_culprit([job("a", mem=500, soft_mb=100, growth=10)],
                          {"memory_units": 0.0, "directive_units": 0.0})
    assert j is None and "not attributable" in why


def test_job_memory_reads_cgroup_then_pid_and_forgets_ended_jobs():
    reads = {"cg": [100 * MB, 160 * MB], "pid": [50 * MB, 50 * MB, 10 * MB]}
    jm = JobMemory(10.0, read_cgroup=lambda p: reads["cg"].pop(0), read_pid=lambda p, children=True: reads["pid"].pop(0))
    prof = {"mem": {"soft_cap_mb": 200}}
    a = {"job_id": "a", "submitted_at": 1.0, "enforced": True, "cgroup": "/x/a", "pid": 7, "profile": prof}
    b = {"job_id": "b", "submitted_at": 1.0, "pid": 9, "enforced": False, "profile": prof}
    c = {"job_id": "c", "submitted_at": 1.0, "profile": prof}
    out = jm.observe([a, b, c], 0.0)
    # a has both: the larger (the cgroup); b only its pid
    assert out[0]["memory"]["source"] == "cgroup" and out[1]["memory"]["source"] == "proc"
    assert "memory" not in out[2]
    out = jm.observe([a], 1.0)
    assert out[0]["memory"]["growth_bytes"] == 60 * MB and out[0]["memory"]["soft_bytes"] == 200 * MB
    assert set(k[0] for k in jm._hist) == {"a"}            # b ended: forgotten


# ------------------------------------------------- the governor, for real

@dataclass(frozen=True)
class Sample:
    stress: float
    monotonic: float
    timestamp: float
    band: str = "MODERATE"
    model: str = "test"


class CoreGovernor:
    """GovernorUnit's control-loop API over the real governor core (what the
    unit adds is the socket, the ledger and cgroups)."""

    def __init__(self, clock, memory=None, **cfg):
        self.core = Governor(replace(GovernConfig(), **cfg), clock)
        self.clock = clock
        self.memory = memory or {}          # job_id -> bytes, as its cgroup would read

    def feed(self, stress):
        return self.core.on_sample(Sample(stress, self.clock.monotonic(), self.clock.wall()))

    def raise_level(self, reason):
        return self.core.raise_level(reason)

    def allow_early_recovery(self, reason):
        self.core.allow_early_recovery(reason)

    def quarantine(self, job_id, reason):
        return self.core.quarantine(job_id, reason)

    def release_quarantine(self, job_id):
        return self.core.release_quarantine(job_id)

    def overdue_directives_total(self):
        return self.core.overdue_directives_total()

    def stress_view(self):
        return {"stress": self.core.stress, "setpoint": self.core.cfg.setpoint}

    def jobs(self):
        out = self.core.jobs_list()
        for j in out:
            if j["job_id"] in self.memory:
                j.update(enforced=True, cgroup=j["job_id"])
        return out


class Counters:
    def __init__(self):
        self.c = {"critical_samples": 0, "oom_kills": 0, "thermal_breaches": 0,
                  "throttle_events": 0, "source_failures": 0}

    def anomaly_counters(self):
        return dict(self.c)


def rig(**settings):
    clock = ManualClock()
    gov = CoreGovernor(clock)
    ledger = Ledger.memory(clock=clock)
    sensing = Counters()
    s = Settings(**{"t1": 0.2375, "summary_interval_s": 60.0, **settings})
    loop = VenomLoop(s, clock, sensing=sensing, governor=gov, recorder=ledger)
    loop.actuator.memory.read_cgroup = lambda path: gov.memory.get(path)
    return clock, gov, ledger, sensing, loop


def beats(loop, clock, gov, n, stress, crit_per_beat=0, sensing=None, grow=None):
    async def go():
        out = []
        for _ in range(n):
            clock.advance(1.0)
            gov.feed(stress)
            if crit_per_beat:
                sensing.c["critical_samples"] += crit_per_beat
            if grow:
                for k, v in grow.items():
                    gov.memory[k] += v
            out.append(await loop.step(loop.timer.fired(clock.monotonic())))
        return out
    return asyncio.run(go())


def entries(ledger, kind=None):
    n = ledger.manifest()["chain_length"]
    return [e["data"] for e in ledger.entries(0, n) if kind is None or e["data"].get("type") == kind]


def test_quarantine_picks_the_grower_ends_by_itself_and_can_happen_again():
    clock, gov, ledger, sensing, loop = rig(release_hold_s=20.0)
    gov.core.submit("bystander", "MEM[SOFT=100,HARD=200,VOL=LOW]; PRIORITY=0", {})   # no pid, lowest prio
    gov.core.submit("grower", P5, {}, pid=4242)
    gov.memory["grower"] = 50 * MB
    # sustained CRITICAL while the grower grows 40 MiB a second
    out = beats(loop, clock, gov, 10, 0.97, crit_per_beat=50, sensing=sensing, grow={"grower": 40 * MB})
    q = [d for d in out if d["action"] == "QUARANTINE"]
    assert q and q[0]["effect"]["applied"] is True and q[0]["effect"]["job_id"] == "grower"
    assert q[0]["effect"]["job_memory"]["source"] == "cgroup"
    assert gov.core.jobs["grower"].quarantined and not gov.core.jobs["bystander"].quarantined
    assert loop.status()["quarantined"] == ["grower"]
    # stress falls below the setpoint: the quarantine is lifted after release_hold_s, by itself
    out = beats(loop, clock, gov, 15, 0.3, grow={"grower": -1 * MB})
    assert gov.core.jobs["grower"].quarantined                   # evidence still in the window / hold
    out += beats(loop, clock, gov, 20, 0.3)
    rel = [d for d in out if d.get("released")]
    assert len(rel) == 1 and rel[0]["released"] == ["grower"]
    assert not gov.core.jobs["grower"].quarantined and not gov.core.quarantined
    assert loop.status()["quarantined"] == [] and loop.status()["auto_releases"] == 1
    (rec,) = entries(ledger, "venom.release")
    assert rec["auto"] is True and rec["job_id"] == "grower" and "release_hold_s" in rec["why"]
    assert rec["quarantined_s"] >= 20.0
    # priority 5 is admitted again
    gov.core.submit("second", P5, {})
    gov.core.release("second")
    # released and resubmitted, it can be quarantined again
    gov.core.release("grower")
    gov.core.submit("grower", P5, {}, pid=4242)
    gov.memory["grower"] = 50 * MB
    out = beats(loop, clock, gov, 10, 0.97, crit_per_beat=50, sensing=sensing, grow={"grower": 40 * MB})
    q = [d for d in out if d["action"] == "QUARANTINE" and d["effect"].get("applied")]
    assert q and q[0]["effect"]["job_id"] == "grower"


def test_the_actuator_forgets_jobs_that_end_or_are_released_by_an_admin():
    clock, gov, ledger, sensing, loop = rig(release_hold_s=1000.0)
    gov.core.submit("grower", P5, {}, pid=1)
    gov.memory["grower"] = 50 * MB
    beats(loop, clock, gov, 10, 0.97, crit_per_beat=50, sensing=sensing, grow={"grower": 40 * MB})
    assert loop.status()["quarantined"] == ["grower"]
    gov.core.release("grower")                                   # the job ended
    beats(loop, clock, gov, 1, 0.97)
    assert loop.status()["quarantined"] == []
    gov.core.submit("grower", P5, {}, pid=1)
    gov.memory["grower"] = 50 * MB
    out = beats(loop, clock, gov, 5, 0.97, crit_per_beat=50, sensing=sensing, grow={"grower": 40 * MB})
    assert any(d["effect"].get("job_id") == "grower" for d in out if d["action"] == "QUARANTINE")
    gov.core.release_quarantine("grower")                        # lifted behind the loop's back
    asyncio.run(loop.actuator.observe(clock.monotonic()))      # what the next beat does first
    assert loop.status()["quarantined"] == []


def test_a_cooperating_job_is_not_quarantined():
    """A job that obeys every directive and whose memory falls once told:
    CRITICAL for 3 s (an ALERT at most), no QUARANTINE, priority 5 still admitted."""
    clock, gov, ledger, sensing, loop = rig()
    gov.core.submit("coop", P5, {}, pid=1)
    gov.memory["coop"] = 50 * MB

    def obey():
        j = gov.core.jobs["coop"]
        if j.version > j.acked:
            gov.core.ack("coop", j.version)
    out = []
    for i in range(3):                       # a ramp: grows, CRITICAL, directives
        out += beats(loop, clock, gov, 1, 0.97, crit_per_beat=50, sensing=sensing, grow={"coop": 60 * MB})
        obey()
    for i in range(30):                      # it shrank as told; stress falls
        out += beats(loop, clock, gov, 1, 0.5, grow={"coop": -5 * MB})
        obey()
    assert "QUARANTINE" not in [d["action"] for d in out]
    assert not gov.core.jobs["coop"].quarantined
    gov.core.submit("p5", P5, {})            # not refused (-32009)


# ------------------------------------------------ APPLY_BALANCE over a day

BALANCE = dict(t_threshold=1.0, genome=Genome.normalised(0.2, 0.6, 0.1, 0.1))


@pytest.mark.slow
def test_apply_balance_over_a_simulated_day_stays_bounded():
    """The genome of test_venom_daemon's APPLY_BALANCE test fires every beat.
    Idle (stress 0.1) for a day: no notch is ever added (stress below the
    setpoint), the level stays 0, and the ledger gets one entry for the first
    APPLY_BALANCE beat plus one summary a minute: ≤ 1,440 + 2 entries a day
    (the seed: 86,400 entries and 86,400 notches)."""
    clock, gov, ledger, sensing, loop = rig(**BALANCE)
    gov.core.submit("j", P5, {})
    levels = []
    chain0 = ledger.manifest()["chain_length"]
    size0 = ledger.store.size
    for hour in range(24):
        out = beats(loop, clock, gov, 3600, 0.1)
        levels.append(gov.core.level.value)
        assert gov.core.level.notches == 0
    assert all(d["action"] == "APPLY_BALANCE" for d in out)
    assert max(levels) == 0.0 and gov.core.jobs["j"].active_steps == ()
    grown = ledger.manifest()["chain_length"] - chain0
    assert grown <= 1440 + 2, grown
    assert ledger.store.size - size0 < 3 * 1024 * 1024
    sums = entries(ledger, "venom.summary")
    assert sums[-1]["coalesced"] == {"APPLY_BALANCE": 60}
    assert loop.status()["coalesced"] >= 86400 - 2


def test_notches_decay_below_setpoint_even_while_the_loop_keeps_asking():
    clock, gov, ledger, sensing, loop = rig(**BALANCE)
    gov.core.cfg = replace(gov.core.cfg, hold_s=5.0)
    gov.core.level.cfg = gov.core.cfg
    gov.core.submit("j", P5, {})
    beats(loop, clock, gov, 20, 0.7)             # above the setpoint: notches are added (capped)
    n_hot = gov.core.level.notches
    assert 1 <= n_hot <= gov.core.level.max_notches
    beats(loop, clock, gov, 5 * n_hot + 10, 0.2)   # below setpoint - hysteresis, APPLY_BALANCE every beat
    assert gov.core.level.notches == 0
    assert gov.core.raise_level("x")["added"] is False
