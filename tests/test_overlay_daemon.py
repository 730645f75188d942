"""The overlay bus against a real daemon: install, governed invoke, provenance
anchored in the ledger, replay, hot swap, and overlays that misbehave.

Real processes, real cgroups (v1 memory here, as root), a real HTTP server
on a Unix socket.  One daemon per module; each test installs what it needs.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

from helpers import AALCTL, cleanup, start_daemon, wait_for

from aal_core import errors as E
from aal_core.client import RpcCallError

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
EXAMPLES = os.path.join(ROOT, "examples", "overlays")
FIXTURES = os.path.join(HERE, "fixtures", "overlays")
CONFIG = "[overlays]\nlog_payload = true\n"


@pytest.fixture(scope="module")
def d():
    daemon = start_daemon(config=CONFIG)
    os.chmod(daemon.base, 0o711)     # overlays run as aal-overlay: they must reach their directory
    for path in (os.path.join(EXAMPLES, "abraxas"), os.path.join(EXAMPLES, "abraxas_exec"),
                 os.path.join(FIXTURES, "misbehave")):
        daemon.call("overlay.install", {"path": path})
    yield daemon
    cleanup(daemon)


def reachable(d):
    """Overlays run as aal-overlay (a root daemon never runs them as root): the
    test's private base directory must let them reach their directory."""
    os.chmod(d.base, 0o711)
    return d


def invoke(d, overlay, cap, phase, payload=None, **kw):
    params = {"overlay": overlay, "capability": cap, "phase": phase, "payload": payload or {}}
    params.update(kw)
    with d.client(timeout=60) as c:
        return c.call("overlay.invoke", params)


def aalctl(d, *args, timeout=60):
    return subprocess.run([AALCTL, "--socket", d.socket, *args], capture_output=True, text=True,
                          timeout=timeout)


def assert_consistent(d):
    v = d.call("provenance.verify")
    assert v["ok"], v
    assert v["records"] == v["anchored"]
    return v


# ------------------------------------------------------------- end to end

def test_invoke_end_to_end_with_provenance_anchored_in_the_ledger(d):
    r = invoke(d, "abraxas", "scan", "OPEN", {"text": "the cat and the hat"}, seed=7)
    assert r["ok"], r
    assert r["result"]["words"] == 5 and r["result"]["top"][0] == ["the", 2]
    assert r["version"] == "1.0.0" and r["phase"] == "OPEN"
    rec = d.call("provenance.get", {"run_id": r["run_id"]})["record"]
    assert rec["seq"] == r["provenance_index"]
    assert rec["outcome"] == "ok" and rec["result_hash"] == r["result_hash"]
    assert rec["payload"] == {"text": "the cat and the hat"}      # log_payload = true
    assert rec["env"]["aal_core"] and rec["env"]["python"]
    assert rec["cgroup"]["enforced"] is True and rec["cgroup"]["hard_bytes"] == 128 << 20
    assert "kv_shrink_factor" in rec["degradation"] and rec["degradation"]["max_fraction"] == 0.5
    assert_consistent(d)          # waits for the anchors in flight
    n = d.call("ledger.manifest")["chain_length"]
    entries = d.call("ledger.get", {"start": max(0, n - 50), "end": n})["entries"]
    mine = [e["data"] for e in entries if e["data"].get("type") == "overlay.provenance"
            and e["data"].get("seq") == r["provenance_index"]]
    assert mine and mine[0]["run_id"] == r["run_id"] and len(mine[0]["record_hash"]) == 64


def test_seeded_run_id_is_deterministic_and_unseeded_is_unique(d):
    a = invoke(d, "abraxas", "seal", "SEAL", {"text": "x y"}, seed="s1")
    b = invoke(d, "abraxas", "seal", "SEAL", {"text": "x y"}, seed="s1")
    c = invoke(d, "abraxas", "seal", "SEAL", {"text": "x y"})
    e = invoke(d, "abraxas", "seal", "SEAL", {"text": "x y"})
    assert a["run_id"] == b["run_id"] and a["result_hash"] == b["result_hash"]
    assert len({a["run_id"], c["run_id"], e["run_id"]}) == 3
    got = d.call("provenance.get", {"run_id": a["run_id"]})
    assert got["same_run_id"] == 2 and got["index"] == a["provenance_index"]


def test_request_carries_degradation_and_a_clean_environment(d):
    os.environ["AAL_TEST_SECRET"] = "x"      # not inherited: the daemon's env is not passed on either
    r = invoke(d, "misbehave", "run", "OPEN", {"mode": "ok"})
    assert r["ok"], r
    out = r["result"]
    assert out["uid"] != 0                       # never root (sandbox.py: overlays.user)
    assert out["run_id"] == r["run_id"]
    assert {"kv_shrink_factor", "max_context_tokens", "disabled_features"} <= set(out["degradation"])
    assert set(out["env"]) <= {"PATH", "LANG", "LC_ALL", "HOME", "TMPDIR", "PYTHONDONTWRITEBYTECODE",
                               "AAL_OVERLAY_RUN_ID", "AAL_OVERLAY_PHASE", "AAL_OVERLAY_CAPABILITY",
                               "LC_CTYPE", "PWD", "SHLVL", "_"}


def test_the_call_is_a_governed_job_while_it_runs(d):
    seen = {}

    def run():
        seen["r"] = invoke(d, "slowver", "run", "OPEN", {"sleep": 1.0})
    d.call("overlay.install", {"path": os.path.join(FIXTURES, "slowver")})
    t = threading.Thread(target=run)
    t.start()
    jobs = wait_for(lambda: [j for j in d.call("job.list")["jobs"] if j["job_id"].startswith("overlay-")],
                    what="the overlay's job")
    assert jobs[0]["metadata"]["overlay"] == "slowver"
    cg = jobs[0]["cgroup"]
    assert jobs[0]["enforced"] is True
    with open(os.path.join(cg, "cgroup.procs")) as fh:
        assert fh.read().split()                   # the overlay's process is in it
    limit = "memory.limit_in_bytes" if os.path.exists(os.path.join(cg, "memory.limit_in_bytes")) else "memory.max"
    with open(os.path.join(cg, limit)) as fh:
        assert int(fh.read()) == 128 << 20         # its profile's HARD cap
    t.join(30)
    assert seen["r"]["ok"]
    assert not [j for j in d.call("job.list")["jobs"] if j["job_id"] == jobs[0]["job_id"]]
    with open(os.path.join(cg, "cgroup.procs")) as fh:
        assert fh.read().split() == []             # emptied, kept for the next call (CgroupPool)


def test_admission_refused_is_an_ok_false_result_with_a_record(daemon_factory):
    # refuse_stress 0: any stress refuses priority <= 3, as job.submit is refused.
    d2 = reachable(daemon_factory(config="[govern]\nrefuse_stress = 0.0\n"))
    d2.call("overlay.install", {"path": os.path.join(EXAMPLES, "abraxas")})
    wait_for(lambda: "last_stress" in d2.call("govern.status"), what="a stress sample")
    r = invoke(d2, "abraxas", "scan", "OPEN", {}, profile="MEM[SOFT=64,HARD=128,VOL=LOW]; PRIORITY=2")
    assert not r["ok"] and r["error"]["code"] == E.ADMISSION_REFUSED, r
    rec = d2.call("provenance.get", {"run_id": r["run_id"]})["record"]
    assert rec["outcome"] == "admission_refused" and "cgroup" not in rec
    # The capability's default profile (priority 5) is admitted.
    assert invoke(d2, "abraxas", "scan", "OPEN", {})["ok"]
    assert d2.call("provenance.verify")["ok"]


# ------------------------------------------------------------- phases

def test_undeclared_phase_and_class_rules_are_refused_before_anything_runs(d):
    r = invoke(d, "abraxas", "scan", "ASCEND")
    assert not r["ok"] and r["error"]["code"] == E.OVERLAY_PHASE_REFUSED
    assert "does not declare phase ASCEND" in r["error"]["message"]
    r = invoke(d, "abraxas_exec", "scan", "ASCEND")
    assert r["error"]["code"] == E.OVERLAY_PHASE_REFUSED and "class exec" in r["error"]["message"]
    r = invoke(d, "abraxas_exec", "apply", "CLEAR")
    assert r["error"]["code"] == E.OVERLAY_PHASE_REFUSED and "class analysis" in r["error"]["message"]
    r = invoke(d, "abraxas", "align", "OPEN")
    assert r["error"]["code"] == E.OVERLAY_PHASE_REFUSED and "does not run in OPEN" in r["error"]["message"]
    rec = d.call("provenance.get", {"run_id": r["run_id"]})["record"]
    assert rec["outcome"] == "phase_refused" and "confinement" not in rec
    r = invoke(d, "abraxas_exec", "apply", "ASCEND", {"text": "hello"})
    assert r["ok"], r
    assert r["result"]["written"] == 5
    # CLEAR runs where the kernel can confine it (system.status says which mechanism).
    mech = d.call("system.status")["overlays"]["confinement"]
    r = invoke(d, "abraxas", "scan", "CLEAR", {"text": "read only"})
    if mech.get("clear", "").startswith("refused"):
        assert r["error"]["code"] == E.OVERLAY_CONFINEMENT
    else:
        assert r["ok"], r
        rec = d.call("provenance.get", {"run_id": r["run_id"]})["record"]
        assert rec["confinement"]["read_only"] is True and rec["confinement"]["phase"] == "CLEAR"


def test_unknown_names_and_bad_params_are_jsonrpc_errors(d):
    with pytest.raises(RpcCallError) as ei:
        invoke(d, "nope", "scan", "OPEN")
    assert ei.value.code == E.NOT_FOUND
    with pytest.raises(RpcCallError) as ei:
        invoke(d, "abraxas", "nope", "OPEN")
    assert ei.value.code == E.OVERLAY_UNKNOWN_CAPABILITY and "has: align, scan, seal" in ei.value.message
    with pytest.raises(RpcCallError) as ei:
        invoke(d, "abraxas", "scan", "LATER")
    assert ei.value.code == E.INVALID_PARAMS
    with pytest.raises(RpcCallError) as ei:
        invoke(d, "abraxas", "scan", "OPEN", profile="MEM[SOFT=")
    assert ei.value.code == E.INVALID_PARAMS


# ------------------------------------------------------------- bad overlays

@pytest.mark.parametrize("mode,code,words", [
    ("crash", E.OVERLAY_CRASHED, "signal SIGSEGV"),
    ("exit", E.OVERLAY_CRASHED, "exited with status 3: something went wrong"),
    ("nonjson", E.OVERLAY_BAD_OUTPUT, "stdout is not one JSON object"),
    ("array", E.OVERLAY_BAD_OUTPUT, "not an object"),
    ("huge", E.OVERLAY_BAD_OUTPUT, "stdout over 1048576 bytes"),
])
def test_misbehaving_overlay_gets_a_precise_error_and_the_daemon_keeps_serving(d, mode, code, words):
    r = invoke(d, "misbehave", "run", "OPEN", {"mode": mode})
    assert not r["ok"] and r["error"]["code"] == code, r
    assert words in r["error"]["message"]
    rec = d.call("provenance.get", {"index": r["provenance_index"]})["record"]
    assert rec["error"]["code"] == code
    assert d.call("system.health")["ok"]
    assert_consistent(d)


@pytest.mark.slow
def test_hang_is_killed_at_its_timeout_with_its_process_group(d):
    t0 = time.monotonic()
    r = invoke(d, "misbehave", "run", "OPEN", {"mode": "hang"})
    assert time.monotonic() - t0 < 15
    assert r["error"]["code"] == E.OVERLAY_TIMEOUT and "timed out after 5 s" in r["error"]["message"], r
    assert r["error"]["data"]["signal_name"] == "SIGKILL"


@pytest.mark.parametrize("mode", ["fork", "fork_setsid"])
def test_a_child_that_outlives_the_overlay_is_killed(d, mode):
    r = invoke(d, "misbehave", "run", "OPEN", {"mode": mode})
    assert r["ok"], r
    child = r["result"]["child"]

    def gone():
        try:
            with open(f"/proc/{child}/stat") as fh:
                return fh.read().split(") ")[1][0] in "ZX"   # a zombie until init reaps it
        except FileNotFoundError:
            return True
    wait_for(gone, timeout=5, what=f"child {child} killed")


def test_stderr_flood_is_drained_and_only_its_tail_kept(d):
    r = invoke(d, "misbehave", "run", "OPEN", {"mode": "stderr_flood"})
    assert r["error"]["code"] == E.OVERLAY_CRASHED, r
    data = r["error"]["data"]
    assert data["stderr_bytes"] == (4 << 20) + len("the end")
    assert len(data["stderr_tail"]) == 4096 and data["stderr_tail"].endswith("the end")


@pytest.mark.root
def test_allocating_past_the_hard_cap_is_oom_killed_in_its_cgroup(d):
    r = invoke(d, "misbehave", "run", "OPEN", {"mode": "alloc", "mb": 512},
               profile="MEM[SOFT=32,HARD=64,VOL=LOW]; PRIORITY=5")
    assert not r["ok"], r
    assert r["error"]["code"] == E.OVERLAY_CRASHED
    assert r["error"]["data"].get("oom_killed") is True, r
    assert "HARD cap (64 MiB)" in r["error"]["message"]
    assert d.call("system.health")["ok"]
    # Within its cap it runs.
    assert invoke(d, "misbehave", "run", "OPEN", {"mode": "alloc", "mb": 8},
                  profile="MEM[SOFT=32,HARD=64,VOL=LOW]; PRIORITY=5")["ok"]


def test_payload_over_the_frame_limit_is_refused_and_nothing_is_recorded(d):
    before = d.call("provenance.verify")["records"]
    s = socket.socket(socket.AF_UNIX)
    s.connect(d.socket)
    big = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "overlay.invoke",
                      "params": {"overlay": "abraxas", "capability": "scan", "phase": "OPEN",
                                 "payload": {"text": "x" * (2 << 20)}}}).encode() + b"\n"
    try:
        s.sendall(big)
    except (BrokenPipeError, ConnectionResetError):
        pass
    s.settimeout(10)
    data = b""
    try:
        while b"\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except (ConnectionResetError, socket.timeout):
        pass
    s.close()
    assert json.loads(data.split(b"\n")[0])["error"]["code"] == E.FRAME_TOO_LARGE
    assert d.call("provenance.verify")["records"] == before
    assert d.call("system.health")["ok"]


# ------------------------------------------------------------- http

@pytest.fixture(scope="module")
def http_overlay(d):
    d.call("overlay.install", {"path": os.path.join(EXAMPLES, "abraxas_http")})
    odir = d.call("overlay.get", {"name": "abraxas_http"})["directory"]
    sock = os.path.join(odir, "abraxas.sock")
    proc = subprocess.Popen([sys.executable, os.path.join(odir, "server.py"), sock],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: os.path.exists(sock), what="the HTTP overlay's socket")
    yield proc, sock
    proc.kill()
    proc.wait()


def test_http_overlay_over_a_unix_socket(d, http_overlay):
    r = invoke(d, "abraxas_http", "scan", "OPEN", {"text": "a b A"})
    assert r["ok"], r
    assert r["result"] == {"words": 3, "distinct": 2, "phase": "OPEN", "served_by": "abraxas_http"}
    rec = d.call("provenance.get", {"run_id": r["run_id"]})["record"]
    assert rec["http_status"] == 200 and rec["attempts"] == 1


def test_http_500_slow_and_down(d, http_overlay):
    r = invoke(d, "abraxas_http", "fail", "OPEN")
    assert r["error"]["code"] == E.OVERLAY_CRASHED and "HTTP 500" in r["error"]["message"]
    t0 = time.monotonic()
    r = invoke(d, "abraxas_http", "slow", "OPEN")
    assert r["error"]["code"] == E.OVERLAY_TIMEOUT and "not retried" in r["error"]["message"]
    assert r["error"]["data"]["attempts"] == 1
    assert time.monotonic() - t0 < 10
    proc, sock = http_overlay
    proc.kill()
    proc.wait()
    os.unlink(sock)
    r = invoke(d, "abraxas_http", "scan", "OPEN")
    assert r["error"]["code"] == E.OVERLAY_UNREACHABLE
    assert r["error"]["data"]["attempts"] == 4        # 1 + http_retries (3)
    assert_consistent(d)


def test_clear_on_an_http_overlay_is_refused(d, tmp_path):
    src = tmp_path / "clearhttp"
    shutil.copytree(os.path.join(EXAMPLES, "abraxas_http"), src)
    m = json.loads((src / "manifest.json").read_text())
    m["name"], m["phases"] = "clearhttp", m["phases"] + ["CLEAR"]
    (src / "manifest.json").write_text(json.dumps(m))
    d.call("overlay.install", {"path": str(src)})
    r = invoke(d, "clearhttp", "scan", "CLEAR")
    assert r["error"]["code"] == E.OVERLAY_CONFINEMENT and "not the daemon's to confine" in r["error"]["message"]
    d.call("overlay.remove", {"name": "clearhttp"})


# ------------------------------------------------------------- hot swap

def _slowver_copy(tmp_path, version, body_version):
    src = os.path.join(FIXTURES, "slowver")
    dst = tmp_path / f"slowver-{version}"
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    m["version"] = version
    (dst / "manifest.json").write_text(json.dumps(m))
    (dst / "slowver.py").write_text((dst / "slowver.py").read_text().replace('VERSION = "1"',
                                                                              f'VERSION = "{body_version}"'))
    return str(dst)


def test_two_hot_swaps_during_a_running_call(d, tmp_path):
    d.call("overlay.install", {"path": _slowver_copy(tmp_path, "1.0.0", "1")})
    seen = {}

    def run():
        seen["r"] = invoke(d, "slowver", "run", "OPEN", {"sleep": 2.0})
    t = threading.Thread(target=run)
    t.start()
    wait_for(lambda: d.call("overlay.get", {"name": "slowver"})["running"] == 1, what="the call running")
    time.sleep(0.3)                               # the process has read its script
    up = d.call("overlay.install", {"path": _slowver_copy(tmp_path, "2.0.0", "2")})   # swap 1: upgrade
    assert up["upgraded"] and up["previous_version"] == "1.0.0"
    odir = d.call("overlay.get", {"name": "slowver"})["directory"]
    m = json.load(open(os.path.join(odir, "manifest.json")))
    m["version"] = "2.1.0"                        # swap 2: the manifest edited in place
    with open(os.path.join(odir, "manifest.json"), "w") as fh:
        json.dump(m, fh)
    assert d.call("overlay.rescan")["changed"] == ["slowver"]
    t.join(30)
    r = seen["r"]
    assert r["ok"] and r["result"] == {"version": "1"} and r["version"] == "1.0.0"
    r2 = invoke(d, "slowver", "run", "OPEN", {"sleep": 0})
    assert r2["result"] == {"version": "2"} and r2["version"] == "2.1.0"
    assert_consistent(d)


def test_disable_enable_remove(d, tmp_path):
    # A manifest's path installs its directory (manifest + source beside it).
    got = d.call("overlay.install", {"path": os.path.join(_slowver_copy(tmp_path, "3.0.0", "3"), "manifest.json")})
    assert got["name"] == "slowver" and got["version"] == "3.0.0"
    assert d.call("overlay.disable", {"name": "slowver"})["enabled"] is False
    r = invoke(d, "slowver", "run", "OPEN")
    assert r["error"]["code"] == E.OVERLAY_DISABLED
    d.call("overlay.enable", {"name": "slowver"})
    assert invoke(d, "slowver", "run", "OPEN")["ok"]
    d.call("overlay.remove", {"name": "slowver"})
    with pytest.raises(RpcCallError) as ei:
        d.call("overlay.get", {"name": "slowver"})
    assert ei.value.code == E.NOT_FOUND


def test_a_broken_manifest_never_takes_down_the_others(d):
    odir = os.path.dirname(d.call("overlay.get", {"name": "abraxas"})["directory"])
    os.makedirs(os.path.join(odir, "broken"), exist_ok=True)
    with open(os.path.join(odir, "broken", "manifest.json"), "w") as fh:
        fh.write('{"name": "broken", "version": 1,')
    res = d.call("overlay.rescan")
    assert "broken" in res["broken"]
    info = d.call("overlay.get", {"name": "broken"})
    assert not info["valid"] and info["problems"][0].startswith("broken/manifest.json: is not JSON")
    assert invoke(d, "abraxas", "scan", "OPEN", {"text": "still here"})["ok"]
    shutil.rmtree(os.path.join(odir, "broken"))
    d.call("overlay.rescan")


def test_install_of_a_bad_directory_is_refused_with_every_problem(d, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text(json.dumps({
        "name": "bad", "version": "1", "entrypoints": {}, "phases": ["OPEN"], "extra": 1,
        "capabilities": {"scan": {"runner": "proc", "class": "analysis", "timeout_s": "soon"}}}))
    with pytest.raises(RpcCallError) as ei:
        d.call("overlay.install", {"path": str(bad)})
    assert ei.value.code == E.OVERLAY_INVALID
    probs = ei.value.data["problems"]
    assert "bad/manifest.json: extra is not a known key" in probs[0]
    assert any('capabilities.scan.timeout_s must be a positive number (at most 3600), got "soon"' in p
               for p in probs)
    assert any("entrypoints must have proc or http" in p for p in probs)


# ------------------------------------------------------------- replay and verify

def test_replay_match_and_tools_replay_by_line(d):
    r = invoke(d, "abraxas", "scan", "ALIGN", {"text": "one two two"}, seed=3)
    out = aalctl(d, "overlay", "replay", r["run_id"])
    assert out.returncode == 0, out.stderr + out.stdout
    assert json.loads(out.stdout)["verdict"] == "match"
    env = dict(os.environ)
    tool = subprocess.run([sys.executable, os.path.join(ROOT, "TOOLS", "replay.py"), str(r["provenance_index"]),
                           "--socket", d.socket], capture_output=True, text=True, timeout=60, env=env)
    assert tool.returncode == 0, tool.stderr
    assert json.loads(tool.stdout)["verdict"] == "match"


def test_replay_mismatch_and_manifest_change_warning(d, tmp_path):
    d.call("overlay.install", {"path": _slowver_copy(tmp_path, "4.0.0", "4")})
    r = invoke(d, "slowver", "run", "OPEN", {"sleep": 0}, seed=1)
    d.call("overlay.install", {"path": _slowver_copy(tmp_path, "5.0.0", "5")})   # a different result
    out = aalctl(d, "overlay", "replay", r["run_id"])
    assert out.returncode == 1, out.stdout + out.stderr
    assert json.loads(out.stdout)["verdict"] == "mismatch"
    assert "manifest of slowver changed" in out.stderr
    d.call("overlay.remove", {"name": "slowver"})


def test_replay_is_refused_without_a_stored_payload(daemon_factory):
    d2 = reachable(daemon_factory())
    d2.call("overlay.install", {"path": os.path.join(EXAMPLES, "abraxas")})
    r = invoke(d2, "abraxas", "scan", "OPEN", {"text": "secret"})
    rec = d2.call("provenance.get", {"run_id": r["run_id"]})["record"]
    assert "payload" not in rec and rec["payload_hash"]
    out = aalctl(d2, "overlay", "replay", r["run_id"])
    assert out.returncode == 2 and "no stored payload" in out.stderr
    out = aalctl(d2, "overlay", "replay", "nope")
    assert out.returncode == 2
    # Dev mode by environment (the original's switch) stores it.
    d3 = reachable(daemon_factory(env={"AAL_DEV_LOG_PAYLOAD": "1"}))
    d3.call("overlay.install", {"path": os.path.join(EXAMPLES, "abraxas")})
    r = invoke(d3, "abraxas", "scan", "OPEN", {"text": "kept"})
    assert d3.call("provenance.get", {"run_id": r["run_id"]})["record"]["payload"] == {"text": "kept"}
    assert d3.call("system.status")["overlays"]["log_payload"] is True


def test_aalctl_overlay_and_provenance_commands(d):
    out = aalctl(d, "overlay", "list")
    assert out.returncode == 0 and "abraxas" in out.stdout
    out = aalctl(d, "overlay", "invoke", "abraxas", "seal", "SEAL", '{"text": "a"}', "--seed", "9")
    assert out.returncode == 0 and json.loads(out.stdout)["ok"]
    out = aalctl(d, "provenance", "verify")
    assert out.returncode == 0 and "ok" in out.stdout
    out = aalctl(d, "provenance", "list", "--limit", "2")
    assert out.returncode == 0 and len(out.stdout.strip().splitlines()) == 2


@pytest.mark.slow
def test_registry_state_survives_a_restart_and_verify_names_an_edited_record(tmp_path):
    from helpers import short_tmpdir
    base = short_tmpdir()
    d1 = reachable(start_daemon(base=base, config=CONFIG))
    try:
        d1.call("overlay.install", {"path": os.path.join(EXAMPLES, "abraxas")})
        d1.call("overlay.install", {"path": os.path.join(EXAMPLES, "abraxas_exec")})
        d1.call("overlay.disable", {"name": "abraxas_exec"})
        runs = [invoke(d1, "abraxas", "scan", "OPEN", {"text": f"t{i}"}) for i in range(4)]
        assert d1.call("provenance.verify")["ok"]
    finally:
        d1.stop()
    log_path = os.path.join(base, "state", "provenance.jsonl")
    lines = open(log_path, "rb").read().splitlines(keepends=True)
    # edit record 2 (its duration), keep it valid JSON
    rec = json.loads(lines[2])
    rec["duration_ms"] += 1
    edited = lines[:2] + [json.dumps(rec, sort_keys=True, separators=(",", ":")).encode() + b"\n"] + lines[3:]
    with open(log_path, "wb") as fh:
        fh.writelines(edited)
    d2 = reachable(start_daemon(base=base, config=CONFIG))
    try:
        got = {o["name"]: o["enabled"] for o in d2.call("overlay.list")["overlays"]}
        assert got == {"abraxas": True, "abraxas_exec": False}
        v = d2.call("provenance.verify")
        assert not v["ok"] and v["first_bad"]["seq"] == 2 and "edited" in v["first_bad"]["reason"]
        assert v["first_bad"]["run_id"] == runs[2]["run_id"]
        out = aalctl(d2, "provenance", "verify")
        assert out.returncode == 1 and "record 2" in out.stdout
    finally:
        d2.stop()
    # removed record 1 / reordered 0 and 1: named too
    for variant, seq, words in ((lines[:1] + lines[2:], 1, "line 1 holds record 2 (records removed or reordered)"),
                                ([lines[1], lines[0]] + lines[2:], 0, "line 0 holds record 1")):
        with open(log_path, "wb") as fh:
            fh.writelines(variant)
        d3 = reachable(start_daemon(base=base, config=CONFIG))
        try:
            v = d3.call("provenance.verify")
            assert not v["ok"] and v["first_bad"]["seq"] == seq, v
            assert words in v["first_bad"]["reason"], v
        finally:
            d3.stop()
    # a torn last line (a crash mid-write) is cut off at start and kept aside
    with open(log_path, "wb") as fh:
        fh.writelines(lines)
        fh.write(b'{"schema":1,"run_')
    d4 = reachable(start_daemon(base=base, config=CONFIG))
    try:
        v = d4.call("provenance.verify")
        assert v["ok"] and v["torn_bytes"] == len(b'{"schema":1,"run_') and v["records"] == 4
        assert invoke(d4, "abraxas", "scan", "OPEN", {"text": "after"})["provenance_index"] == 4
        assert d4.call("provenance.verify")["ok"]
        with open(log_path + ".torn", "rb") as fh:
            assert fh.read() == b'{"schema":1,"run_\n'
    finally:
        cleanup(d4)


def test_access_levels_and_ledger_writers_in_discover(d):
    methods = {m["name"]: m for m in d.call("rpc.discover")["methods"]}
    for name in ("overlay.install", "overlay.enable", "overlay.disable", "overlay.remove", "overlay.rescan"):
        assert methods[name]["x-access"] == "admin", name
    assert methods["overlay.invoke"]["x-access"] == "write" and methods["overlay.invoke"].get("x-writes-ledger")
    for name in ("overlay.list", "overlay.get", "provenance.get", "provenance.list", "provenance.verify"):
        assert methods[name]["x-access"] == "read", name


def test_system_reload_and_sighup_rescan(d, tmp_path):
    import signal as _signal
    d.call("overlay.install", {"path": _slowver_copy(tmp_path, "6.0.0", "6")})
    odir = d.call("overlay.get", {"name": "slowver"})["directory"]
    path = os.path.join(odir, "manifest.json")
    m = json.load(open(path))
    m["version"] = "6.1.0"
    json.dump(m, open(path, "w"))
    d.call("system.reload")
    assert d.call("overlay.get", {"name": "slowver"})["version"] == "6.1.0"
    m["version"] = "6.2.0"
    json.dump(m, open(path, "w"))
    d.signal(_signal.SIGHUP)
    wait_for(lambda: d.call("overlay.get", {"name": "slowver"})["version"] == "6.2.0", what="SIGHUP rescan")
    d.call("overlay.remove", {"name": "slowver"})


@pytest.mark.root
def test_cgroups_left_by_a_killed_daemon_are_swept_at_start(daemon_factory):
    d1 = reachable(daemon_factory())
    d1.call("overlay.install", {"path": os.path.join(EXAMPLES, "abraxas")})
    r = invoke(d1, "abraxas", "scan", "OPEN", {})
    cg = d1.call("provenance.get", {"run_id": r["run_id"]})["record"]["cgroup"]["cgroup"]
    assert os.path.isdir(cg)                      # kept for reuse
    d1.proc.kill()
    d1.proc.wait()
    assert os.path.isdir(cg)                      # nobody removed it
    daemon_factory(base=d1.base)
    assert not os.path.exists(cg)


def test_provenance_rotates_prunes_and_still_verifies_against_the_ledger():
    """overlays.provenance_max_bytes / provenance_keep on a real daemon: the
    log rotates into segments, the oldest beyond `keep` are deleted (and the
    ledger says so), verify checks what is on disk, lookups reach into the
    segments, and an edit inside a rotated segment is named after a restart."""
    from helpers import short_tmpdir
    base = short_tmpdir()
    config = CONFIG + "provenance_max_bytes = 3000\nprovenance_keep = 2\n"
    d1 = reachable(start_daemon(base=base, config=config))
    try:
        d1.call("overlay.install", {"path": os.path.join(EXAMPLES, "abraxas")})
        runs = [invoke(d1, "abraxas", "scan", "OPEN", {"text": f"t{i}"}) for i in range(16)]
        assert all(r["ok"] for r in runs)
        st = d1.call("system.status")["overlays"]
        assert st["provenance_segments"] == 2 and st["provenance_first"] > 0
        first = st["provenance_first"]
        v = d1.call("provenance.verify")
        assert v["ok"] and v["pruned_before"] == first and v["records"] == v["anchored"] == 16 - first, v
        with d1.client() as c:
            kept = c.call("provenance.get", {"run_id": runs[first]["run_id"]})
            assert kept["index"] == first and kept["record"]["payload"] == {"text": f"t{first}"}
            with pytest.raises(Exception, match="deleted with its segment"):
                c.call("provenance.get", {"index": 0})
            with pytest.raises(Exception, match="no provenance record with run_id"):
                c.call("provenance.get", {"run_id": runs[0]["run_id"]})
            listed = c.call("provenance.list", {"overlay": "abraxas", "limit": 3})["records"]
            assert [r["seq"] for r in listed] == [13, 14, 15]
    finally:
        d1.stop()
    seg = sorted(f for f in os.listdir(os.path.join(base, "state")) if f.startswith("provenance.jsonl.0")
                 and not f.endswith(".idx"))[0]
    path = os.path.join(base, "state", seg)
    lines = open(path, "rb").read().splitlines(keepends=True)
    rec = json.loads(lines[0])
    rec["outcome"] = "timeout"
    lines[0] = json.dumps(rec, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    with open(path, "wb") as fh:
        fh.writelines(lines)
    d2 = reachable(start_daemon(base=base, config=config))
    try:
        v = d2.call("provenance.verify")
        assert not v["ok"] and v["first_bad"]["seq"] == rec["seq"] and "edited" in v["first_bad"]["reason"], v
    finally:
        cleanup(d2)


def test_scratch_directories_are_removed_after_the_reply():
    """The scratch directory goes after the reply (off its path), and none is
    left once the calls are done, in CLEAR and ASCEND."""
    from helpers import short_tmpdir
    base = short_tmpdir()
    scratch = os.path.join(base, "scratch")
    d = reachable(start_daemon(base=base, config=CONFIG + f'scratch_dir = "{scratch}"\n'))
    try:
        d.call("overlay.install", {"path": os.path.join(EXAMPLES, "abraxas")})
        d.call("overlay.install", {"path": os.path.join(EXAMPLES, "abraxas_exec")})
        for _ in range(3):
            assert invoke(d, "abraxas", "scan", "CLEAR", {"text": "x"})["ok"]
        assert invoke(d, "abraxas_exec", "apply", "ASCEND", {"text": "x"})["ok"]
        deadline = time.monotonic() + 10
        while os.listdir(scratch) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert os.listdir(scratch) == []
    finally:
        cleanup(d)


def _snapshot_taken(pid: int, path: str) -> bool:
    """provenance.verify holds the log open a second time while it reads its snapshot."""
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            n += os.readlink(f"/proc/{pid}/fd/{fd}") == path
        except OSError:
            pass
    return n >= 2


def test_an_invoke_is_served_while_verify_reads_a_large_log():
    """verify checks a snapshot of the committed log without holding the
    write lock: an invoke sent while it reads 20,000 records is answered
    first and recorded after the snapshot; run_id lookups use the index."""
    from helpers import short_tmpdir
    from aal_core.overlays import provenance as prov
    base = short_tmpdir()
    d1 = reachable(start_daemon(base=base, config=CONFIG))
    try:
        d1.call("overlay.install", {"path": os.path.join(EXAMPLES, "abraxas")})
        assert invoke(d1, "abraxas", "scan", "OPEN", {"text": "x"})["ok"]
    finally:
        d1.stop()
    # Records as a crash leaves them (on disk, their ledger entries never
    # written): the next start anchors them, so the log is large and valid.
    path = os.path.join(base, "state", "provenance.jsonl")
    log = prov.ProvenanceLog(path).open()
    template = log.get(0)
    n = 20000
    for i in range(n):
        seq, line = log.prepare(dict(template, run_id=f"bulk-{i}"))
        os.write(log.fd, line + b"\n")
        log.commit(seq, line, f"bulk-{i}")
    os.fsync(log.fd)
    log.close()
    d2 = reachable(start_daemon(base=base, config=CONFIG, wait=180))
    try:
        total = n + 1
        assert d2.call("system.status")["overlays"]["provenance_records"] == total
        got: dict = {}

        def verify():
            with d2.client(timeout=600) as c:
                got["v"] = c.call("provenance.verify")
                got["at"] = time.monotonic()
        t = threading.Thread(target=verify)
        t.start()
        assert wait_for(lambda: _snapshot_taken(d2.proc.pid, path), timeout=60, every=0.002)
        r = invoke(d2, "abraxas", "scan", "OPEN", {"text": "during the verify"})
        served = time.monotonic()
        t.join(600)
        assert r["ok"] and r["provenance_index"] == total
        assert "at" in got and served < got["at"], "the invoke waited for the verify"
        assert got["v"]["ok"] and got["v"]["records"] == got["v"]["anchored"] == total, got["v"]
        assert d2.call("provenance.get", {"run_id": "bulk-12345"})["index"] == 12346
        assert d2.call("provenance.get", {"run_id": r["run_id"]})["index"] == total
        v = assert_consistent(d2)
        assert v["records"] == total + 1
    finally:
        cleanup(d2)
