"""How to run the four cores each beat, and what a beat costs.

    .venv/bin/python bench/venom.py [--n 20000] [--daemon-seconds 20]

Prints, side by side in one run, µs per beat for the four cores:
  floor    the four formulas as bare arithmetic in one function (no objects)
  inline   aal_core.venom.cores.InlineRunner (what the daemon uses)
  threads  ThreadRunner: a 4-worker ThreadPoolExecutor, submit + wait (the seed's way)
  seed     the seed's pattern: a dict of futures drained with as_completed
then a whole beat (cores + decision + Cython PID + recalibration) and the PID
step against simple-pid (the peer a user would otherwise reach for), and,
with --daemon-seconds, the CPU a real idle daemon spends with the loop on
(1 s beat) and off.  Ratios are against the floor and against inline.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

import simple_pid  # the peer; pip install 'aal-core[bench]'

from aal_core.venom import Anomalies, Arbiter, EntropyParams
from aal_core.venom.cores import (BalanceCore, BeatInputs, InlineRunner, ThreadRunner, entropy,
                                  optimize, regen)
from aal_core.venom.entropy import sigmoid


def per_call_us(fn, n: int) -> float:
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e6


def floor_fn(inp: BeatInputs):
    a = inp.anoms
    urgency = min(0.9, a / 100.0) if a > 0 else 0.4
    conserve = min(1.0, max(0.0, 0.3 + (1.0 - abs(inp.t_lambda - inp.t_threshold)) * 0.2))
    threat = sigmoid(inp.model.weight * a + inp.model.bias)
    gain = min(0.5, inp.o_weight * 0.12)
    return urgency, urgency * 0.5, conserve, threat, gain


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        f = fh.read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def daemon_cpu(seconds: float, enabled: bool) -> float:
    """CPU seconds per wall second of an idle daemon (tegrastats off), after start-up."""
    base = tempfile.mkdtemp(prefix="aalb", dir="/tmp")
    cfg = os.path.join(base, "c.toml")
    with open(cfg, "w") as fh:
        fh.write(f"[venom]\nenabled = {'true' if enabled else 'false'}\n")
    exe = os.path.join(os.path.dirname(sys.executable), "aal-core")
    p = subprocess.Popen([exe, "run", "--local", base, "--tegrastats", "off", "--config", cfg],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(3.0)
        c0, t0 = cpu_seconds(p.pid), time.monotonic()
        time.sleep(seconds)
        c1, t1 = cpu_seconds(p.pid), time.monotonic()
        return (c1 - c0) / (t1 - t0)
    finally:
        p.terminate()
        p.wait(10)
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--daemon-seconds", type=float, default=0.0)
    args = ap.parse_args()
    n = args.n
    inp = BeatInputs(anoms=3, t_lambda=1.0, t_threshold=0.02, o_weight=0.35, model=EntropyParams())
    bal = BalanceCore()
    inline = InlineRunner()
    threads = ThreadRunner()
    pool = ThreadPoolExecutor(max_workers=4)
    cores = {"R": regen, "B": bal, "E": entropy, "O": optimize}

    def seed_style():
        futs = {pool.submit(fn, inp): name for name, fn in cores.items()}
        return {futs[f]: f.result() for f in as_completed(futs)}

    rows = [
        ("floor (bare arithmetic)", per_call_us(lambda: floor_fn(inp), n)),
        ("inline runner", per_call_us(lambda: inline.run(bal, inp), n)),
        ("threads runner (4 workers)", per_call_us(lambda: threads.run(bal, inp), max(1000, n // 10))),
        ("seed: futures + as_completed", per_call_us(seed_style, max(1000, n // 10))),
    ]
    threads.close()
    pool.shutdown()
    floor = rows[0][1]
    inl = rows[1][1]
    print(f"four cores per beat, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print(f"{'':32s} {'µs/beat':>9s} {'× floor':>8s} {'× inline':>9s}")
    for name, us in rows:
        print(f"{name:32s} {us:9.2f} {us / floor:8.2f} {us / inl:9.2f}")

    arb = Arbiter(t_lambda=1.0)
    an = Anomalies(oom_kills=1)
    beat = per_call_us(lambda: arb.beat(an, 1.0), n)
    print(f"\nwhole beat (cores + decide + Cython PID + recalibrate): {beat:.2f} µs "
          f"= {beat / 1e6 * 100:.5f}% of one CPU at a 1 s beat, {beat / 4210.5 * 100:.3f}% at the seed's 4.2 ms")

    from aal_core.pid import PID
    ours = PID(setpoint=0.02)
    ours_us = per_call_us(lambda: ours.update(1.0, 1.0), n)
    peer = simple_pid.PID(0.6, 0.1, 0.05, setpoint=0.02, sample_time=None)
    peer_us = per_call_us(lambda: peer(1.0, dt=1.0), n)
    print(f"PID step: aal_core.pid {ours_us:.3f} µs, simple-pid {peer_us:.3f} µs "
          f"(simple-pid / ours = {peer_us / ours_us:.1f}×)")

    if args.daemon_seconds > 0:
        on = daemon_cpu(args.daemon_seconds, True)
        off = daemon_cpu(args.daemon_seconds, False)
        print(f"\nidle daemon CPU over {args.daemon_seconds:g} s: venom on {on * 100:.3f}%, "
              f"off {off * 100:.3f}%, loop's share {max(0.0, on - off) * 100:.3f}% of one CPU")


if __name__ == "__main__":
    main()
