"""What one step of the overlay confinement costs a spawn: the seccomp filter.

Median time to run /bin/true with three pipes, interleaved, under uvloop and
under asyncio, with a preexec Prepared (aal_core.confine) that does:
nothing; a one-instruction allow-all filter; CLEAR's whole program; that
and RLIMIT_NOFILE 1024.  (The id change, Landlock, the scratch directory and
rlimits were within the noise: bench/overlay_sandbox.py.)  Results:
bench/results/overlay_sandbox.txt.  Usage: python bench/overlay_seccomp_cost.py [rounds]
"""
from __future__ import annotations

import asyncio
import resource
import statistics
import struct
import sys
import time

import uvloop

from aal_core import confine as c
from aal_core.overlays import sandbox as sb

PIPE = asyncio.subprocess.PIPE
ALLOW = struct.pack("=HBBI", 6, 0, 0, 0x7FFF0000)
FULL = sb.seccomp_program(tuple(sb._CLEAR_DENY), "none")
WAYS = {"nothing": lambda: c.Prepared(die_with_parent=False, no_new_privs=False),
        "allow1": lambda: c.Prepared(seccomp=ALLOW),
        "full": lambda: c.Prepared(seccomp=FULL),
        "full+nofile": lambda: c.Prepared(seccomp=FULL, rlimits=[(resource.RLIMIT_NOFILE, 1024, 1024)])}


async def run(make) -> float:
    t = time.perf_counter()
    p = await asyncio.create_subprocess_exec("/bin/true", stdin=PIPE, stdout=PIPE, stderr=PIPE,
                                             start_new_session=True, env={}, preexec_fn=make().apply)
    await p.communicate()
    return time.perf_counter() - t


async def main(kind: str, rounds: int) -> None:
    ts = {k: [] for k in WAYS}
    for _ in range(rounds):
        for k, make in WAYS.items():
            ts[k].append(await run(make))
    print(kind, {k: round(statistics.median(v) * 1e3, 3) for k, v in ts.items()})


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 150
    uvloop.run(main("uvloop", n))
    asyncio.run(main("asyncio", n))
