"""The loop on a manual clock with a real ledger (in memory or on disk):
NOOP beats are summarised once a minute with the Merkle root, beats with an
action get their own entries, late beats are measured on the monotonic
clock, a failing ledger does not stop the loop, and an idle day stays far
under 10 MB."""
import asyncio
import json

import pytest

from aal_core.clock import ManualClock
from aal_core.errors import LedgerError
from aal_core.venom.engine import Settings, VenomLoop
from aal_core.venom.genome import Genome

from aal_core.ledger import Ledger


class Counters:
    """Sensing's anomaly_counters() contract: monotonically increasing counts."""

    def __init__(self):
        self.c = {"critical_samples": 0, "oom_kills": 0, "thermal_breaches": 0,
                  "throttle_events": 0, "source_failures": 0}

    def anomaly_counters(self):
        return dict(self.c)


def run_beats(loop: VenomLoop, clock: ManualClock, n: int, period: float = 1.0, late: float = 0.0):
    async def go():
        out = []
        for _ in range(n):
            clock.advance(period + late)
            out.append(await loop.step(loop.timer.fired(clock.monotonic())))
        return out
    return asyncio.run(go())


def make(clock, **kw):
    settings = Settings(t1=0.2375, t_threshold=0.02, summary_interval_s=60.0, **kw)
    ledger = Ledger.memory(clock=clock)
    sensing = Counters()
    pushed = []
    loop = VenomLoop(settings, clock, sensing=sensing, recorder=ledger, publish=pushed.append)
    return loop, ledger, sensing, pushed


def data_entries(ledger, kind):
    n = ledger.manifest()["chain_length"]
    return [e for e in ledger.entries(0, n) if e["data"].get("type") == kind]


def test_idle_minutes_are_one_summary_each_with_merkle_root():
    clock = ManualClock()
    loop, ledger, _, pushed = make(clock)
    run_beats(loop, clock, 600)                  # ten minutes of 1 s beats
    sums = data_entries(ledger, "venom.summary")
    assert len(sums) == 10
    assert data_entries(ledger, "venom.decision") == []
    assert ledger.manifest()["chain_length"] == 11       # genesis + 10
    for i, e in enumerate(sums):
        d = e["data"]
        assert d["beats"] == 60 and d["actions"] == {"NOOP": 60}
        assert d["noop_anomaly_hist"] == {"0": 60}
        assert d["chain_length"] == i + 1                # the chain as it was before this entry
        assert len(d["merkle_root"]) == 64
    # the root recorded in summary k is the root of the first k+1 entries
    assert sums[3]["data"]["merkle_root"] == ledger.root(4).hex()
    assert len(pushed) == 600 and all(p["action"] == "NOOP" for p in pushed)
    st = loop.status()
    assert st["beats"] == 600 and st["actions"]["NOOP"] == 600 and st["ledger_entries"] == 10


def test_idle_day_stays_under_10_mb():
    clock = ManualClock()
    loop, ledger, _, _ = make(clock)
    run_beats(loop, clock, 1800)
    before = ledger.store.size
    run_beats(loop, clock, 3600)                 # one hour
    per_hour = ledger.store.size - before
    per_day = per_hour * 24
    assert per_day < 10 * 1024 * 1024
    # and it is the summaries that make it small: ~1,440 entries a day, not 86,400
    assert per_day < 3 * 1024 * 1024, per_day


def test_anomalous_beats_are_recorded_with_vector_and_genome():
    clock = ManualClock()
    loop, ledger, sensing, pushed = make(clock, evidence_window_s=1.0)   # evidence of this beat only
    run_beats(loop, clock, 2)
    sensing.c["critical_samples"] += 5                  # a CRITICAL second (2 units) + 3 kills: σ(0.6) → ALERT
    sensing.c["oom_kills"] += 3
    d = run_beats(loop, clock, 1)[0]
    assert d["action"] == "ALERT"
    assert d["anomalies"]["critical_samples"] == 5 and d["anomalies"]["oom_kills"] == 3
    assert d["anomalies"]["total"] == 8
    assert d["evidence"]["value"] == 5.0 and d["evidence"]["critical_s"] == 1.0
    assert d["effect"] == {"alert": True}
    rec = data_entries(ledger, "venom.decision")
    assert len(rec) == 1
    body = rec[0]["data"]
    assert body["decision"]["raw_threat"] == pytest.approx(1 / (1 + 2.718281828459045 ** -0.6))
    assert set(body["genome"]) == {"r", "b", "e", "o"}
    assert rec[0]["index"] == d["ledger_index"] and rec[0]["hash"] == d["ledger_hash"]
    sensing.c["oom_kills"] += 20                        # ≥ 15 units → QUARANTINE, no governor here
    d = run_beats(loop, clock, 1)[0]
    assert d["action"] == "QUARANTINE"
    assert d["effect"]["applied"] is False and "no governor" in d["effect"]["why"]
    d = run_beats(loop, clock, 1)[0]
    assert d["action"] == "NOOP" and d["anomalies"]["total"] == 0
    loop_status = loop.status()
    assert loop_status["actions"]["ALERT"] == 1 and loop_status["actions"]["QUARANTINE"] == 1
    assert loop_status["anomalies"]["critical_samples"] == 5 and loop_status["anomalies"]["oom_kills"] == 23


def test_identical_action_beats_are_coalesced_into_the_summary():
    clock = ManualClock()
    loop, ledger, sensing, pushed = make(clock)          # 10 s evidence window
    run_beats(loop, clock, 1)
    sensing.c["oom_kills"] += 6                          # 6 units for the next 10 beats: ALERT each
    out = run_beats(loop, clock, 12)
    assert [d["action"] for d in out] == ["ALERT"] * 10 + ["NOOP"] * 2
    assert "ledger_index" in out[0] and all(d.get("coalesced") for d in out[1:10])
    assert len(data_entries(ledger, "venom.decision")) == 1
    run_beats(loop, clock, 60)
    (s, *_) = [e["data"] for e in data_entries(ledger, "venom.summary")]
    assert s["coalesced"] == {"ALERT": 9} and s["coalesced_anomalies"] == {}
    assert s["actions"]["ALERT"] == 10
    assert loop.status()["coalesced"] == 9
    # a different action starts a new entry; so does the same one after a NOOP
    sensing.c["oom_kills"] += 6
    run_beats(loop, clock, 1)
    assert len(data_entries(ledger, "venom.decision")) == 2


def test_late_and_missed_beats_are_anomalies():
    clock = ManualClock()
    loop, _, _, _ = make(clock)
    d = run_beats(loop, clock, 1, late=0.2)[0]          # 0.2 s late: under half a beat
    assert d["anomalies"]["late_beats"] == 0 and d["lateness_s"] == pytest.approx(0.2)
    d = run_beats(loop, clock, 1, late=0.6)[0]          # deadline was 2.0, fired at 2.8
    assert d["anomalies"]["late_beats"] == 1
    clock.advance(4.0)                                  # a stall: beats missed
    d = asyncio.run(loop.step(loop.timer.fired(clock.monotonic())))
    assert d["anomalies"]["late_beats"] >= 3
    assert loop.status()["max_lateness_s"] >= 3.0


class BrokenLedger:
    """A ledger whose disk is gone: every append fails as the real one does."""

    verified = True

    def __init__(self, inner):
        self.inner = inner

    def append(self, data):
        raise LedgerError("ledger append failed: No space left on device")

    def manifest(self):
        return self.inner.manifest()


def test_ledger_failure_is_counted_and_the_loop_goes_on(caplog):
    clock = ManualClock()
    settings = Settings(t1=0.2375, summary_interval_s=60.0)
    sensing = Counters()
    loop = VenomLoop(settings, clock, sensing=sensing, recorder=BrokenLedger(Ledger.memory(clock=clock)))
    run_beats(loop, clock, 1)
    sensing.c["oom_kills"] += 6
    d = run_beats(loop, clock, 1)[0]
    assert d["action"] == "ALERT" and "ledger_index" not in d
    run_beats(loop, clock, 60)
    st = loop.status()
    assert st["ledger_failures"] == 2 and st["beats"] == 62


def test_set_model_changes_threat_next_beat():
    from aal_core.venom.entropy import EntropyParams
    clock = ManualClock()
    loop, _, sensing, _ = make(clock)
    run_beats(loop, clock, 1)
    loop.set_model(EntropyParams(2.0, -3.0, source="test"))
    sensing.c["oom_kills"] += 1                        # σ(2 − 3) = 0.269: NOOP
    assert run_beats(loop, clock, 1)[0]["action"] == "NOOP"
    sensing.c["oom_kills"] += 3                        # σ(6 − 3) = 0.953: QUARANTINE
    d = run_beats(loop, clock, 1)[0]
    assert d["action"] == "QUARANTINE" and d["model"] == {"weight": 2.0, "bias": -3.0}


def test_flush_writes_partial_window_and_nothing_when_empty():
    clock = ManualClock()
    loop, ledger, _, _ = make(clock)
    run_beats(loop, clock, 5)
    e = asyncio.run(loop.flush())
    assert e["beats"] == 5 and e["ledger_index"] == 1
    assert asyncio.run(loop.flush()) is None


def test_balance_genome_through_the_loop():
    clock = ManualClock()
    settings = Settings(t1=0.2375, t_threshold=1.0, genome=Genome.normalised(0.30, 0.55, 0.05, 0.10))
    sensing = Counters()
    loop = VenomLoop(settings, clock, sensing=sensing, recorder=Ledger.memory(clock=clock))
    assert [d["action"] for d in run_beats(loop, clock, 3)] == ["NOOP"] * 3
    sensing.c["thermal_breaches"] += 2
    d = run_beats(loop, clock, 1)[0]
    assert d["action"] == "APPLY_BALANCE"
    assert d["effect"] == {"applied": False, "why": "no governor (standalone loop)"}
    json.dumps(d)                                         # everything recorded is JSON
