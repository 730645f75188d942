"""A cap the daemon sets is a limit it watches (issue 9, part 2).

A job that gives its pid runs in a cgroup of its own with HARD as the hard
limit; the governor senses that cgroup with the machine signal's model and
steps the job on it before the cap fires, while the machine signal keeps
driving the other jobs.
"""
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import dataclass, replace

import pytest

from aal_core.clock import ManualClock
from aal_core.config import Config, GovernConfig
from aal_core.govern.cgroups import CgroupEnforcer
from aal_core.govern.governor import Governor
from aal_core.govern.jobsignal import JobSignal
from aal_core.govern.level import Level
from aal_core.sources.meminfo import MeminfoReader
from aal_core.stress.sample import Reading, band_of
from helpers import short_tmpdir

MB = 1 << 20
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIVE = ("MEM[SOFT=384,HARD=512,VOL=HIGH]; PRIORITY=5; DEGRADE{STEP1:SHRINK_KV(0.75),"
        "STEP2:SHRINK_KV(0.5),STEP3:CONTEXT(256)}")


@dataclass(frozen=True)
class Sample:
    stress: float
    monotonic: float
    timestamp: float
    band: str = "LOW"
    model: str = "test"
    seconds_to_exhaustion: float | None = None


@dataclass
class Sensed:
    """What JobSignal holds for the core: the job cgroup's latest sample and its level."""
    sample: Sample | None
    level: Level
    path: str = "/sys/fs/cgroup/memory/aal-core/own"
    error: str | None = None


def test_a_job_is_stepped_on_its_own_cgroup_while_the_machine_serves_the_others():
    clock = ManualClock()
    gov = Governor(GovernConfig(), clock)
    own = gov.submit("own", FIVE, None, pid=1234)
    other = gov.submit("other", FIVE, None)
    own.signal = Sensed(None, Level(GovernConfig()))
    out = []
    for i in range(40):                     # machine at 0.1; the job's cgroup at 0.9 and 3 s from full
        clock.advance(0.1)
        now = clock.monotonic()
        js = Sample(0.9, now, clock.wall(), band=band_of(0.9), model="fused", seconds_to_exhaustion=3.0)
        own.signal.sample = js
        own.signal.level.update(0.9, now)
        out += gov.on_sample(Sample(0.1, now, clock.wall()))
    assert out and {d["job_id"] for d in out} == {"own"}
    first = out[0]
    assert first["kind"] == "APPLY"
    c = first["cause"]
    assert c["signal"] == "job_cgroup" and c["stress"] == 0.9 and c["machine_stress"] == 0.1
    assert c["job_stress"] == 0.9 and c["seconds_to_exhaustion"] == 3.0 and c["cgroup"] == own.signal.path
    # the job's own level drives the later steps: all three applied, machine level still 0
    assert [d["steps"][0]["order"] for d in out if d["kind"] == "APPLY"] == [1, 2, 3]
    assert gov.level.value == 0.0 and other.stepper.active == 0
    # a stale job sample (not from this round) is not used: the machine's is
    clock.advance(0.1)
    assert gov._job_sample(own, clock.monotonic()) is None


def test_machine_signal_still_wins_when_it_is_the_higher():
    clock = ManualClock()
    gov = Governor(GovernConfig(), clock)
    own = gov.submit("own", FIVE, None, pid=1234)
    own.signal = Sensed(None, Level(GovernConfig()))
    clock.advance(0.1)
    now = clock.monotonic()
    own.signal.sample = Sample(0.2, now, clock.wall())
    (d,) = gov.on_sample(Sample(0.8, now, clock.wall(), band="CRITICAL"))
    assert d["cause"]["signal"] == "machine" and d["cause"]["stress"] == 0.8
    assert d["cause"]["job_stress"] == 0.2


def _needs_memory_cgroup():
    if os.geteuid() != 0:
        pytest.skip("needs root (memory cgroups)")
    e = CgroupEnforcer("auto")
    if e.mode == "off":
        pytest.skip(e.note)
    return e


@pytest.mark.root
def test_job_signal_reads_the_job_cgroup_with_the_fused_model():
    """A real process in a real job cgroup: usage, limit, stress and time to
    exhaustion from the cgroup, not from the (nearly empty) machine."""
    e = _needs_memory_cgroup()
    job = "s-" + uuid.uuid4().hex[:8]
    hog = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time
        sys.stdin.readline()
        blocks = []
        for _ in range(12):                          # 12 x 8 MiB at ~80 MiB/s
            blocks.append(bytearray(8 << 20))
            print("grew", flush=True)
            sys.stdin.readline()
        time.sleep(60)
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert e.place(job, hog.pid, 96 * MB, 128 * MB)["enforced"] is True
        sig = JobSignal(e.path(job), Config())
        meminfo = MeminfoReader("/proc")
        t0 = time.monotonic()
        samples = []
        hog.stdin.write("go\n")
        hog.stdin.flush()
        for i in range(12):
            hog.stdout.readline()
            # simulated time: 0.1 s per 8 MiB (80 MiB/s), so the fit sees a real ramp
            r = Reading(t=t0 + 0.1 * i, wall=time.time(), meminfo=meminfo.read())
            samples.append(sig.update(r))
            hog.stdin.write("\n")
            hog.stdin.flush()
        meminfo.close()
        s = samples[-1]
        d = sig.to_dict()
        assert d["limit_bytes"] == 128 * MB and d["usage_bytes"] >= 90 * MB
        assert s.view == "cgroup" and s.model == "fused"
        # 96 MiB of 128 used, growing 80 MiB/s: about 0.4 s to the cap
        assert s.seconds_to_exhaustion is not None and s.seconds_to_exhaustion < 2
        assert s.stress >= 0.75 and d["band"] == "CRITICAL" and d["level"] > 0
        sig.close()
    finally:
        hog.kill()
        hog.wait()
        e.remove(job)


@pytest.mark.root
@pytest.mark.slow
def test_ramp_with_pid_given_gets_directives_and_survives_its_own_cap(tmp_path):
    """The issue's case: the toy decoder at 100 MiB/s towards 1 GiB with
    HARD = 512 MiB and its pid given to job.submit.  Before, the machine
    signal stayed near 0, no directive came and the cap OOM-killed it."""
    _needs_memory_cgroup()
    from helpers import start_daemon
    base = short_tmpdir()
    d = start_daemon(base=base)
    report = tmp_path / "report.json"
    profile = ("MEM[SOFT=384,HARD=512,VOL=HIGH]; KV[CAP=1.0,POLICY=WINDOW,PURGE=ON_STRESS]; "
               "TIER=LOCAL; PRIORITY=5; DEGRADE{STEP1:SHRINK_KV(0.75),STEP2:SHRINK_KV(0.5),"
               "STEP3:CONTEXT(256),STEP4:OFFLOAD(COLD)}")
    cmd = [sys.executable, os.path.join(ROOT, "examples", "toy_decoder.py"), "--seconds", "10",
           "--kv-mib-per-s", "100", "--max-kv-mib", "1024", "--profile", profile, "--report", str(report),
           "--socket", d.socket, "--job-id", "ramp", "--pid", "--quiet"]
    try:
        w = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        seen = []                      # job.get while it runs: the job's own signal
        with d.client() as c:
            while w.poll() is None:
                jobs = c.call("job.list")["jobs"]
                seen += [j["job_signal"] for j in jobs if j.get("job_signal", {}).get("stress") is not None]
                time.sleep(0.2)
        out, err = w.communicate(timeout=120)
        assert w.returncode == 0, (w.returncode, err[-2000:], d.log()[-3000:])
        rep = json.loads(report.read_text())
        applied = [x for x in rep["directives"] if x["kind"] == "APPLY"]
        assert applied, rep["directives"]
        assert applied[0]["signal"] == "job_cgroup", applied
        assert rep["tokens"] > 0
        assert seen and all(s["limit_bytes"] == 512 * MB for s in seen)
        assert 50 * MB < max(s["usage_bytes"] for s in seen) < 512 * MB
        assert all(s["model"] == "fused" and s["reads"] > 0 for s in seen)
    finally:
        if w.poll() is None:
            w.kill()
        d.stop()


@pytest.mark.root
def test_a_job_cgroup_near_its_cap_makes_sensing_sample_fast():
    """The machine is nearly idle (sample_hz), but a job's own cgroup is at
    90 % of its cap: the governor asks sensing for sample_hz_max, as HIGH
    machine stress would, and its job sample comes from the same reading."""
    from aal_core.govern.unit import GovernorUnit
    from aal_core.rpc.server import Hub
    from aal_core.stress.unit import SensingUnit
    from aal_core.units import Context
    e = _needs_memory_cgroup()
    cfg = Config().with_overrides({"sense": {"tegrastats_command": "off"}})
    ctx = Context(config=cfg, clock=ManualClock(), hub=Hub(), state_dir="/nonexistent")
    su = SensingUnit(ctx)
    su.open_sources()
    gu = GovernorUnit(ctx, sensing=su, enforcer=e)
    su.add_listener(gu.on_sample)
    su.add_fast_hint(gu.jobs_need_fast_sampling)
    su.sample_once(force=True)
    assert su._interval == 1.0 / cfg.sense.sample_hz          # idle machine, no job: slow
    hog = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time
        sys.stdin.readline()
        b = bytearray(100 << 20)
        print("held", flush=True)
        time.sleep(60)
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    job_id = "f-" + uuid.uuid4().hex[:8]
    try:
        job = gu.core.submit(job_id, "MEM[SOFT=96,HARD=112,VOL=LOW]; PRIORITY=5", None, pid=hog.pid)
        job.enforcement = e.place(job_id, hog.pid, 96 * MB, 112 * MB)
        gu._watch(job)
        assert job.signal is not None
        hog.stdin.write("go\n")
        hog.stdin.flush()
        hog.stdout.readline()
        sample = su.sample_once(force=True)
        assert sample.band in ("LOW", "MODERATE")                  # the machine: fine
        js = job.signal.sample
        assert js.monotonic == sample.monotonic and js.band in ("HIGH", "CRITICAL"), js
        assert su._interval == 1.0 / cfg.sense.sample_hz_max
        assert gu.core.job_dict(job)["job_signal"]["limit_bytes"] == 112 * MB
    finally:
        hog.kill()
        hog.wait()
        gu._release(job_id, "test over")
        for s in su.sources:
            s.close()
