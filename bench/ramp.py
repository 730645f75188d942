"""Efficacy of the stress signal on a real memory ramp (needs root and the
cgroup v1 or v2 memory controller).

A child process in a 512 MiB cgroup allocates and touches memory at a fixed
rate (25, 100, 400 MiB/s) until the kernel OOM-kills it.  Ground truth is the
kernel's own OOM notification (v1: an eventfd on memory.oom_control; v2: the
oom_kill count in memory.events, polled at 1 kHz).  A real aal-core daemon
watches the cgroup (`--cgroup`), and this script subscribes to its "stress"
topic; beside it, a 1 kHz poller evaluates the plain thresholds a user would
otherwise set on the same cgroup (available < 10 %, usage >= 90 %) and host
PSI (some avg10 >= 10).  Lead time = OOM time - first time each signal fired
in that run.  Then a benign run: a file of 70 % of the limit read into the
page cache by a process in the cgroup; it must not raise HIGH.

    sudo .venv/bin/python bench/ramp.py [--runs 5] [--rates 25,100,400] [--model fused]
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

MiB = 1 << 20
LIMIT = 512 * MiB
BANDS = ["LOW", "MODERATE", "HIGH", "CRITICAL"]

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
           "oom_kills": kills, "samples": len([1 for t, _ in samples if t <= t_oom]), "lead_s": {}}

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


def summarize(results: list[dict]) -> str:
    keys = ["aal CRITICAL", "aal HIGH", "level alone CRITICAL", "avail<10%", "usage>=90%", "psi some avg10>=10"]
    lines = ["| rate MiB/s | runs | OOM after s (median) | " + " | ".join(f"lead: {k} (median [min..max], s)" for k in keys) + " |",
             "|---" * (3 + len(keys)) + "|"]
    for rate in sorted({r["rate"] for r in results}):
        rs = [r for r in results if r["rate"] == rate and "error" not in r]
        if not rs:
            lines.append(f"| {rate} | 0 | - |" + " - |" * len(keys))
            continue
        cells = []
        for k in keys:
            vals = [r["lead_s"][k] for r in rs]
            got = [v for v in vals if v is not None]
            if not got:
                cells.append("never")
                continue
            cell = f"{statistics.median(got):.2f} [{min(got):.2f}..{max(got):.2f}]"
            if len(got) < len(vals):
                cell += f" ({len(vals) - len(got)} never)"
            cells.append(cell)
        oom = statistics.median(r["oom_after_s"] for r in rs)
        lines.append(f"| {rate} | {len(rs)} | {oom:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--rates", default="25,100,400")
    ap.add_argument("--model", default="fused", choices=["fused", "classic"])
    ap.add_argument("--json", metavar="FILE", help="also write every run as JSON")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("ramp: needs root (creates a cgroup and lets the kernel OOM-kill a child)")
    from helpers import start_daemon  # tests/helpers.py: the real daemon as a subprocess

    cg = Cgroup(f"aal-ramp-{os.getpid()}", LIMIT)
    d = None
    try:
        d = start_daemon("--cgroup", cg.path, "--model", a.model, tegrastats="off")
        w = Watch(d.socket, cg)
        w.start()
        time.sleep(1.0)
        results = []
        for rate in [int(x) for x in a.rates.split(",")]:
            for n in range(a.runs):
                wait_low(w)
                r = run_ramp(w, cg, rate, timeout=max(30.0, 3 * LIMIT / MiB / rate))
                print(json.dumps(r), flush=True)
                results.append(r)
                time.sleep(0.5)
        wait_low(w)
        benign = run_benign(w, cg)
        print(json.dumps({"benign": benign}), flush=True)
        w.stop.set()
        print()
        print(f"model {a.model}, cgroup v{cg.version}, limit {LIMIT // MiB} MiB, "
              f"sampling {d.call('sense.sources')['sample_hz']} Hz now (10 Hz base, 50 Hz when HIGH/near exhaustion)")
        print(summarize(results))
        print(f"\nbenign page-cache run: {benign['file_mib']} MiB file read in the cgroup "
              f"(usage {benign['usage_mib_after_read']} MiB, working set {benign['working_set_mib_after_read']} MiB) "
              f"→ max band {benign['max_band']} (stress {benign['max_stress']:.3f}) over {benign['samples']} samples")
        if a.json:
            with open(a.json, "w") as fh:
                json.dump({"runs": results, "benign": benign, "model": a.model}, fh, indent=1)
    finally:
        if d is not None:
            d.stop()
            shutil.rmtree(d.base, ignore_errors=True)
        cg.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
