"""Efficacy of the stress signal on real memory ramps and model loads (needs
root and the cgroup v1 or v2 memory controller).

Ramps: a child process in a 2 GiB cgroup allocates and touches memory at a
fixed rate (25, 100, 400 MiB/s) until the kernel OOM-kills it.  Ground truth
is the kernel's own OOM notification (v1: an eventfd on memory.oom_control;
v2: the oom_kill count in memory.events, polled at 1 kHz).  A real aal-core
daemon watches the cgroup (`--cgroup`), and this script subscribes to its
"stress" topic; beside it, a 1 kHz poller evaluates the plain thresholds a
user would otherwise set on the same cgroup (available < 10 %, usage >= 90 %)
and host PSI (some avg10 >= 10).  Lead time = OOM time - first time each
signal fired in that run.

Model loads (bursts): a child allocates a base, then 0.5-2 GB at 0.5-2 GB/s
and stops at 40-65 % of the limit, and holds it; a priority-5 job (no pid,
so the daemon directs it on the machine-wide signal) is registered with the
daemon for the case.  Per burst: seconds in HIGH and in CRITICAL, directives
sent to the job, and how long after the growth stopped it was degraded.  One
more case imports torch in the cgroup on top of a base and submits the job
right after the import: it must start at full service.

Every run reports the growth rate it really reached (the cgroup's working set
over the ramp / the burst, from the 1 kHz poller).  Then a benign run: a file
of 70 % of the limit read into the page cache; it must not raise HIGH.

`--traces FILE` writes the sample series the daemon's model consumed (time,
the cgroup's used fraction, the host's) for one run of each case, which
tests/test_stress_traces.py replays (tests/fixtures/stress_traces.json).

    sudo .venv/bin/python bench/ramp.py [--runs 5] [--slow-runs 2] [--rates 25,100,400] [--model fused]
"""
from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from _cgroup import Cgroup  # noqa: E402 - bench/ is the script's directory
from aal_core.client import Client  # noqa: E402


def _host_total() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


HOST_TOTAL = _host_total()

MiB = 1 << 20
GB = 10 ** 9
LIMIT = 2048 * MiB
BANDS = ["LOW", "MODERATE", "HIGH", "CRITICAL"]
HOLD_S = 5.0                   # govern.hold_s of the daemon (its default)
P5_PROFILE = ("MEM[SOFT=1536,HARD=2048,VOL=HIGH]; KV[CAP=1.0,POLICY=WINDOW,PURGE=ON_STRESS]; TIER=LOCAL; "
              "PRIORITY=5; DEGRADE{STEP1:SHRINK_KV(0.75),STEP2:SHRINK_KV(0.5),STEP3:CONTEXT(256),"
              "STEP4:OFFLOAD(COLD)}")
# (name, base fraction of the limit, burst GB, rate GB/s): model loads that stop at 40-65 %.
BURSTS = [
    ("0.86GB@2GB/s→40%", 0.0, 0.86, 2.0),
    ("1.07GB@1GB/s→50%", 0.0, 1.07, 1.0),
    ("1.18GB@0.5GB/s→55%", 0.0, 1.18, 0.5),
    ("1.27GB@2GB/s→60%", 0.0, 1.27, 2.0),
    ("1.27GB@0.5GB/s→60%", 0.0, 1.27, 0.5),
    ("0.5GB@2GB/s on 30%→53%", 0.3, 0.5, 2.0),
    ("1.40GB@1GB/s→65%", 0.0, 1.40, 1.0),
]
TORCH_BASE = 0.3

CHILD = r"""
import sys, time
rate = float(sys.argv[1]) * (1 << 20)
chunk = 1 << 20
held = []
t0 = time.monotonic()
sys.stdout.write("go\n"); sys.stdout.flush()
while True:
    due = rate * (time.monotonic() - t0)
    while len(held) * chunk < due:
        held.append(b"\x01" * chunk)          # written, so every page is touched
    time.sleep(0.002)
"""

BURST = r"""
import sys, time
base, size, rate, hold = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
chunk = 1 << 20
held = []
while len(held) * chunk < base:
    held.append(b"\x01" * chunk)
sys.stdout.write("base\n"); sys.stdout.flush()
sys.stdin.readline()
t0 = time.monotonic()
n0 = len(held)
while True:
    due = min(size, rate * (time.monotonic() - t0))
    while (len(held) - n0) * chunk < due:
        held.append(b"\x01" * chunk)
    if (len(held) - n0) * chunk >= size:
        break
    time.sleep(0.001)
t1 = time.monotonic()
sys.stdout.write(f"stopped {t0} {t1}\n"); sys.stdout.flush()
time.sleep(hold)
"""

TORCH = r"""
import sys, time
base, hold = int(sys.argv[1]), float(sys.argv[2])
chunk = 1 << 20
held = [b"\x01" * chunk for _ in range(base // chunk)]
sys.stdout.write("base\n"); sys.stdout.flush()
sys.stdin.readline()
t0 = time.monotonic()
import torch  # noqa: F401 - the import is the load
t1 = time.monotonic()
sys.stdout.write(f"stopped {t0} {t1}\n"); sys.stdout.flush()
time.sleep(hold)
"""

READER = r"""
import os, sys, time
path, hold = sys.argv[1], float(sys.argv[2])
with open(path, "rb", buffering=0) as fh:
    while fh.read(1 << 20):
        time.sleep(0.002)
sys.stdout.write("read\n"); sys.stdout.flush()
time.sleep(hold)
"""


def psi_some_avg10() -> float | None:
    try:
        with open("/proc/pressure/memory") as fh:
            first = fh.readline().split()
        return float(first[1].split("=")[1])
    except (OSError, IndexError, ValueError):
        return None


class Watch:
    """Subscribes to the daemon's stress topic and polls the baselines."""

    def __init__(self, sock: str, cg: Cgroup):
        self.sock, self.cg = sock, cg
        self.samples: list[tuple[float, dict]] = []      # (monotonic, sample)
        self.base: dict[str, list[float]] = {"avail<10%": [], "usage>=90%": [], "psi some avg10>=10": []}
        self.oom_times: list[float] = []
        self.ws: list[tuple[float, int]] = []             # (monotonic, working set) at 1 kHz
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def start(self):
        threading.Thread(target=self._stress, daemon=True).start()
        threading.Thread(target=self._poll, daemon=True).start()
        efd = self.cg.oom_eventfd()
        if efd is not None:
            threading.Thread(target=self._oom_events, args=(efd,), daemon=True).start()

    def _stress(self):
        try:
            with Client(self.sock, timeout=None) as c:
                for params in c.subscribe("stress", {"mode": "every"}):
                    now = time.monotonic()
                    with self.lock:
                        self.samples.append((now, params["data"]))
                    if self.stop.is_set():
                        return
        except Exception:  # noqa: BLE001 - the daemon stopped at the end of the bench
            if not self.stop.is_set():
                raise

    def _poll(self):
        last_kills = self.cg.oom_kills()
        while not self.stop.is_set():
            now = time.monotonic()
            try:
                usage, ws = self.cg.usage()
                kills = self.cg.oom_kills()
            except OSError:
                time.sleep(0.001)
                continue
            with self.lock:
                self.ws.append((now, ws))
                if (LIMIT - ws) / LIMIT < 0.10:
                    self.base["avail<10%"].append(now)
                if usage / LIMIT >= 0.90:
                    self.base["usage>=90%"].append(now)
                p = psi_some_avg10()
                if p is not None and p >= 10.0:
                    self.base["psi some avg10>=10"].append(now)
                if kills > last_kills and self.cg.version == 2:
                    self.oom_times.append(now)
            last_kills = kills
            time.sleep(0.001)

    def _oom_events(self, efd):
        while not self.stop.is_set():
            r, _, _ = select.select([efd], [], [], 0.5)
            if r:
                os.eventfd_read(efd)
                with self.lock:
                    self.oom_times.append(time.monotonic())


def first_after(times: list[float], t0: float, t1: float) -> float | None:
    for t in times:
        if t0 <= t <= t1:
            return t
    return None


def run_ramp(w: Watch, cg: Cgroup, rate: int, timeout: float) -> dict:
    kills0 = cg.oom_kills()
    t_start = time.monotonic()
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(rate)], stdout=subprocess.PIPE,
                             preexec_fn=cg.add_self)
    child.stdout.readline()
    t_go = time.monotonic()
    try:
        child.wait(timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        return {"rate": rate, "error": "no OOM kill within timeout"}
    time.sleep(0.3)
    with w.lock:
        ooms = [t for t in w.oom_times if t >= t_go]
        samples = [(t, s) for t, s in w.samples if t >= t_go]
        base = {k: [t for t in v if t >= t_go] for k, v in w.base.items()}
    kills = cg.oom_kills() - kills0
    if not ooms or kills < 1:
        return {"rate": rate, "error": f"child exited {child.returncode} without a counted OOM kill"}
    t_oom = ooms[0]
    out = {"rate": rate, "oom_after_s": round(t_oom - t_go, 3), "child_status": child.returncode,
           "oom_kills": kills, "samples": len([1 for t, _ in samples if t <= t_oom]), "lead_s": {},
           "rate_reached_mib_s": ramp_rate(w, t_go, t_oom)}

    def lead(t):
        return None if t is None else round(t_oom - t, 3)

    for band in ("HIGH", "CRITICAL"):
        t = next((t for t, s in samples if t <= t_oom and BANDS.index(s["band"]) >= BANDS.index(band)), None)
        out["lead_s"][f"aal {band}"] = lead(t)
    t = next((t for t, s in samples if t <= t_oom and s["components"].get("level", 0) >= 0.75), None)
    out["lead_s"]["level alone CRITICAL"] = lead(t)
    for k, v in base.items():
        out["lead_s"][k] = lead(first_after(v, t_go, t_oom))
    del t_start
    out["trace"] = trace(w, t_go - 3.0, t_oom, t_go, oom_s=t_oom - t_go)
    return out


def ws_at(w: Watch, t: float) -> int:
    """The working set the 1 kHz poller saw last at or before t."""
    with w.lock:
        series = list(w.ws)
    best = series[0][1] if series else 0
    for tt, v in series:
        if tt > t:
            break
        best = v
    return best


def ramp_rate(w: Watch, t0: float, t1: float) -> float | None:
    """MiB/s the working set really grew at between 10 % and 90 % of the limit."""
    with w.lock:
        pts = [(t, v) for t, v in w.ws if t0 <= t <= t1]
    a = next(((t, v) for t, v in pts if v >= 0.1 * LIMIT), None)
    b = next(((t, v) for t, v in pts if v >= 0.9 * LIMIT), None)
    if a is None or b is None or b[0] <= a[0]:
        return None
    return round((b[1] - a[1]) / (b[0] - a[0]) / MiB, 1)


def clock_offset(samples: list[tuple[float, dict]]) -> float:
    """monotonic - sample timestamp (wall), from the quickest delivered sample."""
    return min(t - s["timestamp"] for t, s in samples)


def trace(w: Watch, t0: float, t1: float, t_ref: float, **meta) -> dict:
    """The sample series the daemon's model consumed between t0 and t1, times
    relative to t_ref (sample clock: its own timestamps, mapped to monotonic)."""
    with w.lock:
        got = [(t, s) for t, s in w.samples if t0 <= t <= t1 + 0.2]
    off = clock_offset(got) if got else 0.0
    rows = []
    for _t, s in got:
        c = s["components"]
        t = s["timestamp"] + off - t_ref
        if t0 - t_ref <= t <= t1 - t_ref:
            rows.append([round(t, 4), c.get("cgroup_used"), c.get("host_used")])
    return {"limit": LIMIT, "host_total": HOST_TOTAL, "hold_s": HOLD_S,
            **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in meta.items()},
            "columns": ["t", "cgroup_used", "host_used"], "samples": rows}


def band_seconds(samples: list[tuple[float, dict]], t0: float, t1: float) -> dict:
    """Seconds each band held between t0 and t1 (a sample's band lasts until the next)."""
    out = {b: 0.0 for b in BANDS}
    pts = [(t, s) for t, s in samples if t0 <= t <= t1]
    for (ta, sa), (tb, _sb) in zip(pts, pts[1:]):
        out[sa["band"]] += tb - ta
    return out


class JobWatch:
    """A priority-5 job registered for one case: its degraded spans and the
    directives it was sent (polled at 20 Hz; every directive acknowledged)."""

    def __init__(self, d, job_id: str):
        self.job_id = job_id
        # one connection for the job's life: the daemon releases a job whose connection closed
        self.c = d.client()
        self.c.__enter__()
        self.start = self.c.call("job.submit", {"job_id": job_id, "profile": P5_PROFILE})
        self.polls: list[tuple[float, list, int]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self):
        while not self.stop.is_set():
            j = self.c.call("job.get", {"job_id": self.job_id})
            self.polls.append((time.monotonic(), j["active_steps"], j["directives_total"]))
            if j["directive_version"] > j["acked_version"]:
                self.c.call("job.ack", {"job_id": self.job_id, "version": j["directive_version"]})
            time.sleep(0.05)

    def finish(self) -> dict:
        self.stop.set()
        self.thread.join()
        j = self.c.call("job.get", {"job_id": self.job_id})
        self.c.call("job.release", {"job_id": self.job_id})
        self.c.__exit__(None, None, None)
        return j

    def degraded_until(self) -> float | None:
        return max((t for t, steps, _n in self.polls if steps), default=None)


_cases = 0


def run_burst(w: Watch, cg: Cgroup, d, case: tuple) -> dict:
    """A model load: base, then `gb` GB at `gbs` GB/s, held for hold_s + 3 s."""
    global _cases
    name, base_frac, gb, gbs = case
    _cases += 1
    hold = HOLD_S + 3.0
    if name == "torch":
        child = subprocess.Popen([sys.executable, "-c", TORCH, str(int(base_frac * LIMIT)), str(hold)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, preexec_fn=cg.add_self)
    else:
        child = subprocess.Popen([sys.executable, "-c", BURST, str(int(base_frac * LIMIT)), str(int(gb * GB)),
                                  str(gbs * GB), str(hold)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, preexec_fn=cg.add_self)
    child.stdout.readline()                            # the base is in place
    if base_frac:
        time.sleep(2.5)                                # the trend window forgets the base's own fill
    wait_low(w)
    job = None if name == "torch" else JobWatch(d, f"p5-{_cases}")
    t_go = time.monotonic()
    child.stdin.write("go\n")
    child.stdin.flush()
    _word, t0, t1 = child.stdout.readline().split()
    t0, t1 = float(t0), float(t1)
    stress_at_submit = None
    if job is None:                                    # torch: the job comes right after the import
        with w.lock:
            stress_at_submit = w.samples[-1][1]["stress"] if w.samples else None
        t_submit = time.monotonic()
        job = JobWatch(d, f"p5-{_cases}")
    child.wait()
    t_end = time.monotonic()
    final = job.finish()
    with w.lock:
        samples = [(t, s) for t, s in w.samples if t_go <= t <= t_end]
    ws0, ws1 = ws_at(w, t0), ws_at(w, t1 + 0.05)
    bs = band_seconds(samples, t_go, t_end)
    until = job.degraded_until()
    out = {"case": name, "base_frac": base_frac, "burst_gb": gb, "target_gb_s": gbs,
           "stop_frac": round(ws1 / LIMIT, 3), "grown_mib": round((ws1 - ws0) / MiB, 1),
           "burst_s": round(t1 - t0, 3),
           "rate_reached_gb_s": round((ws1 - ws0) / max(t1 - t0, 1e-6) / GB, 3),
           "high_s": round(bs["HIGH"], 3), "critical_s": round(bs["CRITICAL"], 3),
           "critical_samples": sum(1 for _t, s in samples if s["band"] == "CRITICAL"),
           "max_stress": max((s["stress"] for _t, s in samples), default=0.0),
           "p5_directives": final["directives_total"],
           "p5_active_at_submit": job.start["active_steps"],
           "degraded_after_stop_s": None if until is None else round(max(0.0, until - t1), 3),
           "child_status": child.returncode}
    if stress_at_submit is not None:
        out["stress_at_submit"] = stress_at_submit
    with w.lock:                                       # the trace starts after the case before calmed
        calm_from = max((t for t, s in w.samples if t < t_go and s["band"] != "LOW"), default=0.0) + 0.1
    out["trace"] = trace(w, max(t_go - 3.0, calm_from), t_end, t_go, stop_s=t1 - t_go, start_s=t0 - t_go,
                         submit_s=(t_submit - t_go) if name == "torch" else None)
    return out


def run_benign(w: Watch, cg: Cgroup, fraction: float = 0.7, hold: float = 5.0) -> dict:
    path = os.path.join(tempfile.gettempdir() if os.path.exists("/var/tmp") is False else "/var/tmp",
                        f"aal-ramp-cache-{os.getpid()}")
    size = int(LIMIT * fraction)
    with open(path, "wb") as fh:
        block = os.urandom(MiB)
        for _ in range(size // MiB):
            fh.write(block)
        fh.flush()
        os.fsync(fh.fileno())
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)     # not cached yet: the reader's reads fill the cache
    os.close(fd)
    t0 = time.monotonic()
    child = subprocess.Popen([sys.executable, "-c", READER, path, str(hold)], stdout=subprocess.PIPE,
                             preexec_fn=cg.add_self)
    child.stdout.readline()
    usage_after_read = cg.usage()
    child.wait()
    time.sleep(0.3)
    t1 = time.monotonic()
    os.unlink(path)
    with w.lock:
        samples = [s for t, s in w.samples if t0 <= t <= t1]
    worst = max((BANDS.index(s["band"]) for s in samples), default=0)
    return {"file_mib": size // MiB, "usage_mib_after_read": round(usage_after_read[0] / MiB, 1),
            "working_set_mib_after_read": round(usage_after_read[1] / MiB, 1),
            "samples": len(samples), "max_band": BANDS[worst],
            "max_stress": max((s["stress"] for s in samples), default=0.0), "child_status": child.returncode}


def wait_low(w: Watch, timeout: float = 10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with w.lock:
            last = w.samples[-1][1] if w.samples else None
        if last is not None and last["band"] == "LOW":
            return
        time.sleep(0.1)


RAMP_GOAL = {100: 2.0, 400: 1.0}      # CRITICAL lead, median, seconds (issue 9)


def _med(vals, f="{:.2f}"):
    got = [v for v in vals if v is not None]
    if not got:
        return "never"
    cell = f"{f.format(statistics.median(got))} [{f.format(min(got))}..{f.format(max(got))}]"
    if len(got) < len(vals):
        cell += f" ({len(vals) - len(got)} never)"
    return cell


def summarize(results: list[dict], bursts: list[dict]) -> str:
    """One table: the ramps' lead before the OOM kill, the bursts' time in
    HIGH/CRITICAL and directives to a priority-5 job, each beside its goal."""
    lines = ["| case | runs | growth reached (median [min..max]) | OOM after s / stop at % of limit | "
             "CRITICAL lead s (goal) | HIGH lead s | s in HIGH | s in CRITICAL (goal) | "
             "directives to priority 5 (goal) | degraded after stop s (goal) | verdict |",
             "|---" * 11 + "|"]
    for rate in sorted({r["rate"] for r in results}):
        rs = [r for r in results if r["rate"] == rate and "error" not in r]
        errs = [r for r in results if r["rate"] == rate and "error" in r]
        if not rs:
            lines.append(f"| ramp {rate} MiB/s | 0 ({len(errs)} failed) |" + " - |" * 9)
            continue
        crit = [r["lead_s"]["aal CRITICAL"] for r in rs]
        got = [v for v in crit if v is not None]
        goal = RAMP_GOAL.get(rate)
        med = statistics.median(got) if got else 0.0
        verdict = "-" if goal is None else ("PASS" if len(got) == len(crit) and med >= goal else "FAIL")
        rates = [r.get("rate_reached_mib_s") for r in rs]
        lines.append(
            f"| ramp {rate} MiB/s to OOM | {len(rs)}{f' ({len(errs)} failed)' if errs else ''} | "
            f"{_med(rates, '{:.0f}')} MiB/s | {statistics.median(r['oom_after_s'] for r in rs):.2f} s | "
            f"{_med(crit)} ({'>= ' + format(goal, 'g') if goal else 'no goal'}; {med / goal if goal else 0:.2f}x) | "
            f"{_med([r['lead_s']['aal HIGH'] for r in rs])} | - | - | - | - | {verdict} |"
            if goal else
            f"| ramp {rate} MiB/s to OOM | {len(rs)}{f' ({len(errs)} failed)' if errs else ''} | "
            f"{_med(rates, '{:.0f}')} MiB/s | {statistics.median(r['oom_after_s'] for r in rs):.2f} s | "
            f"{_med(crit)} (no goal) | {_med([r['lead_s']['aal HIGH'] for r in rs])} | - | - | - | - | - |")
    for name in dict.fromkeys(b["case"] for b in bursts):
        bs = [b for b in bursts if b["case"] == name]
        stop = statistics.median(b["stop_frac"] for b in bs)
        guarded = stop <= 0.60 + 0.005
        crit_s = [b["critical_s"] for b in bs]
        dirs = [b["p5_directives"] for b in bs]
        deg = [b["degraded_after_stop_s"] or 0.0 for b in bs]
        if name == "torch":
            at_submit = [len(b["p5_active_at_submit"]) for b in bs]
            ok = all(n == 0 for n in at_submit)
            lines.append(
                f"| import torch on {int(TORCH_BASE * 100)} %, job submitted after it | {len(bs)} | "
                f"{_med([b['rate_reached_gb_s'] for b in bs], '{:.2f}')} GB/s "
                f"({_med([b['grown_mib'] for b in bs], '{:.0f}')} MiB) | {stop * 100:.1f} % | - | - | "
                f"{_med([b['high_s'] for b in bs])} | {_med(crit_s)} | "
                f"steps at submit {at_submit} (goal 0); directives {dirs} | {_med(deg)} (<= {HOLD_S + 1:g}) | "
                f"{'PASS' if ok else 'FAIL'} |")
            continue
        ok = all(d == 0 for d in dirs) and all(c == 0 for c in crit_s) if guarded else True
        ok = ok and all(x <= HOLD_S + 1.0 for x in deg)
        lines.append(
            f"| burst {name} | {len(bs)} | {_med([b['rate_reached_gb_s'] for b in bs], '{:.2f}')} GB/s | "
            f"{stop * 100:.1f} % | - | - | {_med([b['high_s'] for b in bs])} | "
            f"{_med(crit_s)} ({'0' if guarded else 'no goal above 60 %'}) | {dirs} ({'0' if guarded else 'no goal'}) | "
            f"{_med(deg)} (<= {HOLD_S + 1:g}) | {'PASS' if ok else 'FAIL'} |")
    return "\n".join(lines)


def baselines(results: list[dict]) -> str:
    keys = ["aal CRITICAL", "aal HIGH", "level alone CRITICAL", "avail<10%", "usage>=90%", "psi some avg10>=10"]
    lines = ["| rate MiB/s | runs | " + " | ".join(f"lead: {k} (median [min..max], s)" for k in keys) + " |",
             "|---" * (2 + len(keys)) + "|"]
    for rate in sorted({r["rate"] for r in results}):
        rs = [r for r in results if r["rate"] == rate and "error" not in r]
        if rs:
            lines.append(f"| {rate} | {len(rs)} | " + " | ".join(_med([r["lead_s"][k] for r in rs]) for k in keys) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5, help="runs per ramp rate >= 50 MiB/s")
    ap.add_argument("--slow-runs", type=int, default=2, help="runs per ramp rate < 50 MiB/s (80 s each)")
    ap.add_argument("--burst-runs", type=int, default=2, help="runs per model-load case")
    ap.add_argument("--rates", default="25,100,400")
    ap.add_argument("--bursts", default="all", help="'all', 'none' or indexes into BURSTS (0,3,...)")
    ap.add_argument("--no-torch", action="store_true", help="skip the torch import case")
    ap.add_argument("--model", default="fused", choices=["fused", "classic"])
    ap.add_argument("--json", metavar="FILE", help="also write every run as JSON")
    ap.add_argument("--traces", metavar="FILE", help="write one trace per case (tests/fixtures/stress_traces.json)")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("ramp: needs root (creates a cgroup and lets the kernel OOM-kill a child)")
    from helpers import start_daemon  # tests/helpers.py: the real daemon as a subprocess

    cases = [] if a.bursts == "none" else BURSTS if a.bursts == "all" else [BURSTS[int(i)] for i in a.bursts.split(",")]
    if not a.no_torch:
        cases = cases + [("torch", TORCH_BASE, 0.0, 0.0)]
    cg = Cgroup(f"aal-ramp-{os.getpid()}", LIMIT)
    d = None
    t_bench = time.monotonic()
    try:
        d = start_daemon("--cgroup", cg.path, "--model", a.model, tegrastats="off",
                         config=f"[govern]\nhold_s = {HOLD_S}\n")
        w = Watch(d.socket, cg)
        w.start()
        time.sleep(1.0)
        results, bursts = [], []
        for rate in [int(x) for x in a.rates.split(",") if x]:
            for n in range(a.runs if rate >= 50 else a.slow_runs):
                wait_low(w)
                r = run_ramp(w, cg, rate, timeout=max(30.0, 3 * LIMIT / MiB / rate))
                print(json.dumps({k: v for k, v in r.items() if k != "trace"}), flush=True)
                results.append(r)
                time.sleep(0.5)
        for case in cases:
            for n in range(a.burst_runs):
                wait_low(w)
                b = run_burst(w, cg, d, case)
                print(json.dumps({k: v for k, v in b.items() if k != "trace"}), flush=True)
                bursts.append(b)
                time.sleep(0.5)
        wait_low(w)
        benign = run_benign(w, cg)
        print(json.dumps({"benign": benign}), flush=True)
        w.stop.set()
        print()
        print(f"model {a.model}, cgroup v{cg.version}, limit {LIMIT // MiB} MiB, govern.hold_s {HOLD_S:g}, "
              f"sampling {d.call('sense.sources')['sample_hz']} Hz now (10 Hz base, 50 Hz when HIGH/near "
              f"exhaustion), load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs, "
              f"bench {time.monotonic() - t_bench:.0f} s")
        print(summarize(results, bursts))
        print("\nramps, every signal's lead before the OOM kill:")
        print(baselines(results))
        print(f"\nbenign page-cache run: {benign['file_mib']} MiB file read in the cgroup "
              f"(usage {benign['usage_mib_after_read']} MiB, working set {benign['working_set_mib_after_read']} MiB) "
              f"→ max band {benign['max_band']} (stress {benign['max_stress']:.3f}) over {benign['samples']} samples")
        if a.json:
            with open(a.json, "w") as fh:
                json.dump({"runs": [{k: v for k, v in r.items() if k != "trace"} for r in results],
                           "bursts": [{k: v for k, v in b.items() if k != "trace"} for b in bursts],
                           "benign": benign, "model": a.model}, fh, indent=1)
        if a.traces:
            traces = {}
            for r in results:
                if "trace" in r:
                    traces.setdefault(f"ramp {r['rate']} MiB/s", dict(r["trace"], kind="ramp", rate_mib_s=r["rate"],
                                                                      rate_reached_mib_s=r["rate_reached_mib_s"]))
            for b in bursts:
                traces.setdefault(f"burst {b['case']}" if b["case"] != "torch" else "torch import",
                                  dict(b["trace"], kind="torch" if b["case"] == "torch" else "burst",
                                       stop_frac=b["stop_frac"], rate_reached_gb_s=b["rate_reached_gb_s"]))
            with open(a.traces, "w") as fh:
                json.dump(traces, fh, separators=(",", ":"))
                fh.write("\n")
    finally:
        if d is not None:
            d.stop()
            shutil.rmtree(d.base, ignore_errors=True)
        cg.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
