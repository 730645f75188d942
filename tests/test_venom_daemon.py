"""The loop inside the real daemon, over its socket: status, pushed
decisions, a model loaded with venom.set_model turning into a real
QUARANTINE of a real job (and an admin release), APPLY_BALANCE raising the
governor's level, every action in the verified ledger; bad input refused
with a clear error."""
import json
import os

import pytest

from aal_core.client import Client, RpcCallError
from aal_core.errors import CONFLICT, INVALID_PARAMS, NOT_FOUND, QUARANTINED
from aal_core.venom.entropy import dump_model
from helpers import wait_for

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


def test_model_drives_quarantine_of_a_real_job_and_admin_release(daemon_factory, tmp_path):
    d = daemon_factory(config=FAST)
    with Client(d.socket, timeout=10) as owner:
        owner.call("job.submit", {"job_id": "hog", "profile": "BALANCED"})
        prio = owner.call("job.get", {"job_id": "hog"})["priority"]
        with Client(d.socket, timeout=10) as watcher:
            it = watcher.subscribe("venom")                     # default: every action but NOOP
            # σ(0.12·0 + 2) = 0.88 ≥ 0.85: QUARANTINE from the next beat on
            res = d.call("venom.set_model", {"path": write_model(tmp_path / "hot.json", 0.12, 2.0)})
            assert res["model"]["bias"] == 2.0 and res["previous"]["bias"] == 0.0
            note = next(it)["data"]
        assert note["action"] == "QUARANTINE"
        assert note["effect"]["applied"] is True and note["effect"]["job_id"] == "hog"
        assert note["decision"]["raw_threat"] == pytest.approx(1 / (1 + 2.718281828459045 ** -2.0))
        assert "ledger_index" in note
        job = owner.call("job.get", {"job_id": "hog"})
        assert job["quarantined"] is True
        # no new admissions at its priority
        with pytest.raises(RpcCallError) as ei:
            owner.call("job.submit", {"job_id": "second", "profile": "BALANCED"})
        assert ei.value.code == QUARANTINED
        assert d.call("venom.status")["quarantined"] == ["hog"]
        # calm the model, then lift the quarantine (admin)
        d.call("venom.set_model", {"path": write_model(tmp_path / "calm.json", 0.12, 0.0)})
        rel = d.call("venom.release", {"job_id": "hog"})
        assert rel["released"] is True and "ledger_index" in rel
        assert owner.call("job.get", {"job_id": "hog"})["quarantined"] is False
        assert d.call("venom.status")["quarantined"] == []
        owner.call("job.submit", {"job_id": "second", "profile": "BALANCED"})
        assert owner.call("job.get", {"job_id": "second"})["priority"] == prio
        # releasing again: the governor says it is not quarantined
        with pytest.raises(RpcCallError) as ei:
            d.call("venom.release", {"job_id": "hog"})
        assert ei.value.code == CONFLICT
        with pytest.raises(RpcCallError) as ei:
            d.call("venom.release", {"job_id": "nobody"})
        assert ei.value.code == NOT_FOUND
    # all of it is in the ledger, which verifies
    data = ledger_data(d)
    kinds = [x.get("type") for x in data]
    assert kinds.count("venom.model") == 2 and "venom.release" in kinds
    q = [x for x in data if x.get("type") == "venom.decision" and x["action"] == "QUARANTINE"]
    assert q[0]["effect"]["job_id"] == "hog" and set(q[0]["genome"]) == {"r", "b", "e", "o"}
    v = d.call("ledger.verify"); assert v["valid"] is True, json.dumps(v)


def test_apply_balance_raises_the_governor_level(daemon_factory):
    # A B-heavy genome and T_threshold = the beat: stability 0.5·0.6 = 0.3 > 0.25,
    # repair 0.4·0.2 = 0.08 < 0.1 → APPLY_BALANCE every beat.
    d = daemon_factory(config=FAST + "t_threshold = 0.1\nweight_r = 0.2\nweight_b = 0.6\n"
                                     "weight_e = 0.1\nweight_o = 0.1\n")
    before = d.call("govern.status")
    st = wait_for(lambda: (s := d.call("venom.status"))["actions"]["APPLY_BALANCE"] >= 3 and s)
    after = d.call("govern.status")
    assert after["notches"] > before["notches"]
    dec = wait_for(lambda: [x for x in ledger_data(d, "venom.decision") if x["action"] == "APPLY_BALANCE"])
    assert dec[0]["effect"]["applied"] is True
    assert dec[0]["decision"]["stability"] == pytest.approx(0.3)
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
