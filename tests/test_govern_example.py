"""examples/toy_decoder.py against a real daemon: it registers, is pushed
directives as (real, sensed) stress rises and falls, applies them to its
torch KV cache, acknowledges them and prints what it did."""
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest

from test_govern_e2e import FakeProc, _wait_stress

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "toy_decoder.py")
RUNE = ("MEM[SOFT=512,HARD=1024,VOL=MED]; KV[CAP=0.2,POLICY=WINDOW,PURGE=ON_EVENT]; PRIORITY=5; "
        "DEGRADE{STEP1:SHRINK_KV(0.5),STEP2:CONTEXT(64)}")


class Lines:
    """The example's stdout, line by line, as it comes."""

    def __init__(self, proc):
        self.q: queue.Queue = queue.Queue()
        self.all: list[str] = []
        threading.Thread(target=self._pump, args=(proc.stdout,), daemon=True).start()

    def _pump(self, fh):
        for line in fh:
            self.q.put(line.rstrip("\n"))

    def until(self, pred, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.q.get(timeout=0.1)
            except queue.Empty:
                continue
            self.all.append(line)
            if pred(line):
                return line
        raise AssertionError("no such line; got:\n" + "\n".join(self.all))


def test_toy_decoder_obeys_directives_from_a_real_daemon(daemon_factory, tmp_path):
    proc = FakeProc(str(tmp_path / "proc"))
    d = daemon_factory("--proc-root", proc.path, config="[govern]\nhold_s = 0.5\nhysteresis = 0.05\n")
    _wait_stress(d, lambda s: s < 0.3)
    report = tmp_path / "report.json"
    ex = subprocess.Popen([sys.executable, EXAMPLE, "--socket", d.socket, "--job-id", "toy", "--profile", RUNE,
                           "--seconds", "60", "--sequences", "2", "--kv-mib-per-s", "40",
                           "--report", str(report)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        out = Lines(ex)
        reg = out.until(lambda s: s.startswith("registered toy"), 60)
        assert "threshold 0.55" in reg and "enforced=False (no pid given)" in reg
        job = d.call("job.get", {"job_id": "toy"})
        assert job["metadata"]["model"] == "toy-decoder" and job["active_steps"] == []
        time.sleep(1.5)                                   # let the cache grow (~60 MiB)

        proc.set_used(0.9)                                # stress ~0.9: past the 0.55 threshold
        s1 = out.until(lambda s: "directive" in s and "APPLY" in s, 20)
        assert "SHRINK_KV[0.5]" in s1 and "above threshold 0.550" in s1
        s2 = out.until(lambda s: "directive" in s and "APPLY" in s, 20)
        assert "CONTEXT[64]" in s2 and "context 64" in s2
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:                # acknowledged: nothing left unacked
            got = d.call("job.get", {"job_id": "toy"})
            if got["active_steps"] == [1, 2] and got["unacked"] == 0:
                break
            time.sleep(0.05)
        assert got["active_steps"] == [1, 2] and got["unacked"] == 0, got
        assert got["metadata"]["kv_shrink_factor"] == 0.5 and got["metadata"]["max_context_tokens"] == 64

        # recovery: memory flat at 20 %, ample headroom: both steps lifted, in
        # reverse order, in one directive (issue 9; it was one per hold)
        proc.set_used(0.2)
        l1 = out.until(lambda s: "directive" in s and "LIFT" in s, 20)
        assert "LIFT CONTEXT[64],SHRINK_KV[0.5]" in l1 and "context None" in l1
        assert "every step lifted" in l1
        ex.send_signal(signal.SIGTERM)                    # stops cleanly, writes its report
        assert ex.wait(30) == 0, ex.stderr.read()
    finally:
        if ex.poll() is None:
            ex.kill()
            ex.wait()
    rep = json.loads(report.read_text())
    steps = [(x["kind"], x["steps"]) for x in rep["directives"] if x["kind"] in ("APPLY", "LIFT")]
    assert steps == [("APPLY", [1]), ("APPLY", [2]), ("LIFT", [2, 1])]
    shrink, context = [x for x in rep["directives"] if x["kind"] == "APPLY"]
    assert shrink["freed_mib"] > 10                       # SHRINK_KV(0.5) really freed blocks
    assert all(x["latency_s"] is not None and x["latency_s"] < 5 for x in rep["directives"])
    assert rep["tokens"] > 0 and rep["cache"]["truncated_blocks"] > 0
    assert rep["governed"] is True
    assert d.call("job.list")["jobs"] == []               # released on exit
    assert 'job_id=toy why="released by request"' in d.log()


def test_toy_decoder_says_clearly_when_it_cannot_register(tmp_path):
    r = subprocess.run([sys.executable, EXAMPLE, "--socket", str(tmp_path / "none.sock"), "--seconds", "1"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 1 and "cannot register with aal-core" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, EXAMPLE, "--profile", "MEM[SOFT=2,HARD=1,VOL=LOW]"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2 and "--profile: line 1, column 17" in r.stderr and "Traceback" not in r.stderr
