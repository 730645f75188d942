"""What the overlay sandbox adds to a spawn (README, "Confinement").

Each round starts /bin/true with stdin/stdout/stderr pipes through the
event loop the daemon uses (uvloop) and waits for it, four ways, interleaved
so that load on the machine hits them alike:

  floor    asyncio.create_subprocess_exec, no preexec_fn (libuv may vfork)
  peer     the same with a Python preexec_fn that only changes identity
           (os.setgroups/setresgid/setresuid; no Landlock, no seccomp);
           uvloop has no user=/group=; as root only
  ascend   sandbox.spawn of an ASCEND/exec plan (identity, rlimits,
           no_new_privs, seccomp unix-only, Landlock signal scope)
  clear    sandbox.spawn of a CLEAR/analysis plan (+ Landlock read-only
           domain with its rules, the CLEAR seccomp program)

Prints p50/p99 per way and each way's p50 minus the floor's and ratio to it.
Usage: python bench/overlay_sandbox.py [rounds]   (root: the overlay user must exist)
"""
from __future__ import annotations

import asyncio
import os
import pwd
import statistics
import sys
import time

import uvloop

from aal_core.config import OverlaysConfig
from aal_core.overlays import sandbox as sb

PIPE = asyncio.subprocess.PIPE
ARGV = ["/bin/true"]


async def once(start) -> float:
    t0 = time.perf_counter()
    proc = await start()
    await proc.communicate()
    dt = time.perf_counter() - t0
    assert proc.returncode == 0, proc.returncode
    return dt


async def main(rounds: int) -> None:
    cfg = OverlaysConfig()
    mech = sb.probe(cfg)
    print(f"mechanisms: {mech.to_dict(cfg)}")
    ways = {}
    ways["floor"] = lambda: asyncio.create_subprocess_exec(*ARGV, stdin=PIPE, stdout=PIPE, stderr=PIPE,
                                                           start_new_session=True, env={})
    if os.geteuid() == 0:
        pw = pwd.getpwnam(cfg.user)

        def drop(uid=pw.pw_uid, gid=pw.pw_gid):
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)

        ways["peer"] = lambda: asyncio.create_subprocess_exec(
            *ARGV, stdin=PIPE, stdout=PIPE, stderr=PIPE, start_new_session=True, env={}, preexec_fn=drop)
    plans = {"ascend": sb.plan("ASCEND", "exec", network=False, mechanisms=mech, config=cfg),
             "clear": sb.plan("CLEAR", "analysis", mechanisms=mech, config=cfg)}
    for name, conf in plans.items():
        ways[name] = (lambda conf=conf: sb.spawn(ARGV, conf, env={}, cwd="/"))
    times = {k: [] for k in ways}
    for _ in range(20):  # warm-up
        for start in ways.values():
            await once(start)
    for _ in range(rounds):
        for k, start in ways.items():
            times[k].append(await once(start))
    for conf in plans.values():
        conf.cleanup()
    floor = statistics.median(times["floor"])
    print(f"{rounds} rounds of {ARGV[0]}, uvloop, {os.cpu_count()} CPUs, euid {os.geteuid()}")
    print(f"{'way':8} {'p50 ms':>8} {'p99 ms':>8} {'p50-floor ms':>13} {'ratio':>6}")
    for k, ts in times.items():
        ts = sorted(ts)
        p50, p99 = statistics.median(ts), ts[min(len(ts) - 1, int(len(ts) * 0.99))]
        print(f"{k:8} {p50 * 1e3:8.3f} {p99 * 1e3:8.3f} {(p50 - floor) * 1e3:13.3f} {p50 / floor:6.2f}x")


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 300))
