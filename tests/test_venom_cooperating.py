"""The measured claim of issue 9 (part 3): a cooperating workload that obeys
every directive and survives is not quarantined, and priority 5 is admitted
afterwards.  The seed quarantined it in 6 of 6 governed runs (one CRITICAL
second ≈ 50 anomalies → QUARANTINE of the job the governor would shed first)
and refused job.submit of priority 5 with -32009 from then on.

One governed run of bench/governed_ramp.py's setup: a real 512 MiB memory
cgroup watched by the real daemon (--cgroup), examples/toy_decoder.py inside
it growing its KV cache at 100 MiB/s towards 1 GiB, obeying and acking each
directive.  ~30 s, root (cgroups)."""
import json
import os
import signal
import subprocess
import sys
import uuid

import pytest

from aal_core.client import Client
from helpers import short_tmpdir, start_daemon, cleanup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

from _cgroup import Cgroup  # noqa: E402

WORKLOAD = os.path.join(ROOT, "examples", "toy_decoder.py")
PROFILE = ("MEM[SOFT=384,HARD=512,VOL=HIGH]; KV[CAP=1.0,POLICY=WINDOW,PURGE=ON_STRESS]; "
           "TIER=LOCAL; PRIORITY=5; DEGRADE{STEP1:SHRINK_KV(0.75),STEP2:SHRINK_KV(0.5),"
           "STEP3:CONTEXT(256),STEP4:OFFLOAD(COLD)}")


@pytest.mark.root
@pytest.mark.slow
def test_a_cooperating_workload_that_survives_is_not_quarantined():
    cg = Cgroup(f"aal-coop-{uuid.uuid4().hex[:8]}", 512 << 20)
    base = short_tmpdir()
    d = start_daemon("--cgroup", cg.path, base=base)
    try:
        report = os.path.join(base, "report.json")
        cmd = [sys.executable, WORKLOAD, "--seconds", "12", "--kv-mib-per-s", "100", "--max-kv-mib", "1024",
               "--profile", PROFILE, "--report", report, "--quiet", "--socket", d.socket, "--job-id", "ramp"]
        w = subprocess.run(cmd, capture_output=True, text=True, timeout=120, preexec_fn=cg.add_self)
        assert w.returncode != -signal.SIGKILL and cg.oom_kills() == 0, "the workload was OOM-killed"
        assert w.returncode == 0, w.stderr[-2000:]
        rep = json.load(open(report))
        assert rep["directives"], "no directive: the ramp never stressed the cgroup (nothing measured)"
        ledger = d.call("ledger.get", {"start": 0, "end": d.call("ledger.manifest")["chain_length"]})["entries"]
        data = [e["data"] for e in ledger]
        applied = [x for x in data if x.get("type") == "venom.decision" and x["action"] == "QUARANTINE"
                   and (x.get("effect") or {}).get("applied")]
        assert applied == [], applied
        st = d.call("venom.status")
        assert st["quarantined"] == [] and d.call("govern.status")["quarantined_priorities"] == []
        with Client(d.socket, timeout=10) as c:
            job = c.call("job.submit", {"job_id": "after", "profile": "BALANCED"})     # priority 5
            assert job["admitted"] is True and job["priority"] == 5
    finally:
        cleanup(d)
        cg.remove()
