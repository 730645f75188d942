"""Efficacy: does a cooperating workload survive a memory ramp that kills it without aal-core?

    sudo .venv/bin/python bench/governed_ramp.py [--runs 5] [--seconds 12] [--rate 100]

Each run makes a real memory cgroup (v1 here: memory.limit_in_bytes; v2:
memory.max) with a 512 MiB limit, and starts examples/toy_decoder.py inside
it: a toy decoder whose KV cache grows at --rate MiB/s towards 1 GiB.

  without  the workload alone: the kernel's OOM killer ends it (counted from
           the cgroup's oom_kill counter and the exit signal);
  with     aal-core runs beside it watching that cgroup (--cgroup), and the
           workload registers (subscribe + job.submit) and obeys and acks the
           directives pushed to it.

Per run: the growth rate it really reached (the KV cache's size in the
workload's progress lines, from its first line to its first peak: before
the first shrink or the kill; a run below half the target rate is
marked invalid and left out of the table: on a loaded machine the workload
cannot always grow as fast as asked, and an "ungoverned" run that only
reached 24 MiB/s and survived measures nothing), OOM kills, peak usage /
limit (max_usage_in_bytes / memory.peak),
directives, flips (step applied or lifted), apply/lift cycles of the busiest
step, tokens generated (useful work), and the latency from the stress sample
that crossed a threshold to the client's acknowledgement.  Both conditions
run interleaved in one invocation.  A run lasts the ramp (max KV / rate)
plus 3 x govern.hold_s, so lifts have room to happen (the apply/lift cycle
count is not bounded by the run's length).  Needs root.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from _cgroup import Cgroup  # noqa: E402 - bench/ is the script's directory
from helpers import start_daemon  # noqa: E402 - tests/helpers.py: the real daemon as a subprocess

WORKLOAD = os.path.join(ROOT, "examples", "toy_decoder.py")
LIMIT = 512 << 20
PROFILE = ("MEM[SOFT=384,HARD=512,VOL=HIGH]; KV[CAP=1.0,POLICY=WINDOW,PURGE=ON_STRESS]; "
           "TIER=LOCAL; PRIORITY=5; DEGRADE{STEP1:SHRINK_KV(0.75),STEP2:SHRINK_KV(0.5),"
           "STEP3:CONTEXT(256),STEP4:OFFLOAD(COLD)}")


HOLD_S = 5.0                      # govern.hold_s (the default)
MAX_KV_MIB = 1024
VALID_FRACTION = 0.5              # a run below this fraction of the target rate is invalid


class Progress:
    """The workload's `progress tokens=N kv_mib=M` lines (every 0.25 s), each
    stamped when it arrives, for the KV growth rate the run really reached."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[tuple[float, str]] = []
        self.err = ""
        self.threads = [threading.Thread(target=self._out, args=(proc.stdout,), daemon=True),
                        threading.Thread(target=self._err, args=(proc.stderr,), daemon=True)]
        for t in self.threads:
            t.start()

    def _out(self, fh):
        for line in fh:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def _err(self, fh):
        self.err = fh.read()

    def join(self):
        for t in self.threads:
            t.join(5.0)

    def kv(self) -> list[tuple[float, float, int]]:
        out = []
        for t, line in self.lines:
            if line.startswith("progress tokens="):
                f = dict(x.split("=", 1) for x in line.split()[1:])
                out.append((t, float(f.get("kv_mib", 0)), int(f["tokens"])))
        return out

    def rate_mib_s(self) -> float | None:
        """MiB/s the KV cache grew at from the first progress line to its
        first peak (before the first shrink, or the kill)."""
        pts = [(t, kv) for t, kv, _n in self.kv()]
        if len(pts) < 2:
            return None
        peak = next((k for k in range(len(pts) - 1) if pts[k + 1][1] < pts[k][1]), len(pts) - 1)
        (ta, a), (tb, b) = pts[0], pts[peak]
        if tb <= ta:
            return 0.0
        return round((b - a) / (tb - ta), 1)


def run_once(governed: bool, seconds: float, rate: float) -> dict:
    cg = Cgroup(f"aal-bench-{uuid.uuid4().hex[:8]}", LIMIT)
    base = tempfile.mkdtemp(prefix="aalr", dir="/tmp")
    daemon = start_daemon("--cgroup", cg.path, base=base) if governed else None
    report = os.path.join(base, "report.json")
    cmd = [sys.executable, WORKLOAD, "--seconds", str(seconds), "--kv-mib-per-s", str(rate),
           "--max-kv-mib", str(MAX_KV_MIB), "--profile", PROFILE, "--report", report, "--progress", "--quiet"]
    if governed:
        cmd += ["--socket", daemon.socket, "--job-id", "ramp"]
    t0 = time.monotonic()
    # Enter the cgroup before exec, so every page of the workload is charged to it.
    w = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=cg.add_self)
    prog = Progress(w)
    try:
        w.wait(seconds + 60)
    except subprocess.TimeoutExpired:
        w.kill()
        w.wait()
    prog.join()
    wall = time.monotonic() - t0
    reached = prog.rate_mib_s()
    kv = prog.kv()
    tokens = kv[-1][2] if kv else 0
    out = {"governed": governed, "rc": w.returncode, "killed": w.returncode == -signal.SIGKILL,
           "oom_kills": cg.oom_kills(), "peak_over_limit": cg.peak() / LIMIT, "tokens": tokens,
           "wall_s": wall, "directives": 0, "flips": 0, "max_cycles_per_step": 0, "latencies": [],
           "rate_reached_mib_s": reached, "kv_mib": [(round(t - t0, 2), v) for t, v, _n in kv],
           "valid": reached is not None and reached >= VALID_FRACTION * rate}
    if os.path.exists(report):
        rep = json.load(open(report))
        out["tokens"] = rep["tokens"]
        ds = rep["directives"]
        out["directives"] = len(ds)
        out["latencies"] = [d["latency_s"] for d in ds if d.get("latency_s") is not None]
        per_step: dict[int, list[str]] = {}
        for d in ds:
            if d["kind"] in ("APPLY", "LIFT"):
                for s in d["steps"]:
                    per_step.setdefault(s, []).append(d["kind"])
        out["flips"] = sum(len(v) for v in per_step.values())
        # a cycle: an APPLY followed later by a LIFT of the same step
        out["max_cycles_per_step"] = max((v.count("LIFT") for v in per_step.values()), default=0)
        out["trace"] = [(d["t"], d["kind"], d["steps"], round(d["stress"], 3)) for d in ds]
    elif w.returncode != 0 and not out["killed"]:
        out["stderr"] = prog.err[-2000:]
    if daemon is not None:
        daemon.stop()
    cg.remove()
    shutil.rmtree(base, ignore_errors=True)
    return out


def _fmt(vals, f="{:.2f}"):
    if not vals:
        return "-"
    return f"{f.format(statistics.median(vals))} [{f.format(min(vals))}..{f.format(max(vals))}]"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=None,
                    help=f"per run (default: the ramp, {MAX_KV_MIB} MiB / rate, + 3 x hold_s = {3 * HOLD_S:g} s)")
    ap.add_argument("--rate", type=float, default=100.0, help="KV growth, MiB/s")
    ap.add_argument("--json", help="write every run's numbers here")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("governed_ramp: needs root (it creates memory cgroups)", file=sys.stderr)
        return 2
    if args.seconds is None:
        args.seconds = round(MAX_KV_MIB / args.rate + 3 * HOLD_S, 1)
    runs = {False: [], True: []}
    for i in range(args.runs):
        for governed in (False, True):
            r = run_once(governed, args.seconds, args.rate)
            runs[governed].append(r)
            print(f"run {i + 1} {'with' if governed else 'without':7s}: "
                  f"rate={r['rate_reached_mib_s']} MiB/s{'' if r['valid'] else ' INVALID'} "
                  f"rc={r['rc']} oom_kills={r['oom_kills']} "
                  f"peak/limit={r['peak_over_limit']:.3f} tokens={r['tokens']} directives={r['directives']} "
                  f"flips={r['flips']} cycles/step={r['max_cycles_per_step']}"
                  + (f" ack_latency_ms={[round(x * 1000, 1) for x in r['latencies']]}" if r["latencies"] else "")
                  + (f"\n    {r.get('stderr', '')}" if r.get("stderr") else ""), flush=True)
            if args.verbose and r.get("trace"):
                for t in r["trace"]:
                    print("    ", t)
    print()
    print(f"governed_ramp: {args.runs} runs each, cgroup limit {LIMIT >> 20} MiB, KV growth {args.rate:g} MiB/s "
          f"towards {MAX_KV_MIB} MiB, {args.seconds:g} s per run (ramp + 3 x hold_s {HOLD_S:g} s), "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; a run below "
          f"{VALID_FRACTION * args.rate:g} MiB/s ({VALID_FRACTION:.0%} of the target) is invalid and left out")
    print(f"{'':28s} {'without aal-core':>24s} {'with aal-core':>24s}")
    every = {g: list(rs) for g, rs in runs.items()}
    print(f"{'valid runs':28s} {sum(r['valid'] for r in every[False]):>21d}/{len(every[False])}"
          f"{'':1s} {sum(r['valid'] for r in every[True]):>21d}/{len(every[True])}")
    print(f"{'growth reached MiB/s (all)':28s} {_fmt([r['rate_reached_mib_s'] or 0.0 for r in every[False]], '{:.0f}'):>24s} "
          f"{_fmt([r['rate_reached_mib_s'] or 0.0 for r in every[True]], '{:.0f}'):>24s}")
    runs = {g: [r for r in rs if r["valid"]] for g, rs in every.items()}
    rows = [
        ("runs OOM-killed", lambda rs: f"{sum(1 for r in rs if r['oom_kills'] or r['killed'])}/{len(rs)}"),
        ("OOM kills (total)", lambda rs: str(sum(r["oom_kills"] for r in rs))),
        ("peak usage / limit", lambda rs: _fmt([r["peak_over_limit"] for r in rs], "{:.3f}")),
        ("tokens generated", lambda rs: _fmt([r["tokens"] for r in rs], "{:.0f}")),
        ("directives per run", lambda rs: _fmt([r["directives"] for r in rs], "{:.0f}")),
        ("flips per run", lambda rs: _fmt([r["flips"] for r in rs], "{:.0f}")),
        ("max apply/lift cycles/step", lambda rs: str(max((r["max_cycles_per_step"] for r in rs), default=0))),
        ("ack latency ms (median)", lambda rs: _fmt([x * 1000 for r in rs for x in r["latencies"]], "{:.1f}")),
    ]
    for name, f in rows:
        print(f"{name:28s} {f(runs[False]):>24s} {f(runs[True]):>24s}")
    wo = [r["tokens"] for r in runs[False]]
    wi = [r["tokens"] for r in runs[True]]
    if wo and wi and statistics.median(wo):
        print(f"useful work, with / without: {statistics.median(wi) / statistics.median(wo):.2f}x")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"rate": args.rate, "seconds": args.seconds, "hold_s": HOLD_S,
                       "without": every[False], "with": every[True]}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
