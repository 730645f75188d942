"""`aal-core venom`: the loop standalone, as a user runs it (a subprocess),
with its own ledger file and a fake /proc (a vmstat file the test rewrites)."""
import json
import os
import subprocess
import time

import pytest

from helpers import AAL_CORE

from aal_core.ledger import Ledger


def venom(*args, timeout=60):
    return subprocess.run([AAL_CORE, "venom", *args], capture_output=True, text=True, timeout=timeout)


def write_vmstat(root, oom_kill):
    path = os.path.join(root, "vmstat")
    with open(path + ".tmp", "w") as fh:
        fh.write(f"nr_free_pages 1000\npgfault 5\noom_kill {oom_kill}\n")
    os.replace(path + ".tmp", path)


def test_runs_n_beats_and_prints_status_and_merkle_root(tmp_path):
    led = str(tmp_path / "v.aal")
    proc = tmp_path / "proc"
    proc.mkdir()
    write_vmstat(proc, 3)
    r = venom("--beats", "40", "--ledger", led, "--proc-root", str(proc), "--summary-interval", "1")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["status"]["beats"] == 40
    assert out["status"]["t_lambda"] == pytest.approx(0.004 / 0.95)
    assert out["merkle_root"] == out["manifest"]["merkle_root"]
    assert f"merkle_root {out['merkle_root']}" in r.stderr
    # the file verifies offline and holds what the loop wrote
    lg = Ledger.open(led)
    try:
        m = lg.manifest()
        assert m["merkle_root"] == out["merkle_root"]
        assert lg.verified
        kinds = [e["data"].get("type") for e in lg.entries(0, m["chain_length"])]
        assert kinds.count("venom.summary") >= 1
        total_beats = sum(e["data"]["beats"] for e in lg.entries(0, m["chain_length"])
                          if e["data"].get("type") == "venom.summary")
        assert total_beats == 40
    finally:
        lg.close()
    # a second run appends to the same chain
    r2 = venom("--beats", "10", "--ledger", led, "--proc-root", str(proc), "--k-flows", "2",
               "--p-nodes", "3", "--t1", "0.002", "--t-threshold", "0.01")
    assert r2.returncode == 0, r2.stderr
    out2 = json.loads(r2.stdout)
    assert out2["manifest"]["chain_length"] > m["chain_length"]
    assert out2["status"]["t_lambda"] == pytest.approx(0.002 * 4 / (1 - 1 / 6))
    assert out2["status"]["t_threshold"] == 0.01


def test_oom_kills_in_vmstat_drive_real_decisions(tmp_path):
    led = str(tmp_path / "v.aal")
    proc = tmp_path / "proc"
    proc.mkdir()
    write_vmstat(proc, 100)
    p = subprocess.Popen([AAL_CORE, "venom", "--beats", "-1", "--ledger", led, "--proc-root", str(proc),
                          "--t1", "0.01"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        write_vmstat(proc, 120)        # 20 OOM kills in one beat: σ(2.4) ≈ 0.92 → QUARANTINE
        time.sleep(0.5)
    finally:
        p.terminate()                  # endless run: SIGTERM ends it cleanly
        out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    st = json.loads(out)["status"]
    # the 20 units stay in the 10 s evidence window: QUARANTINE every beat from then on
    assert st["actions"]["QUARANTINE"] >= 1
    assert st["anomalies"]["oom_kills"] == 20
    assert st["coalesced"] == st["actions"]["QUARANTINE"] - 1
    lg = Ledger.open(led)
    try:
        n = lg.manifest()["chain_length"]
        decisions = [e["data"] for e in lg.entries(0, n) if e["data"].get("type") == "venom.decision"]
        q = [d for d in decisions if d["action"] == "QUARANTINE"]
        assert len(q) == 1 and q[0]["anomalies"]["oom_kills"] == 20     # the rest coalesced
        assert q[0]["effect"]["applied"] is False
        # the partial window was flushed at the end
        assert any(e["data"].get("type") == "venom.summary" for e in lg.entries(0, n))
    finally:
        lg.close()


@pytest.mark.parametrize("args,msg", [
    (["--beats", "5", "--k-flows", "1", "--p-nodes", "1"], "k·P > 1"),
    (["--beats", "0"], "--beats must be"),
    (["--beats", "5", "--t1", "nan"], "finite number"),
    (["--beats", "5", "--summary-interval", "0"], "--summary-interval"),
    (["--beats", "5", "--evidence-window", "0"], "--evidence-window"),
])
def test_bad_parameters_exit_2_with_a_clear_message(tmp_path, args, msg):
    r = venom(*args, "--ledger", str(tmp_path / "v.aal"))
    assert r.returncode == 2
    assert msg in r.stderr
    assert not os.path.exists(tmp_path / "v.aal")       # nothing written


def test_bad_model_file_exit_2(tmp_path):
    m = tmp_path / "m.json"
    m.write_text('{"format": "aal-core.entropy.v1", "weight": "x", "bias": 0}')
    r = venom("--beats", "5", "--ledger", str(tmp_path / "v.aal"), "--model", str(m))
    assert r.returncode == 2 and "'weight' must be a number" in r.stderr


def test_corrupt_ledger_exit_4_and_file_untouched(tmp_path):
    led = tmp_path / "v.aal"
    assert venom("--beats", "5", "--ledger", str(led), "--summary-interval", "1").returncode == 0
    raw = bytearray(led.read_bytes())
    raw[len(raw) // 2] ^= 0x01                           # one flipped bit in the middle
    led.write_bytes(bytes(raw))
    r = venom("--beats", "5", "--ledger", str(led))
    assert r.returncode == 4, r.stderr
    assert "ledger" in r.stderr
    assert led.read_bytes() == bytes(raw)                # never silently "repaired"
