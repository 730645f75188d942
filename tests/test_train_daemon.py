"""train.* against a real daemon: registration as a governed job, reports,
commands, field reports, the ledger, bad input, reconnects."""
import time

import pytest

from aal_core import errors as E
from aal_core.client import Client, RpcCallError
from aal_core.client.train import CommandChannel
from aal_core.clock import SYSTEM
from aal_core.config import Config
from aal_core.train.unit import TrainUnit
from aal_core.units import Context

from helpers import cleanup, start_daemon, wait_for
from train_helpers import EAGER, ledger_data

KNOBS = {"micro_batch_size": 64, "grad_accum_steps": 1}


def _state(run="r1", **knobs):
    return {"training_run_id": run, "knobs": {**KNOBS, **knobs}}


@pytest.fixture
def d():
    d = start_daemon(config=EAGER + "reissue_s = 0.5\n")
    yield d
    cleanup(d)


def _commands(c: Client):
    c.call("system.health")          # a round trip: pushes sent before it are read
    out = [n["params"]["command"] for n in c.notifications if n["method"] == "train.command"]
    c.notifications.clear()
    return out


def test_a_run_is_a_governed_job_without_degrade_steps(d):
    with d.client() as c:
        prof = "MEM[SOFT=256,HARD=512,VOL=LOW]; PRIORITY=4; DEGRADE{STEP1:SHRINK_KV(0.5),STEP2:CONTEXT(128)}"
        res = c.call("train.register", {"run_id": "r1", "profile": prof})
        assert res["job_id"] == "r1" and res["reregistered"] is False
        assert res["public_key"] == c.call("system.public_key")["public_key"]
        job = c.call("job.get", {"job_id": "r1"})
        assert "DEGRADE" not in job["profile_text"] and job["active_steps"] == []
        assert job["metadata"]["kind"] == "train" and job["priority"] == 4
        assert [j["job_id"] for j in c.call("job.list")["jobs"]] == ["r1"]
        reg = wait_for(lambda: ledger_data(d, "train.register"), what="train.register ledgered")
        assert reg[0]["run_id"] == "r1" and "DEGRADE" not in reg[0]["profile"]
    # The connection closed: the job is released, the run kept (disconnected).
    wait_for(lambda: d.call("job.list")["jobs"] == [], what="the job released")
    assert d.call("train.list")["runs"][0]["connected"] is False


def test_report_is_answered_by_a_signed_command_and_its_field_report_closes_it(d):
    with d.client() as c:
        c.call("train.register", {"run_id": "r1"})
        sent = _state()
        sent["hardware"] = {"stress": 0.99, "band": "made-up"}       # the daemon's view replaces it
        res = c.call("train.report", {"state": sent})
        assert res["rung"] == 1 and len(res["issued"]) == 1 and res["pending"] == 1
        assert res["hardware"]["band"] != "made-up" and res["hardware"]["model"]
        (cmd,) = _commands(c)
        assert cmd["command_id"] == res["issued"][0] and cmd["training_run_id"] == "r1"
        assert cmd["batch_adjustment"] == {"micro_batch": 32, "grad_accum_steps": 2}
        assert len(bytes.fromhex(cmd["signature"])) == 64
        rep = c.call("train.field_report", {"report": {
            "command_id": cmd["command_id"], "training_run_id": "r1", "outcome": "APPLIED",
            "metrics_before": {"micro_batch": 64}, "metrics_after": {"micro_batch": 32}}})
        assert rep["known"] is True and rep["ledger_index"] > 0
        run = c.call("train.status", {"run_id": "r1"})["runs"][0]
        assert run["pending"] == [] and run["applied"][0]["status"] == "APPLIED"
        assert run["rung_names"] == ["halve_batch_1"]
        # Knobs now as the rung wants: nothing more is sent.
        c.call("train.report", {"state": _state(micro_batch_size=32, grad_accum_steps=2)})
        time.sleep(0.7)
        assert _commands(c) == []
        # An unknown command id is counted apart from the run's own commands.
        c.call("train.field_report", {"report": {"command_id": "never-sent", "training_run_id": "r1",
                                                 "outcome": "FAILED"}})
        fams = {f["name"]: f for f in c.call("system.metrics")["families"]}
        reports = {(s["labels"]["type"], s["labels"]["outcome"]): s["value"]
                   for s in fams["aal_core_train_field_reports_total"]["samples"]}
        assert reports[("batch_adjustment", "APPLIED")] == 1.0 and reports[("unknown", "FAILED")] == 1.0
        assert sum(reports.values()) == 2.0
    ledgered = wait_for(lambda: ledger_data(d, "train.command"), what="the command ledgered")
    assert [e["command"]["command_id"] for e in ledgered] == [cmd["command_id"]]
    assert ledgered[0]["command"]["signature"] == cmd["signature"]
    assert ledger_data(d, "train.field_report")[0]["report"]["outcome"] == "APPLIED"


def test_a_failed_command_is_sent_again_after_reissue_s(d):
    with d.client() as c:
        c.call("train.register", {"run_id": "r1"})
        c.call("train.report", {"state": _state()})
        (cmd,) = _commands(c)
        c.call("train.field_report", {"report": {"command_id": cmd["command_id"], "training_run_id": "r1",
                                                 "outcome": "FAILED", "reason": "out of memory"}})
        # The next stress sample after reissue_s (0.5 s) sends it again, under a new id.
        (again,) = wait_for(lambda: _commands(c), what="the command sent again")
        assert again["command_id"] != cmd["command_id"] and again["batch_adjustment"] == cmd["batch_adjustment"]
        st = c.call("train.status")
        assert st["runs"][0]["applied"][0]["status"] == "FAILED" and st["commands_total"] == 2
        summary = c.call("system.status")["train"]
        assert summary["runs"] == 1 and summary["connected"] == 1 and summary["commands_total"] == 2
        assert summary["field_reports_total"] == 1


@pytest.mark.parametrize("method, params, code, words", [
    ("train.register", {"run_id": "../x"}, E.INVALID_PARAMS, "run_id"),
    ("train.register", {"run_id": "r2", "profile": "MEM[SOFT=1"}, E.INVALID_PARAMS, "line 1"),
    ("train.report", {"state": _state("nobody")}, E.NOT_FOUND, "no training run"),
    ("train.report", {"state": {"training_run_id": "r1", "bogus": 1}}, E.INVALID_PARAMS, "bogus"),
    ("train.report", {"state": _state(micro_batch_size=0)}, E.INVALID_PARAMS, "must be >= 1"),
    ("train.field_report", {"report": {"command_id": "x", "training_run_id": "r1", "outcome": "MAYBE"}},
     E.INVALID_PARAMS, "outcome"),
    ("train.status", {"run_id": "nobody"}, E.NOT_FOUND, "no training run"),
])
def test_bad_input_gets_a_clear_error_and_changes_nothing(d, method, params, code, words):
    with d.client() as c:
        c.call("train.register", {"run_id": "r1"})
        before = c.call("train.status")
        with pytest.raises(RpcCallError) as ei:
            c.call(method, params)
        assert ei.value.code == code and words in ei.value.message
        assert c.call("train.status") == before


def test_a_live_run_cannot_be_registered_twice_a_closed_one_can(d):
    a = d.client()
    a.call("train.register", {"run_id": "r1"})
    with d.client() as b:
        with pytest.raises(RpcCallError) as ei:
            b.call("train.register", {"run_id": "r1"})
        assert ei.value.code == E.CONFLICT
        a.close()
        res = wait_for(lambda: _try_register(b), what="re-registration after the close")
        assert res["reregistered"] is True


def _try_register(c):
    try:
        return c.call("train.register", {"run_id": "r1"})
    except RpcCallError:
        return None


def test_the_client_reconnects_and_registers_again_when_the_daemon_restarts():
    d = start_daemon(config=EAGER)
    ch = CommandChannel("r1", socket_path=d.socket)
    try:
        assert ch.wait_connected(10)
        ch.send_state(_state())
        wait_for(ch.commands, what="a command")
        d.stop()
        wait_for(lambda: not ch.connected.is_set(), what="the loss noticed")
        ch.send_state(_state(micro_batch_size=32, grad_accum_steps=2))   # kept while the daemon is away
        d2 = start_daemon(config=EAGER, base=d.base)
        try:
            wait_for(lambda: ch.registrations == 2, timeout=15, what="registered again")
            run = wait_for(lambda: (d2.call("train.list")["runs"] or [None])[0], what="the run on the new daemon")
            assert run["connected"] is True
            wait_for(lambda: d2.call("train.list")["runs"][0]["knobs"].get("micro_batch_size") == 32,
                     what="the report kept across the restart")
        finally:
            ch.close(flush_s=0)
            cleanup(d2)
    finally:
        ch.close(flush_s=0)
        cleanup(d)


def test_metrics_families_follow_the_exporter_format(tmp_path):
    u = TrainUnit(Context(config=Config(), clock=SYSTEM, hub=None, state_dir=str(tmp_path)))
    fams = {f["name"]: f for f in u.metrics()}
    assert set(fams) == {"aal_core_train_runs", "aal_core_train_commands_total", "aal_core_train_field_reports_total",
                         "aal_core_train_rejections_total", "aal_core_train_commands_expired_total",
                         "aal_core_train_run_rung"}
    for f in fams.values():
        assert f["type"] in ("counter", "gauge") and f["help"]
        assert f["type"] != "counter" or f["name"].endswith("_total")
        assert all(isinstance(s["value"], float) and isinstance(s["labels"], dict) for s in f["samples"])
    reasons = {s["labels"]["reason"] for s in fams["aal_core_train_rejections_total"]["samples"]}
    assert {"BAD_SIGNATURE", "REPLAYED", "STALE", "FUTURE", "WRONG_RUN", "RETIRED_KEY"} <= reasons


@pytest.mark.root
def test_a_run_with_a_pid_gets_the_profiles_cgroup_caps(d):
    import subprocess
    from aal_core.govern.cgroups import CgroupEnforcer
    if CgroupEnforcer("auto").mode == "off":
        pytest.skip("no memory cgroup controller")
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        with d.client() as c:
            res = c.call("train.register", {"run_id": "capped", "pid": sleeper.pid,
                                            "profile": "MEM[SOFT=64,HARD=128,VOL=LOW]"})
            assert res["enforced"] is True and res["cgroup"].endswith("/capped")
            job = c.call("job.get", {"job_id": "capped"})
            assert job["enforced"] is True and job["pid"] == sleeper.pid
        wait_for(lambda: d.call("job.list")["jobs"] == [], what="the job and its cgroup released")
    finally:
        sleeper.kill()
        sleeper.wait()
