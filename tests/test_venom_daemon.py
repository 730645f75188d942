"""The loop inside the real daemon, over its socket: status, pushed
decisions, a model loaded with venom.set_model turning into a real
QUARANTINE of a real job (and an admin release), APPLY_BALANCE raising the
governor's level, every action in the verified ledger; bad input refused
with a clear error."""
import json
import os
import subprocess
import sys
import time

import pytest

from aal_core.client import Client, RpcCallError
from aal_core.errors import CONFLICT, INVALID_PARAMS, NOT_FOUND, QUARANTINED
from aal_core.venom.entropy import dump_model
from helpers import short_tmpdir, wait_for

# 0.1 s beats keep the tests short.
FAST = """
[venom]
t1 = 0.02375
summary_interval_s = 1.0
"""


def ledger_data(d, kind=None):
    n = d.call("ledger.manifest")["chain_length"]
    out = []
    for start in range(0, n, 1000):
        out += d.call("ledger.get", {"start": start, "end": min(n, start + 1000)})["entries"]
    return [e["data"] for e in out if kind is None or e["data"].get("type") == kind]


def write_model(path, weight, bias):
    with open(path, "wb") as fh:
        fh.write(dump_model(weight, bias))
    return str(path)


def test_status_beats_and_ledger_summaries(daemon_factory):
    d = daemon_factory(config=FAST)
    st = wait_for(lambda: (s := d.call("venom.status"))["beats"] >= 15 and s)
    assert st["enabled"] and st["running"]
    assert st["t_lambda"] == pytest.approx(0.1)
    assert st["ledger_verified"] is True
    assert set(st["genome"]) == {"r", "b", "e", "o"}
    assert sum(st["genome"].values()) == pytest.approx(1.0)
    assert st["last_action"] == "NOOP" and st["last"]["beat"] >= 15
    assert st["pid"]["setpoint"] == 0.02 and st["pid"]["updates"] >= 15
    assert st["pid_stable"] is False            # T_Λ is constant: V never decreases
    sums = wait_for(lambda: ledger_data(d, "venom.summary"))
    assert sums[0]["beats"] >= 5 and len(sums[0]["merkle_root"]) == 64
    assert "venom" in d.call("system.status")["summary"]
    assert d.stop() == 0
    assert "logger=venom event=stopped" in d.log()


def test_subscribe_pushes_decisions(daemon_factory):
    d = daemon_factory(config=FAST)
    with Client(d.socket, timeout=10) as c:
        it = c.subscribe("venom", {"include_noop": True})
        notes = [next(it) for _ in range(3)]
    beats = [n["data"]["beat"] for n in notes]
    assert beats == sorted(beats) and len(set(beats)) == 3
    assert all(n["data"]["action"] == "NOOP" and "decision" in n["data"] for n in notes)
    with pytest.raises(RpcCallError) as ei:
        d.call("venom.subscribe", {"actions": ["EXPLODE"]})
    assert ei.value.code == INVALID_PARAMS and "EXPLODE" in ei.value.message


def test_a_model_alone_quarantines_nobody(daemon_factory, tmp_path):
    """A hot model with no evidence: the rule says QUARANTINE, but nothing a
    job did is behind it, so no job is quarantined (the seed picked the job
    the governor would shed first) and priority 5 is still admitted."""
    d = daemon_factory(config=FAST)
    with Client(d.socket, timeout=10) as owner:
        owner.call("job.submit", {"job_id": "bystander", "profile": "BALANCED"})
        with Client(d.socket, timeout=10) as watcher:
            it = watcher.subscribe("venom")
            # σ(0.12·0 + 2) = 0.88 ≥ 0.85: QUARANTINE from the next beat on
            d.call("venom.set_model", {"path": write_model(tmp_path / "hot.json", 0.12, 2.0)})
            note = next(it)["data"]
            assert note["action"] == "QUARANTINE" and "ledger_index" in note
            assert note["effect"]["applied"] is False
            assert note["effect"]["why"] == "the evidence is not attributable to a job"
            more = [next(it)["data"] for _ in range(3)]
        assert all(m["action"] == "QUARANTINE" and m.get("coalesced") for m in more)
        assert owner.call("job.get", {"job_id": "bystander"})["quarantined"] is False
        owner.call("job.submit", {"job_id": "second", "profile": "BALANCED"})   # not refused
    q = [x for x in ledger_data(d, "venom.decision") if x["action"] == "QUARANTINE"]
    assert len(q) == 1                        # the rest coalesced into the summaries


HOG = "b = b'\\x01' * (64 << 20)\nimport sys\nsys.stdin.read()\n"   # 64 MiB touched, then waits


@pytest.fixture
def hog():
    p = subprocess.Popen([sys.executable, "-c", HOG], stdin=subprocess.PIPE)
    time.sleep(0.5)
    yield p
    p.kill()
    p.wait()


def oom_daemon(daemon_factory, extra=""):
    from test_venom_e2e import make_proc
    base = short_tmpdir()
    proc = make_proc(base, oom_kill=100)
    d = daemon_factory("--proc-root", proc, base=base, config=FAST + extra)
    return d, os.path.join(proc, "vmstat")


SOFT32 = "MEM[SOFT=32,HARD=512,VOL=LOW]; PRIORITY=5"


@pytest.mark.root
def test_oom_evidence_quarantines_the_job_using_memory_and_an_admin_releases_it(daemon_factory, hog):
    from test_venom_e2e import next_matching, set_oom_kill
    d, vmstat = oom_daemon(daemon_factory)
    with Client(d.socket, timeout=10) as owner:
        # the seed's pick (lowest priority, newest, no memory known) is the bystander
        owner.call("job.submit", {"job_id": "hog", "profile": SOFT32, "pid": hog.pid})
        assert owner.call("job.get", {"job_id": "hog"})["enforced"] is True
        owner.call("job.submit", {"job_id": "bystander", "profile": "MEM[SOFT=32,HARD=64,VOL=LOW]; PRIORITY=0"})
        with Client(d.socket, timeout=10) as watcher:
            it = watcher.subscribe("venom")
            wait_for(lambda: d.call("venom.status")["beats"] >= 1)      # the loop has its baseline
            set_oom_kill(vmstat, 120)                          # 20 OOM kills: 20 units, σ(2.4) = 0.92
            note = next_matching(it, lambda x: x["action"] == "QUARANTINE")
        assert note["effect"]["applied"] is True and note["effect"]["job_id"] == "hog", note["effect"]
        mem = note["effect"]["job_memory"]
        assert mem["source"] in ("cgroup", "proc") and mem["bytes"] >= 32 << 20 and mem["soft_bytes"] == 32 << 20
        assert note["evidence"]["memory_units"] == 20
        assert owner.call("job.get", {"job_id": "hog"})["quarantined"] is True
        assert owner.call("job.get", {"job_id": "bystander"})["quarantined"] is False
        with pytest.raises(RpcCallError) as ei:
            owner.call("job.submit", {"job_id": "second", "profile": "BALANCED"})
        assert ei.value.code == QUARANTINED
        assert d.call("venom.status")["quarantined"] == ["hog"]
        rel = d.call("venom.release", {"job_id": "hog"})
        assert rel["released"] is True and "ledger_index" in rel
        assert owner.call("job.get", {"job_id": "hog"})["quarantined"] is False
        owner.call("job.submit", {"job_id": "second", "profile": "BALANCED"})
        with pytest.raises(RpcCallError) as ei:
            d.call("venom.release", {"job_id": "hog"})
        assert ei.value.code == CONFLICT
        with pytest.raises(RpcCallError) as ei:
            d.call("venom.release", {"job_id": "nobody"})
        assert ei.value.code == NOT_FOUND
    data = ledger_data(d)
    assert [x for x in data if x.get("type") == "venom.release"][0].get("auto") is None
    q = [x for x in data if x.get("type") == "venom.decision" and x["action"] == "QUARANTINE"
         and x["effect"].get("applied")]
    assert q[0]["effect"]["job_id"] == "hog" and set(q[0]["genome"]) == {"r", "b", "e", "o"}
    v = d.call("ledger.verify"); assert v["valid"] is True, json.dumps(v)


@pytest.mark.root
def test_a_quarantine_ends_by_itself_and_a_resubmitted_job_can_be_quarantined_again(daemon_factory, hog):
    from test_venom_e2e import next_matching, set_oom_kill
    d, vmstat = oom_daemon(daemon_factory, "evidence_window_s = 1.0\nrelease_hold_s = 1.0\n")
    st = d.call("venom.status")
    assert st["release_hold_s"] == 1.0 and st["evidence_window_s"] == 1.0
    with Client(d.socket, timeout=10) as owner, Client(d.socket, timeout=10) as watcher:
        owner.call("job.submit", {"job_id": "hog", "profile": SOFT32, "pid": hog.pid})
        it = watcher.subscribe("venom", {"include_noop": True})
        next(it)                                               # the loop has its baseline
        set_oom_kill(vmstat, 120)
        q = next_matching(it, lambda x: x["action"] == "QUARANTINE")
        assert q["effect"]["job_id"] == "hog"
        # stress is low (the copied meminfo): 1 s of evidence, then 1 s of calm, and it is lifted
        r = next_matching(it, lambda x: x.get("released"))
        assert r["released"] == ["hog"] and r["beat"] - q["beat"] <= 40
        assert owner.call("job.get", {"job_id": "hog"})["quarantined"] is False
        assert d.call("venom.status")["quarantined"] == [] and d.call("venom.status")["auto_releases"] == 1
        owner.call("job.submit", {"job_id": "p5", "profile": "BALANCED"})     # priority 5 admitted
        # released and resubmitted: it can be quarantined again (the seed: "every candidate already quarantined")
        owner.call("job.release", {"job_id": "hog"})
        owner.call("job.submit", {"job_id": "hog", "profile": SOFT32, "pid": hog.pid})
        set_oom_kill(vmstat, 140)
        q2 = next_matching(it, lambda x: x["action"] == "QUARANTINE")
        assert q2["effect"]["applied"] is True and q2["effect"]["job_id"] == "hog"
    (rec, *_) = ledger_data(d, "venom.release")
    assert rec["auto"] is True and rec["job_id"] == "hog" and "release_hold_s" in rec["why"]
    assert d.call("ledger.verify")["valid"] is True


def test_apply_balance_adds_no_notch_below_the_setpoint_and_is_coalesced(daemon_factory):
    # A B-heavy genome and T_threshold = the beat: stability 0.5·0.6 = 0.3 > 0.25,
    # repair 0.4·0.2 = 0.08 < 0.1 → APPLY_BALANCE every beat.  At idle stress
    # (below govern.setpoint) no notch is added and the beats after the first
    # are coalesced into the summaries (the seed: a notch and an entry a beat).
    d = daemon_factory(config=FAST + "t_threshold = 0.1\nweight_r = 0.2\nweight_b = 0.6\n"
                                     "weight_e = 0.1\nweight_o = 0.1\n")
    st = wait_for(lambda: (s := d.call("venom.status"))["actions"]["APPLY_BALANCE"] >= 30 and s, timeout=20)
    assert d.call("govern.status")["notches"] == 0 and d.call("govern.status")["level"] == 0.0
    assert st["coalesced"] >= 25
    dec = [x for x in ledger_data(d, "venom.decision") if x["action"] == "APPLY_BALANCE"]
    assert len(dec) == 1
    assert dec[0]["effect"]["applied"] is False and "below the setpoint" in dec[0]["effect"]["governor"]["why"]
    assert dec[0]["decision"]["stability"] == pytest.approx(0.3)
    sums = wait_for(lambda: [x for x in ledger_data(d, "venom.summary") if x["coalesced"]])
    assert sums[0]["coalesced"]["APPLY_BALANCE"] >= 1
    assert st["genome"]["b"] == pytest.approx(0.6)


def test_apply_optimize_allows_early_recovery(daemon_factory):
    # O dominant and T_Λ below T_threshold (O keeps rising): opt_gain > 0.1.
    d = daemon_factory(config=FAST + "t_threshold = 0.5\nweight_r = 0.02\nweight_b = 0.02\n"
                                     "weight_e = 0.01\nweight_o = 0.95\n")
    # Late beats on a loaded machine are anomalies (ALERT beats in between): allow time.
    wait_for(lambda: d.call("venom.status")["actions"]["APPLY_OPTIMIZE"] >= 2, timeout=30,
             what="two APPLY_OPTIMIZE beats")
    assert "event=early_recovery_allowed" in d.log()
    dec = [x for x in ledger_data(d, "venom.decision") if x["action"] == "APPLY_OPTIMIZE"]
    assert dec and dec[0]["effect"]["applied"] is True and dec[0]["decision"]["opt_gain"] > 0.1


def test_set_model_bad_input_is_refused_and_changes_nothing(daemon_factory, tmp_path):
    d = daemon_factory(config=FAST)
    cases = [
        ({"path": "relative.json"}, "must be absolute"),
        ({"path": str(tmp_path / "missing.json")}, "not found"),
        ({"path": str(tmp_path)}, "is a directory"),
        ({"path": str(tmp_path / "bad.json")}, "not valid JSON"),
        ({}, "missing required param"),
        ({"path": 7}, "path"),
    ]
    (tmp_path / "bad.json").write_text("{nope")
    for params, msg in cases:
        with pytest.raises(RpcCallError) as ei:
            d.call("venom.set_model", params)
        assert ei.value.code == INVALID_PARAMS, params
        assert msg in ei.value.message, (params, ei.value.message)
    st = d.call("venom.status")
    assert st["model"] == {"weight": 0.12, "bias": 0.0, "source": "default"}
    assert not [x for x in ledger_data(d) if x.get("type") == "venom.model"]


def test_model_survives_restart(daemon_factory, tmp_path):
    d = daemon_factory(config=FAST)
    d.call("venom.set_model", {"path": write_model(tmp_path / "m.json", 0.3, -1.5)})
    base = d.base
    assert d.stop() == 0
    d2 = daemon_factory(config=FAST, base=base)
    m = d2.call("venom.status")["model"]
    assert (m["weight"], m["bias"]) == (0.3, -1.5)
    assert m["source"].endswith("venom-model.json") and len(m["sha3"]) == 64


@pytest.mark.parametrize("cfg,msg", [
    ("[venom]\nt1 = 0.0000001\n", "venom"),
    ("[venom]\nk_flows = 1\np_nodes = 1\n", "k·P > 1"),
    ("[venom]\nweight_r = 0\nweight_b = 0\nweight_e = 0\nweight_o = 0\n", "not all be 0"),
    ("[venom]\nrunner = \"gpu\"\n", "venom.runner"),
    ("[venom]\nt1 = \"fast\"\n", "venom.t1"),
    ("[venom]\nsummary_interval_s = 0.01\n", "venom.summary_interval_s"),
])
def test_bad_venom_config_stops_start_with_exit_2(tmp_path, cfg, msg):
    import subprocess
    from helpers import AAL_CORE, short_tmpdir
    base = short_tmpdir()
    path = os.path.join(base, "c.toml")
    with open(path, "w") as fh:
        fh.write(cfg)
    r = subprocess.run([AAL_CORE, "run", "--local", base, "--tegrastats", "off", "--config", path],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, r.stderr
    assert msg in r.stderr


def test_disabled_loop_reports_why(daemon_factory):
    d = daemon_factory(config="[venom]\nenabled = false\n")
    st = d.call("venom.status")
    assert st["running"] is False and st["beats"] == 0 and st["reason"] == "venom.enabled is false"
    assert json.dumps(st)
