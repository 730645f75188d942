"""The control loop fed by what the real daemon observes (issue 5).

Each test starts the real `aal-core run`, makes one kind of anomaly happen
for real at the boundary sensing reads, and follows it through: sensing's
counter (sense.sources) → the anomalies of a beat (venom.subscribe, pushed
decisions) → the decision (the rule on σ(w·anomalies + b)) → the ledger
(ledger.get live, and the whole file offline after a clean stop, where every
anomaly the loop counted must be found in a decision entry or a summary).

    CRITICAL samples   --proc-root DIR holding copies of /proc/meminfo,
                       /proc/vmstat, /proc/pressure/memory; DIR/meminfo is
                       rewritten in place to 1 % MemAvailable
    OOM kills          DIR/vmstat's oom_kill goes up; and (root) a real
                       OOM kill in a real v1 memory cgroup watched with --cgroup
    thermal            a tegrastats replay of a real recorded line, its
                       temperatures edited above the throttle point
    source failures    a tegrastats that prints junk and dies (restart, backoff)
    late beats         SIGSTOP/SIGCONT of the daemon for ten beats
"""
from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest

from aal_core.client import Client
from aal_core.client.workload import GovernedJob
from aal_core.ledger import Ledger
from helpers import short_tmpdir, wait_for

HERE = os.path.dirname(os.path.abspath(__file__))
# The real line recorded on an Orin Nano 8 GB (JetPack 6): tj@50.25C.
TEGRA_FIXTURE = os.path.join(HERE, "fixtures", "tegrastats", "orin-nano-8gb_jp6.x.txt")

BEAT_S = 0.1
# T1 = 0.02375 s with k = 4, P = 5, U = e⁴ gives a 0.1 s beat; one summary a second.
FAST = """
[venom]
t1 = 0.02375
summary_interval_s = 1.0
"""
SENSED = ("critical_samples", "oom_kills", "thermal_breaches", "throttle_events", "source_failures")


# ------------------------------------------------------------------ helpers
def sensed(d) -> dict:
    return d.call("sense.sources")["anomalies"]


def threat(total: float, w: float = 0.12, b: float = 0.0) -> float:
    return 1.0 / (1.0 + math.exp(-(w * total + b)))


def rule(evidence: float) -> str:
    """The decision for `evidence` units with the default model and genome
    (NOOP below 0.60: B and O never pass their bars with the default genome)."""
    t = threat(evidence)
    return "QUARANTINE" if t >= 0.85 else "ALERT" if t >= 0.60 else "NOOP"


def check_decision(x: dict) -> None:
    """A decision is what the spec's formulas give for its own evidence (the
    anomaly units of the last venom.evidence_window_s: a CRITICAL second 2,
    every other anomaly 1)."""
    total = x["anomalies"]["total"]
    assert total == sum(v for k, v in x["anomalies"].items() if k != "total")
    ev = x["evidence"]
    assert ev["value"] == pytest.approx(2.0 * ev["critical_s"] + ev["events"], abs=1e-9)
    assert ev["events"] >= total - x["anomalies"]["critical_samples"]
    assert x["decision"]["raw_threat"] == pytest.approx(threat(ev["value"]), abs=1e-9)
    assert x["decision"]["threat"] == pytest.approx(x["decision"]["raw_threat"] * x["genome"]["e"], abs=1e-12)
    assert set(x["genome"]) == {"r", "b", "e", "o"} and sum(x["genome"].values()) == pytest.approx(1.0)
    assert x["action"] == rule(ev["value"]), x


def make_proc(base: str, oom_kill: int = 100) -> str:
    """DIR with byte copies of the /proc files sensing reads.  vmstat's
    oom_kill is set to a 3-digit value so later edits keep the file's size."""
    root = os.path.join(base, "proc")
    os.makedirs(os.path.join(root, "pressure"))
    for name in ("meminfo", "vmstat", "pressure/memory"):
        try:
            with open(os.path.join("/proc", name), "rb") as fh:
                data = fh.read()
        except OSError:          # a kernel without PSI: sensing runs without it
            continue
        if name == "vmstat":
            if re.search(rb"^oom_kill \d+$", data, re.M):
                data = re.sub(rb"^oom_kill \d+$", b"oom_kill %d" % oom_kill, data, flags=re.M)
            else:
                data += b"oom_kill %d\n" % oom_kill
        with open(os.path.join(root, name), "wb") as fh:
            fh.write(data)
    return root


def rewrite_in_place(path: str, data: bytes) -> None:
    """Same size, one pwrite at offset 0, on the inode the daemon keeps open:
    a concurrent read sees old or new digits, never a half-empty file."""
    fd = os.open(path, os.O_WRONLY)
    try:
        assert os.fstat(fd).st_size == len(data), "edit must keep the file size"
        assert os.pwrite(fd, data, 0) == len(data)
    finally:
        os.close(fd)


def with_kb(data: bytes, key: bytes, kb: int) -> bytes:
    m = re.search(rb"^" + key + rb":(\s+)(\d+) kB$", data, re.M)
    assert m, key
    width = len(m.group(1)) + len(m.group(2))
    new = (b"%d" % kb).rjust(width)
    assert len(new) == width and new[:1] == b" "
    return data[:m.start(1)] + new + data[m.end(2):]


def meminfo_nearly_exhausted(original: bytes) -> bytes:
    total = int(re.search(rb"^MemTotal:\s+(\d+) kB$", original, re.M).group(1))
    out = with_kb(original, b"MemAvailable", total // 100)
    return with_kb(out, b"MemFree", total // 200)


def set_oom_kill(path: str, value: int) -> None:
    with open(path, "rb") as fh:
        data = fh.read()
    rewrite_in_place(path, re.sub(rb"^oom_kill \d+$", b"oom_kill %d" % value, data, flags=re.M))


def hot(line: bytes, plus_c: float = 47.0) -> bytes:
    """Every temperature of a tegrastats line raised by plus_c (tj 50.25 → 97.25 °C)."""
    out, n = re.subn(rb"@(\d+(?:\.\d+)?)C\b", lambda m: b"@%gC" % (float(m.group(1)) + plus_c), line)
    assert n >= 2
    return out


def recorded_line() -> bytes:
    with open(TEGRA_FIXTURE, "rb") as fh:
        lines = [ln.rstrip(b"\r\n") for ln in fh if ln.strip() and not ln.startswith(b"#")]
    assert b"tj@50.25C" in lines[0]
    return lines[0]


def offline_ledger(d) -> list[dict]:
    """Every entry's data, read from the file after the daemon stopped
    (read-only open; the stop flushed the last summary window)."""
    assert d.stop() == 0, d.log()
    lg = Ledger.open(os.path.join(d.base, "state", "ledger.aal"), create=False, repair_torn_tail=False)
    try:
        assert lg.verify()["valid"] is True
        return [e["data"] for e in lg.entries(0, lg.manifest()["chain_length"])]
    finally:
        lg.close()


def recorded_anomalies(data: list[dict]) -> dict:
    """Sum of each kind over decision entries, and the NOOP and coalesced sums of summaries."""
    out = dict.fromkeys(SENSED + ("late_beats", "unacked_directives"), 0)
    for x in data:
        if x.get("type") == "venom.decision":
            for k in out:
                out[k] += x["anomalies"][k]
        elif x.get("type") == "venom.summary":
            for k, v in x["noop_anomalies"].items():
                out[k] += v
            for k, v in x["coalesced_anomalies"].items():
                out[k] += v
    return out


def stable_counts(d, keys=SENSED) -> tuple[dict, dict]:
    """Sensing's counters and the loop's totals, read when sensing's did not
    move across two whole beats (so the loop has seen all of them)."""
    def read():
        a = sensed(d)
        time.sleep(3 * BEAT_S)
        st = d.call("venom.status")
        b = sensed(d)
        return (a, st["anomalies"]) if all(a[k] == b[k] for k in keys) else None
    return wait_for(read, timeout=15, every=0)


def next_matching(it, pred, limit=200):
    for _ in range(limit):
        x = next(it)["data"]
        if pred(x):
            return x
    raise AssertionError(f"no matching decision in {limit} pushes")


# -------------------------------------------------------------------- tests
def test_wiring_sensing_counters_are_what_venom_reads():
    """build_units hands the real SensingUnit to the loop, and every counter
    the loop reads is one sensing keeps (a renamed key would count zero forever)."""
    from aal_core.app import build_units
    from aal_core.config import local_defaults
    from aal_core.rpc.server import Hub
    from aal_core.clock import SYSTEM
    from aal_core.stress.unit import SensingUnit
    from aal_core.units import Context
    from aal_core.venom.anomalies import SENSED as VENOM_READS
    from aal_core.venom.unit import VenomUnit

    base = short_tmpdir()
    try:
        cfg = local_defaults(base)
        ctx = Context(config=cfg, clock=SYSTEM, hub=Hub(), state_dir=cfg.daemon.state_dir)
        units = build_units(ctx)
        sensing = next(u for u in units if isinstance(u, SensingUnit))
        venom = next(u for u in units if isinstance(u, VenomUnit))
        assert venom.sensing is sensing
        assert venom.governor is not None and venom.ledger is not None
        assert set(sensing.anomaly_counters()) == set(VENOM_READS) == set(SENSED)
        assert venom.governor.overdue_directives_total() == 0       # the counter venom reads
    finally:
        import shutil
        shutil.rmtree(base, ignore_errors=True)


def test_critical_samples_become_anomalies_decisions_and_ledger_entries(daemon_factory):
    base = short_tmpdir()
    proc = make_proc(base)
    meminfo = os.path.join(proc, "meminfo")
    with open(meminfo, "rb") as fh:
        calm = fh.read()
    d = daemon_factory("--proc-root", proc, base=base, config=FAST)
    assert d.call("stress.get")["band"] in ("LOW", "MODERATE")

    with Client(d.socket, timeout=10) as c:
        it = c.subscribe("venom", {"include_noop": True})
        before = [next(it)["data"] for _ in range(3)]
        assert all(x["anomalies"]["critical_samples"] == 0 for x in before)

        rewrite_in_place(meminfo, meminfo_nearly_exhausted(calm))
        hot_beats = []
        hot_beats.append(next_matching(it, lambda x: x["anomalies"]["critical_samples"] > 0))
        # from then on, (nearly) every beat has some; held until the evidence
        # (2 units a CRITICAL second) reaches an ALERT: 2 s, 20 beats
        while hot_beats[-1]["action"] == "NOOP" and len(hot_beats) < 100:
            hot_beats.append(next(it)["data"])
        s = d.call("stress.get")
        assert s["band"] == "CRITICAL" and s["components"]["host_used"] == pytest.approx(0.99, abs=0.001)

        rewrite_in_place(meminfo, calm)
        wait_for(lambda: d.call("stress.get")["band"] != "CRITICAL")

    # Sensing samples at sample_hz_max (50 Hz) while CRITICAL: about 5 per 0.1 s beat.
    for x in hot_beats:
        check_decision(x)
        assert x["anomalies"]["total"] == x["anomalies"]["critical_samples"]
    counts = [x["anomalies"]["critical_samples"] for x in hot_beats]
    assert sum(1 for n in counts if n == 0) <= 2, counts     # only if the event loop stalled
    assert sum(counts[1:]) >= 2 * (len(counts) - 1), counts
    # a CRITICAL beat weighs its time, not its samples: ALERT after ~2 s, never QUARANTINE on it
    assert hot_beats[-1]["action"] == "ALERT" and 15 <= len(hot_beats) <= 30, counts
    assert hot_beats[-1]["evidence"]["critical_s"] == pytest.approx(
        0.1 * sum(1 for n in counts if n > 0), abs=1e-9)
    acted = [x for x in hot_beats if x["action"] != "NOOP"]
    # each action was recorded before it was pushed: the entry is the decision
    for x in acted:
        e = d.call("ledger.get", {"index": x["ledger_index"]})["entries"][0]
        assert e["hash"] == x["ledger_hash"]
        assert e["data"] == {k: v for k, v in x.items() if k not in ("ledger_index", "ledger_hash")}
    assert acted[0]["effect"] == {"alert": True}
    assert "event=alert" in d.log() and "kinds=critical_samples" in d.log()

    # Exactly what sensing counted, no more and no less (nothing was CRITICAL before the loop).
    sense, loop = stable_counts(d)
    assert sense["critical_samples"] >= 8
    assert loop["critical_samples"] == sense["critical_samples"]
    st = d.call("venom.status")
    assert sum(st["actions"].values()) == st["beats"]
    assert st["ledger_verified"] is True and d.call("ledger.verify")["valid"] is True
    # every counted sample is in the ledger, in a decision or a summary
    assert recorded_anomalies(offline_ledger(d))["critical_samples"] == loop["critical_samples"]


@pytest.mark.root
def test_vmstat_oom_kills_quarantine_the_job_using_memory(daemon_factory):
    base = short_tmpdir()
    proc = make_proc(base, oom_kill=100)
    d = daemon_factory("--proc-root", proc, base=base, config=FAST)
    hog = subprocess.Popen([sys.executable, "-c", "b = b'\\x01' * (64 << 20)\nimport sys\nsys.stdin.read()"],
                           stdin=subprocess.PIPE)
    try:
        with Client(d.socket, timeout=10) as owner, Client(d.socket, timeout=10) as watcher:
            owner.call("job.submit", {"job_id": "idle", "profile": "BALANCED"})        # no pid: never a target
            time.sleep(0.5)
            owner.call("job.submit", {"job_id": "hog", "profile": "MEM[SOFT=32,HARD=512,VOL=LOW]; PRIORITY=5",
                                      "pid": hog.pid})
            it = watcher.subscribe("venom", {"include_noop": True})
            next(it)
            set_oom_kill(os.path.join(proc, "vmstat"), 120)   # the kernel killed 20 processes
            x = next_matching(it, lambda x: x["anomalies"]["oom_kills"] > 0)
            assert x["anomalies"]["oom_kills"] == 20 and x["anomalies"]["total"] == 20
            check_decision(x)                                 # 20 units: σ(2.4) = 0.917 ≥ 0.85
            assert x["action"] == "QUARANTINE"
            assert x["effect"]["applied"] is True and x["effect"]["job_id"] == "hog", x["effect"]
            assert owner.call("job.get", {"job_id": "hog"})["quarantined"] is True
            assert owner.call("job.get", {"job_id": "idle"})["quarantined"] is False
            e = d.call("ledger.get", {"index": x["ledger_index"]})["entries"][0]["data"]
            assert e["action"] == "QUARANTINE" and e["anomalies"]["oom_kills"] == 20
            assert e["decision"] == x["decision"] and e["genome"] == x["genome"]
            # counted once: later beats see no new kills (the evidence window still holds them)
            later = [next(it)["data"] for _ in range(3)]
            assert all(y["anomalies"]["oom_kills"] == 0 and y["evidence"]["value"] >= 20 for y in later)
            assert all(y["effect"]["applied"] is False for y in later)
    finally:
        hog.kill()
        hog.wait()
    assert sensed(d)["oom_kills"] == 20
    assert d.call("venom.status")["anomalies"]["oom_kills"] == 20


OOM_HOG = textwrap.dedent("""
    blocks = []
    while True:                       # far past the cgroup's limit
        blocks.append(bytearray(8 << 20))
""")


@pytest.mark.root
@pytest.mark.slow
def test_real_oom_kill_in_a_watched_cgroup_is_counted(daemon_factory):
    mem = "/sys/fs/cgroup/memory"
    if not os.path.exists(os.path.join(mem, "memory.oom_control")):
        pytest.skip("no cgroup v1 memory controller at /sys/fs/cgroup/memory")
    with open(os.path.join(mem, "memory.oom_control")) as fh:
        if "oom_kill " not in fh.read():
            pytest.skip("this kernel does not count OOM kills per cgroup (< 4.13)")
    cg = os.path.join(mem, f"aal-e2e-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    os.mkdir(cg)
    d = None
    try:
        with open(os.path.join(cg, "memory.limit_in_bytes"), "w") as fh:
            fh.write(str(48 << 20))
        base = short_tmpdir()
        # Fake /proc so kills elsewhere on this machine (vmstat is global) do not count.
        proc = make_proc(base)
        d = daemon_factory("--proc-root", proc, "--cgroup", cg, base=base, config=FAST)
        src = {s["name"]: s for s in d.call("sense.sources")["sources"]}
        assert src["cgroup"]["present"] is True
        with Client(d.socket, timeout=15) as c:
            it = c.subscribe("venom", {"include_noop": True})
            next(it)
            for n in (1, 2):
                # The child moves itself into the cgroup, then allocates until killed.
                hog = subprocess.run(["sh", "-c", f'echo $$ > {cg}/cgroup.procs && exec "$0" -c "$1"',
                                      sys.executable, OOM_HOG], timeout=60)
                assert hog.returncode == -signal.SIGKILL
                with open(os.path.join(cg, "memory.oom_control")) as fh:
                    assert f"oom_kill {n}" in fh.read()
                x = next_matching(it, lambda x: x["anomalies"]["oom_kills"] > 0)
                assert x["anomalies"]["oom_kills"] == 1
                check_decision(x)
        assert sensed(d)["oom_kills"] == 2
        assert d.call("venom.status")["anomalies"]["oom_kills"] == 2
        assert recorded_anomalies(offline_ledger(d))["oom_kills"] == 2
    finally:
        if d is not None:
            d.stop()
        for _ in range(50):
            try:
                os.rmdir(cg)
                break
            except OSError:
                time.sleep(0.1)
        assert not os.path.exists(cg)


REPLAY = textwrap.dedent("""
    # A stand-in for tegrastats: prints the given recorded lines in order, one
    # per --interval, then the last one forever.  Lines: argv[1] (a file).
    import sys, time
    ms = int(sys.argv[sys.argv.index("--interval") + 1])
    lines = open(sys.argv[1], "rb").read().splitlines()
    i = 0
    while True:
        sys.stdout.buffer.write(lines[min(i, len(lines) - 1)] + b"\\n")
        sys.stdout.flush()
        i += 1
        time.sleep(ms / 1000)
""")


def replay_command(base: str, lines: list[bytes]) -> str:
    script = os.path.join(base, "replay.py")
    with open(script, "w") as fh:
        fh.write(REPLAY)
    data = os.path.join(base, "lines.txt")
    with open(data, "wb") as fh:
        fh.write(b"\n".join(lines) + b"\n")
    return f"{sys.executable} {script} {data}"


def test_thermal_breaches_and_throttling_from_tegrastats(daemon_factory):
    normal = recorded_line()
    burn = hot(normal)                                  # tj 97.25 °C: margin −2.25 °C at 95 °C
    assert b"tj@97.25C" in burn
    base = short_tmpdir()
    # calm for 0.8 s (the loop's baseline is taken before), hot twice, calm after
    cmd = replay_command(base, [normal] * 8 + [burn] * 3 + [normal] * 3 + [burn] * 2 + [normal])
    d = daemon_factory(base=base, tegrastats=cmd,
                       config=FAST + "[sense]\ntegrastats_interval_ms = 100\n")
    with Client(d.socket, timeout=10) as c:
        it = c.subscribe("venom", {"include_noop": True})
        x = next_matching(it, lambda x: x["anomalies"]["thermal_breaches"] > 0)
        # the first hot line: below the 10 °C warning margin and at/over the throttle point
        assert x["anomalies"]["thermal_breaches"] == 1 and x["anomalies"]["throttle_events"] == 1
        check_decision(x)
        next_matching(it, lambda x: x["anomalies"]["thermal_breaches"] > 0)
    sense, loop = stable_counts(d)
    # two crossings; lines that stay hot are not counted again
    assert sense["thermal_breaches"] == sense["throttle_events"] == 2
    assert loop["thermal_breaches"] == loop["throttle_events"] == 2
    assert loop["source_failures"] == 0
    latest = d.call("tegrastats.latest")
    assert latest["temps_c"]["tj"] == 50.25
    rec = recorded_anomalies(offline_ledger(d))
    assert rec["thermal_breaches"] == rec["throttle_events"] == 2


DYING = textwrap.dedent("""
    # A tegrastats that loses its device: one real line, one junk line, exit 3.
    import sys, time
    line = open(sys.argv[1], "rb").read().splitlines()[0]
    sys.stdout.buffer.write(line + b"\\n"); sys.stdout.flush()
    time.sleep(0.3)
    sys.stdout.buffer.write(b"NvRmMemInitNvmap failed with Permission denied\\n"); sys.stdout.flush()
    time.sleep(0.1)
    sys.stderr.write("tegrastats: lost /dev/nvhost-ctrl\\n")
    sys.exit(3)
""")


@pytest.mark.slow
def test_tegrastats_dying_is_counted_as_source_failures(daemon_factory):
    base = short_tmpdir()
    script = os.path.join(base, "dying.py")
    with open(script, "w") as fh:
        fh.write(DYING)
    data = os.path.join(base, "line.txt")
    with open(data, "wb") as fh:
        fh.write(recorded_line() + b"\n")
    d = daemon_factory(base=base, tegrastats=f"{sys.executable} {script} {data}", config=FAST)
    with Client(d.socket, timeout=10) as c:
        it = c.subscribe("venom", {"include_noop": True})
        x = next_matching(it, lambda x: x["anomalies"]["source_failures"] > 0)
        check_decision(x)
    # restarted with backoff (0.5 s, then 1 s): two runs, each one junk line and one exit
    t = wait_for(lambda: (s := {s["name"]: s for s in d.call("sense.sources")["sources"]}["tegrastats"])
                 ["restarts"] >= 2 and s)
    assert t["unparseable"] >= 2 and t["parsed"] >= 2
    assert "exited with status 3" in t["last_error"] and "lost /dev/nvhost-ctrl" in t["last_error"]
    sense, loop = stable_counts(d, keys=("source_failures",))
    # one failure episode per death (each run parsed a line first); junk lines are no failures
    assert sense["source_failures"] >= 2
    assert loop["source_failures"] == sense["source_failures"]
    assert "event=tegrastats_exited" in d.log() and "event=tegrastats_unparseable" in d.log()
    assert recorded_anomalies(offline_ledger(d))["source_failures"] == loop["source_failures"]


def test_a_stopped_daemon_counts_its_late_and_skipped_beats(daemon_factory):
    d = daemon_factory(config=FAST)
    with Client(d.socket, timeout=15) as c:
        it = c.subscribe("venom", {"include_noop": True})
        next(it)
        d.signal(signal.SIGSTOP)
        time.sleep(1.0)                                  # ten beats
        d.signal(signal.SIGCONT)
        x = next_matching(it, lambda x: x["anomalies"]["late_beats"] > 0)
    # the beat that fired ~1 s late (1) and the ~9 whole beats skipped after it
    assert x["lateness_s"] >= 0.9
    assert abs(x["anomalies"]["late_beats"] - x["lateness_s"] / BEAT_S) <= 1.01, x
    check_decision(x)                                    # σ(0.12 · ~10) ≈ 0.77: ALERT
    assert x["action"] in ("ALERT", "QUARANTINE")        # QUARANTINE only if stopped ≥ 1.5 s
    if x["action"] == "ALERT":
        assert x["effect"] == {"alert": True}
    e = d.call("ledger.get", {"index": x["ledger_index"]})["entries"][0]["data"]
    assert e["anomalies"]["late_beats"] == x["anomalies"]["late_beats"] and e["decision"] == x["decision"]
    st = d.call("venom.status")
    assert st["max_lateness_s"] >= 0.9 and st["anomalies"]["late_beats"] >= x["anomalies"]["late_beats"]


def test_directives_a_job_ignores_are_counted(daemon_factory):
    """Under CRITICAL stress the governor sends directives to two jobs.  One
    acknowledges each at once: never an anomaly.  The other never does: each
    of its directives is counted once, when it passes govern.ack_timeout_s
    (unacked_directives).  Acknowledging the backlog later counts nothing more."""
    base = short_tmpdir()
    proc = make_proc(base)
    meminfo = os.path.join(proc, "meminfo")
    with open(meminfo, "rb") as fh:
        calm = fh.read()
    d = daemon_factory("--proc-root", proc, base=base, config=FAST + "[govern]\nack_timeout_s = 0.5\n")
    prompt = GovernedJob("prompt", "BALANCED", socket_path=d.socket)
    stop = threading.Event()

    def obey():
        while not stop.is_set():
            dv = prompt.wait(0.05)
            if dv is not None:
                prompt.ack(dv)
    worker = threading.Thread(target=obey, daemon=True)
    try:
        prompt.start()
        worker.start()
        with Client(d.socket, timeout=10) as deaf, Client(d.socket, timeout=10) as watcher:
            deaf.call("job.submit", {"job_id": "deaf", "profile": "BALANCED"})
            it = watcher.subscribe("venom", {"include_noop": True})
            next(it)
            rewrite_in_place(meminfo, meminfo_nearly_exhausted(calm))
            x = next_matching(it, lambda x: x["anomalies"]["unacked_directives"] > 0)
            check_decision(x)

            def settled():
                # every directive of the deaf job overdue, none new for a while
                a = deaf.call("job.get", {"job_id": "deaf"})
                time.sleep(0.5 + 3 * BEAT_S)
                b = deaf.call("job.get", {"job_id": "deaf"})
                st = d.call("venom.status")
                same = a["directive_version"] == b["directive_version"] == b["overdue"]
                return (b, st) if same else None
            job, st = wait_for(settled, timeout=20, every=0)
            p = d.call("job.get", {"job_id": "prompt"})
            assert p["directive_version"] >= 1 and p["unacked"] == 0      # it did get directives
            assert job["unacked"] == job["directive_version"] >= 1
            # the deaf job's directives, each exactly once; the prompt job's, none
            assert st["anomalies"]["unacked_directives"] == job["directive_version"]
            # acknowledged (cumulatively) late: the backlog going away is not counted again
            deaf.call("job.ack", {"job_id": "deaf", "version": job["directive_version"]})
            assert d.call("govern.status")["unacked_directives"] == 0
            acked_at = d.call("venom.status")["beats"]
            later = [next_matching(it, lambda y: y["beat"] > acked_at + i) for i in range(3)]
            assert [y["anomalies"]["unacked_directives"] for y in later] == [0, 0, 0]
            assert all(y["anomalies"]["critical_samples"] > 0 for y in later)    # still CRITICAL
            assert d.call("venom.status")["anomalies"]["unacked_directives"] == job["directive_version"]
    finally:
        stop.set()
        worker.join(5)
        prompt.close()


def test_default_one_second_beat_does_not_quarantine_on_a_critical_second(daemon_factory):
    """At the shipped 1 s beat, a second in CRITICAL is ~50 samples (sensing
    runs at sample_hz_max = 50 Hz there).  The seed counted them: σ(0.12 · 50)
    ≈ 0.998, a QUARANTINE of the job the governor would shed first and
    priority 5 refused.  As evidence it is one CRITICAL second, 2 units
    (σ(0.24) = 0.56): no action, and the job is untouched."""
    base = short_tmpdir()
    proc = make_proc(base)
    meminfo = os.path.join(proc, "meminfo")
    with open(meminfo, "rb") as fh:
        calm = fh.read()
    d = daemon_factory("--proc-root", proc, base=base)
    assert d.call("venom.status")["t_lambda"] == pytest.approx(1.0)
    with Client(d.socket, timeout=10) as owner, Client(d.socket, timeout=10) as watcher:
        owner.call("job.submit", {"job_id": "bulk", "profile": "BALANCED"})
        it = watcher.subscribe("venom", {"include_noop": True})
        next(it)
        rewrite_in_place(meminfo, meminfo_nearly_exhausted(calm))
        x = next_matching(it, lambda x: x["anomalies"]["critical_samples"] > 0)
        rewrite_in_place(meminfo, calm)
        wait_for(lambda: d.call("stress.get")["band"] != "CRITICAL")
        after = [next(it)["data"] for _ in range(3)]
        assert owner.call("job.get", {"job_id": "bulk"})["quarantined"] is False
        owner.call("job.submit", {"job_id": "p5", "profile": "BALANCED"})       # not refused (-32009)
    assert x["anomalies"]["critical_samples"] >= 10, x["anomalies"]
    for y in [x] + after:
        check_decision(y)
        assert y["action"] in ("NOOP", "ALERT") and y["evidence"]["critical_s"] <= 2.0
    assert d.call("venom.status")["actions"]["QUARANTINE"] == 0
