"""Efficacy: does a training run survive a memory ramp that kills it without aal-core?

    sudo .venv/bin/python bench/governed_train.py [--runs 2]

Each run makes a real memory cgroup (v1 here: memory.limit_in_bytes; v2:
memory.max) of --limit MiB and starts examples/train_governed.py in it (a
wide residual MLP whose activations scale with the micro-batch; CPU torch,
one thread).  Once its first steps are done a second process in the same
cgroup ramps its own memory up to --hog MiB, holds it, and gives it back;
the trainer runs with oom_score_adj 1000 (in every condition), so the
kernel's OOM killer picks it, not the ramp, when the cgroup is full.

  reference  the same seed and arguments, no cgroup, no ramp, no daemon
  without    the ramp, no daemon: the trainer is OOM-killed (counted from
             the cgroup's oom_kill counter and the exit signal)
  with       aal-core runs beside it watching that cgroup (--cgroup); the
             trainer registers (train.register with its pid) and applies the
             commands it is sent: halve the micro-batch, activation
             checkpointing, checkpoint and pause, and back

Per run: killed or not, OOM kills, steps done and steps lost (done since the
last checkpoint when killed), wall time, peak cgroup usage / limit, the
commands received (from the ledger), the final loss's difference from the
reference run's.  Needs root.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "bench"))

from _cgroup import Cgroup  # noqa: E402 - bench/ is the script's directory
from helpers import start_daemon  # noqa: E402 - tests/helpers.py: the real daemon as a subprocess

EXAMPLE = os.path.join(ROOT, "examples", "train_governed.py")
MIB = 1 << 20
# The loop: 6144 samples, effective batch 2048 (3 steps an epoch), 8 epochs.
TRAIN_ARGS = ["--seed", "7", "--epochs", "8", "--samples", "6144", "--micro-batch", "2048",
              "--hidden", "4096", "--blocks", "3", "--threads", "1"]
# The ladder for a fast ramp: a halving at 0.45 and 0.5, checkpointing at
# 0.6, pause at 0.75 (cgroup used ~0.85, or a steep ramp), resume below 0.5.
TRAIN_CONFIG = """
[train]
halve_at = 0.45
halve_step = 0.05
checkpointing_at = 0.6
pause_at = 0.75
resume_below = 0.5
hysteresis = 0.1
hold_s = 2.0
"""
# Loss tolerance against the reference run: the micro-batch split changes
# only the order of float additions in the gradient.
LOSS_RTOL = 1e-3

HOG = r"""
import sys, time
mib, up_s, hold_s, down_s = (float(a) for a in sys.argv[1:5])
chunk = 8
n = max(1, int(mib // chunk))
blocks = []
for i in range(n):
    blocks.append(b"\x01" * (chunk << 20))      # written: every page resident
    time.sleep(up_s / n)
print("peak", flush=True)
time.sleep(hold_s)
for i in range(n):
    blocks.pop()
    time.sleep(down_s / n)
print("released", flush=True)
time.sleep(3600)
"""


def _clock() -> str:
    """Wall-clock time as the daemon's log writes it (HH:MM:SS.mmm, local time)."""
    now = time.time()
    return time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"


def _secs(clock: str) -> float:
    h, m, rest = clock.split(":")
    return int(h) * 3600 + int(m) * 60 + float(rest)


def climb(timeline: list[str]) -> dict:
    """Seconds from the ramp's start to each rung the daemon climbed to
    before its first lift: how fast the ladder answered the ramp."""
    start = next((_secs(t.split()[0]) for t in timeline if t.endswith("the ramp starts")), None)
    out = {}
    if start is None:
        return out
    for t in timeline:
        if " daemon: " not in t:
            continue
        if "lifted" in t:
            break
        name = t.rsplit("(", 1)[-1].rstrip(')"')
        out[name] = round(_secs(t.split()[0]) - start, 2)
    return out


def _reader(proc, lines: list, started, timeline: list):
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if line.startswith("step "):
            timeline.append(f"{_clock()} {line.rstrip()}")
        if line.startswith("step ") and started is not None and not started.is_set():
            n = int(line.split()[1])
            if n >= 3:
                started.set()


def run_once(condition: str, *, limit_mib: int, hog_mib: int, up_s: float, hold_s: float,
             down_s: float, timeout_s: float = 600.0) -> dict:
    import threading

    base = tempfile.mkdtemp(prefix="aalt", dir="/tmp")
    report = os.path.join(base, "report.json")
    cmd = [sys.executable, EXAMPLE, *TRAIN_ARGS, "--report", report, "--progress",
           "--checkpoint-dir", os.path.join(base, "ckpt")]
    cg = daemon = hog = None
    out = {"condition": condition}
    try:
        if condition == "reference":
            t0 = time.monotonic()
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
            out.update(rc=p.returncode, wall_s=time.monotonic() - t0, killed=p.returncode < 0)
            if p.returncode != 0:
                out["stderr"] = p.stderr[-2000:]
        else:
            cg = Cgroup(f"aal-train-{uuid.uuid4().hex[:8]}", limit_mib * MIB)
            if condition == "with":
                daemon = start_daemon("--cgroup", cg.path, base=base, config=TRAIN_CONFIG)
                # No --cgroup-pid: a job cgroup of its own would take the
                # trainer out of the cgroup it shares with the ramp.
                cmd += ["--socket", daemon.socket, "--run-id", "bench"]
            lines: list[str] = []
            # The timeline, for a failure's message: the trainer's steps, the
            # ramp's start and the daemon's rungs.
            timeline: list[str] = []
            out["_timeline"] = timeline
            started = threading.Event()
            t0 = time.monotonic()
            def enter():
                cg.add_self()
                with open("/proc/self/oom_score_adj", "w") as fh:
                    fh.write("1000")
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 preexec_fn=enter)
            threading.Thread(target=_reader, args=(p, lines, started, timeline), daemon=True).start()
            if not started.wait(timeout_s):
                raise RuntimeError("the trainer did not start stepping")
            timeline.append(f"{_clock()} the ramp starts")
            hog = subprocess.Popen([sys.executable, "-c", HOG, str(hog_mib), str(up_s), str(hold_s), str(down_s)],
                                   stdout=subprocess.DEVNULL, preexec_fn=cg.add_self)
            try:
                rc = p.wait(timeout_s)
            except subprocess.TimeoutExpired:
                p.kill()
                rc = p.wait()
            out.update(rc=rc, wall_s=time.monotonic() - t0, killed=rc == -signal.SIGKILL,
                       oom_kills=cg.oom_kills(), peak_fraction=cg.peak() / cg.limit)
            steps = [int(line.split()[1]) for line in lines if line.startswith("step ")]
            out["steps_done"] = max(steps, default=0)
            if rc != 0:
                out["stderr"] = p.stderr.read()[-2000:]
            if daemon is not None:
                from train_helpers import ledger_data
                cmds = [e["command"] for e in ledger_data(daemon, "train.command") if e["run_id"] == "bench"]
                reports = [e["report"] for e in ledger_data(daemon, "train.field_report") if e["run_id"] == "bench"]
                out["commands"] = [c.get("command_type") for c in cmds]
                out["applied"] = sum(1 for r in reports if r.get("outcome") == "APPLIED")
                out["rejected"] = sum(1 for r in reports if r.get("outcome") == "REJECTED")
                out["_ledger_command_ids"] = sorted(c["command_id"] for c in cmds)
                out["_ledger_applied_ids"] = sorted(r["command_id"] for r in reports if r.get("outcome") == "APPLIED")
                timeline += [line[14:26] + " daemon: " + line.split(" why=")[-1]
                             for line in daemon.log().splitlines() if " event=rung " in line]
                timeline.sort()
                out["climb_s"] = climb(timeline)
        if os.path.exists(report):
            with open(report) as fh:
                rep = json.load(fh)
            out.update(final_loss=rep["final_loss"], steps=rep["steps"], paused_s=rep["paused_s"],
                       checkpoints=rep["checkpoints"], applied_types=[a["type"] for a in rep["applied"]],
                       _applied_ids=sorted(a["command_id"] for a in rep["applied"]))
        # No checkpoint ungoverned: a killed run loses every step it made.
        out["steps_lost"] = out.get("steps_done", 0) if out.get("killed") else 0
        return out
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
        if daemon is not None:
            daemon.stop()
        if cg is not None:
            cg.remove()
        shutil.rmtree(base, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--limit", type=int, default=800, help="cgroup limit, MiB")
    ap.add_argument("--hog", type=int, default=360, help="the ramp's peak, MiB")
    ap.add_argument("--up", type=float, default=6.0, help="seconds of the ramp up")
    ap.add_argument("--hold", type=float, default=6.0)
    ap.add_argument("--down", type=float, default=3.0)
    ap.add_argument("--json", help="write every run's numbers here")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("governed_train: needs root (it creates memory cgroups)", file=sys.stderr)
        return 2
    kw = dict(limit_mib=args.limit, hog_mib=args.hog, up_s=args.up, hold_s=args.hold, down_s=args.down)
    ref = run_once("reference", **kw)
    rows = [ref]
    print(f"governed_train: cgroup limit {args.limit} MiB, ramp to {args.hog} MiB over {args.up:g} s, "
          f"hold {args.hold:g} s, down {args.down:g} s; reference loss {ref.get('final_loss')}", flush=True)
    for i in range(args.runs):
        for cond in ("without", "with"):
            r = run_once(cond, **kw)
            if "final_loss" in r and "final_loss" in ref:
                r["loss_diff"] = abs(r["final_loss"] - ref["final_loss"])
                r["loss_rel_diff"] = r["loss_diff"] / max(abs(ref["final_loss"]), 1e-12)
            rows.append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "stderr" and not k.startswith("_")}), flush=True)
    for cond in ("without", "with"):
        rs = [r for r in rows if r["condition"] == cond]
        killed = sum(1 for r in rs if r.get("killed"))
        lost = sum(r.get("steps_lost", 0) for r in rs)
        wall = sum(r["wall_s"] for r in rs) / len(rs)
        diffs = [r["loss_rel_diff"] for r in rs if "loss_rel_diff" in r]
        print(f"{cond:8s} killed {killed}/{len(rs)}  steps lost {lost}  mean wall {wall:.1f} s (reference "
              f"{ref['wall_s']:.1f} s)  max loss rel. diff "
              f"{(max(diffs) if diffs else float('nan')):.2e} (tolerance {LOSS_RTOL:g})", flush=True)
    w = [r for r in rows if r["condition"] == "with"]
    if w:
        ratio = sum(r["wall_s"] for r in w) / len(w) / ref["wall_s"]
        pauses = [r.get("commands", []).count("PAUSE") for r in w]
        paused = sum(r.get("paused_s", 0.0) for r in w) / len(w)
        print(f"with: mean wall {ratio:.2f}x the reference's (floor: 1.00x, the unperturbed run; the ramp's own "
              f"hold is {args.hold:g} s), pauses per run {pauses}, mean paused {paused:.1f} s", flush=True)
        peaks = [round(r.get("peak_fraction", float("nan")), 3) for r in w]
        print(f"with: peak use {peaks} of the limit; rungs climbed, seconds after the ramp starts (it takes "
              f"{args.up:g} s up): {[r.get('climb_s', {}) for r in w]}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
