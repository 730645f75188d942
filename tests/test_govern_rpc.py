"""profile.* and job.* over the real socket of a real daemon."""
import time

import pytest

from aal_core.client import RpcCallError
from aal_core.client.workload import GovernedJob

pytestmark = pytest.mark.slow


def _err(c, method, params):
    with pytest.raises(RpcCallError) as ei:
        c.call(method, params)
    return ei.value


def test_profiles_and_parse_errors(daemon):
    with daemon.client() as c:
        names = [p["name"] for p in c.call("profile.list")["profiles"]]
        assert names == ["MINIMAL", "BALANCED", "PERFORMANCE"]
        res = c.call("profile.parse", {"text": "MEM[SOFT=1,HARD=2,VOL=LOW];\nKV[CAP=0.5,POLICY=LRU,PURGE=ON_EVENT]"})
        assert res["profile"]["kv"] == {"cap_fraction": 0.5, "policy": "LRU", "purge_on_stress": False,
                                        "purge_on_event": True}
        assert res["profile"]["degrade"] is None and "name" not in res
        e = _err(c, "profile.parse", {"text": "MEM[SOFT=1,HARD=2,VOL=LOW];\n  TIER=WARM"})
        assert e.code == -32602
        assert e.data == {"line": 2, "column": 8, "expected": "LOCAL, EXTENDED or COLD", "found": "WARM"}
        assert "'WARM'" in e.message


def test_submit_get_list_heartbeat_release(daemon):
    with daemon.client() as c:
        job = c.call("job.submit", {"job_id": "j1", "profile": "balanced", "metadata": {"model": "toy"}})
        assert job["admitted"] is True and job["profile_name"] == "BALANCED"
        md = job["metadata"]
        assert md["model"] == "toy" and md["kv_shrink_factor"] == 1.0 and md["disabled_features"] == []
        assert job["enforced"] is False and job["enforce_reason"] == "no pid given"
        assert job["threshold"] == 0.55 and job["mode"] == "progressive"
        assert c.call("job.get", {"job_id": "j1"})["job_id"] == "j1"
        assert [j["job_id"] for j in c.call("job.list")["jobs"]] == ["j1"]
        hb = c.call("job.heartbeat", {"job_id": "j1"})
        assert hb["heartbeat_deadline_s"] == 30.0 and hb["unacked"] == 0
        assert _err(c, "job.submit", {"job_id": "j1", "profile": "MINIMAL"}).code == -32007
        assert _err(c, "job.submit", {"job_id": "a/b", "profile": "MINIMAL"}).code == -32602
        e = _err(c, "job.submit", {"job_id": "j2", "profile": "MEM[SOFT=5,HARD=4,VOL=LOW]"})
        assert e.code == -32602 and e.data["column"] == 17 and e.data["found"] == "4"
        assert _err(c, "job.ack", {"job_id": "j1", "version": 1}).code == -32602   # nothing issued yet
        assert c.call("job.release", {"job_id": "j1"}) == {"job_id": "j1", "released": True}
        for m in ("job.get", "job.heartbeat", "job.release"):
            assert _err(c, m, {"job_id": "j1"}).code == -32004
        assert c.call("job.list")["jobs"] == []
        st = c.call("govern.status")
        assert st["jobs"] == 0 and st["setpoint"] == 0.6 and st["pid"]["kp"] == 0.6


def test_submit_bad_metadata_or_pid_is_refused_and_registers_nothing(daemon):
    with daemon.client() as c:
        for md in ("x", [1, 2], 3):
            e = _err(c, "job.submit", {"job_id": "m", "profile": "MINIMAL", "metadata": md})
            assert e.code == -32602 and "metadata must be an object" in e.message, e.message
        e = _err(c, "job.submit", {"job_id": "m", "profile": "MINIMAL", "pid": 1})
        assert e.code == -32602 and "init" in e.message
        e = _err(c, "job.submit", {"job_id": "m", "profile": "MINIMAL", "pid": daemon.proc.pid})
        assert e.code == -32602 and "aal-core itself" in e.message
        assert c.call("job.list")["jobs"] == []
        ok = c.call("job.submit", {"job_id": "m", "profile": "MINIMAL", "metadata": {"a": {"b": [1, 2]}}})
        assert ok["metadata"]["a"] == {"b": [1, 2]}


def test_connection_close_releases_the_job(daemon):
    with daemon.client() as c:
        c.call("job.submit", {"job_id": "gone", "profile": "MINIMAL"})
    with daemon.client() as c:
        deadline = time.monotonic() + 5
        while c.call("job.list")["jobs"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert c.call("job.list")["jobs"] == []
    assert "why=\"connection closed\"" in daemon.log()


def test_stopped_heartbeats_release_the_job(daemon_factory):
    d = daemon_factory(config="[govern]\nheartbeat_timeout_s = 0.4\n")
    with d.client() as c:
        c.call("job.submit", {"job_id": "hb", "profile": "MINIMAL"})
        for _ in range(6):                    # alive while it beats
            time.sleep(0.15)
            c.call("job.heartbeat", {"job_id": "hb"})
        assert c.call("job.get", {"job_id": "hb"})["job_id"] == "hb"
        time.sleep(1.5)                       # then silence
        assert _err(c, "job.get", {"job_id": "hb"}).code == -32004
    assert "heartbeats stopped" in d.log()


def test_seed_mode_from_config(daemon_factory):
    d = daemon_factory(config='[govern]\nmode = "seed"\n')
    with d.client() as c:
        assert c.call("job.submit", {"job_id": "s", "profile": "MINIMAL"})["mode"] == "seed"
        assert c.call("govern.status")["mode"] == "seed"


def test_bad_config_is_refused(tmp_path):
    from helpers import AAL_CORE
    import subprocess
    cfg = tmp_path / "c.toml"
    cfg.write_text("[govern]\nhold_s = -1\n")
    out = subprocess.run([AAL_CORE, "run", "--local", str(tmp_path), "--config", str(cfg)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "govern.hold_s" in out.stderr


def test_governed_job_helper_registers_and_releases(daemon):
    job = GovernedJob("helper", "PERFORMANCE", metadata={"k": 1}, socket_path=daemon.socket, heartbeat_s=0.1)
    info = job.start()
    assert info["admitted"] is True and job.metadata["k"] == 1
    time.sleep(0.35)
    assert daemon.call("job.get", {"job_id": "helper"})["heartbeat_deadline_s"] > 29.0
    job.close()
    assert daemon.call("job.list")["jobs"] == []
