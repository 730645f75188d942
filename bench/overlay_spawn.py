#!/usr/bin/env python3
"""The spawn alone: the C clone(CLONE_VM|CLONE_VFORK) path against a fork
with the same confinement as a preexec_fn, in one run.

    .venv/bin/python bench/overlay_spawn.py             200 spawns per case
    .venv/bin/python bench/overlay_spawn.py --ballast 60   with 60 MiB touched first

Each case starts /bin/true confined for CLEAR (Landlock + seccomp here) and
times until the spawn call returns (the process has exec'd), then reaps it:

- vfork: `Prepared.spawn` (ext/includes/aal_spawn.h), the daemon's path;
- preexec: `subprocess.Popen(..., preexec_fn=Prepared.apply)`, a fork of
  this process running the same C steps in the child (the old path);
- fork, no preexec: `subprocess.Popen` with no preexec_fn (CPython may then
  use vfork itself), the peer.

`--ballast N` touches N MiB first, as a daemon holds memory: a fork copies
its page tables, a vfork does not.  Not a test: nothing asserts a time.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--ballast", type=int, default=0, help="MiB to touch first")
    args = ap.parse_args(argv)
    from aal_core.config import OverlaysConfig
    from aal_core.overlays import sandbox as sb
    ballast = bytearray(args.ballast << 20)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    cfg = OverlaysConfig()
    mech = sb.probe(cfg)
    times: dict[str, list[float]] = {"vfork (C, the daemon's)": [], "fork + preexec_fn (before)": [],
                                     "fork, no preexec (peer)": []}
    for _ in range(2):
        for name in times:
            for _ in range(args.n):
                conf = sb.plan("CLEAR", "analysis", mechanisms=mech, config=cfg)
                prep = conf.prepare(cwd="/", exe="/bin/true")
                t0 = time.perf_counter()
                if name.startswith("vfork"):
                    pid, pidfd, step, err = prep.spawn("/bin/true", ["true"], [], (0, 1, 2))
                    times[name].append(time.perf_counter() - t0)
                    assert step == 0, (step, err)
                    os.waitpid(pid, 0)
                    os.close(pidfd)
                else:
                    p = subprocess.Popen(["/bin/true"], env={}, close_fds=True, start_new_session=True,
                                         preexec_fn=prep.apply if "preexec_fn" in name else None)
                    times[name].append(time.perf_counter() - t0)
                    p.wait()
                conf.cleanup()
    print(f"spawn of /bin/true confined for CLEAR ({mech.clear_mechanism}), {args.n} x 2 rounds, "
          f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"ballast {args.ballast} MiB, load {os.getloadavg()[0]:.2f}")
    peer = statistics.median(times["fork, no preexec (peer)"])
    for name, v in times.items():
        p50 = statistics.median(v)
        p99 = sorted(v)[int(len(v) * 0.99)]
        print(f"{name:28} p50 {p50 * 1000:7.3f} ms  p99 {p99 * 1000:7.3f} ms  {p50 / peer:5.2f}x the peer")
    return 0


if __name__ == "__main__":
    sys.exit(main())
