#!/usr/bin/env python3
"""The overlay bus's cost over spawning the program yourself, in one run.

    .venv/bin/python bench/overlays.py            300 calls per case
    .venv/bin/python bench/overlays.py --quick    60 calls per case
    .venv/bin/python bench/overlays.py --no-cgroup    without the per-call cgroup
    .venv/bin/python bench/overlays.py --stages   also where a call's time goes

--stages runs the daemon with AAL_OVERLAY_STAGES (the unit then writes one
line of per-stage milliseconds per call) and prints each stage's p50 and
mean per phase; "rpc + loop" is the client's p50 minus the daemon's: the
JSON-RPC round trip, framing and the event loop's scheduling.

The trivial proc overlay is `cat`: it reads the canonical JSON request on
stdin and writes it back, which is one JSON object, so the bus accepts it.
Cases, each sequential (one call at a time), p50/p99 latency and calls/s:

1. floor: fork/exec `cat` with asyncio (uvloop, as the daemon), write the
   request, read to EOF, wait: the least any proc runner can do.
2. floor + sandbox: the same through sandbox.spawn with the confinement the
   daemon would use (OPEN, and CLEAR: Landlock + seccomp here), no bus:
   the daemon's own spawn (clone(CLONE_VM|CLONE_VFORK) in C, no fork).
3. overlay.invoke in OPEN and in CLEAR through a real daemon: admission,
   a cgroup per call, confinement, the run, the provenance line (fsync)
   and its ledger entry (fsync), the JSON-RPC round trip.

The bus's own cost is (3) minus (2) of the same phase (goal: <= 2 ms p50);
(3) minus (1) is what a caller pays over running the program unconfined.
4. fsync: append a 700-byte line to a file in the daemon's state directory
   and fsync it, the one durable write on a call's path (the provenance
   record), to tell the disk's share of (3) - (2) from the bus's own.
Not a test: nothing here asserts a time.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

BIN = os.path.dirname(sys.executable)
MANIFEST = {
    "name": "trivial", "version": "1", "description": "cat: echoes the request",
    "entrypoints": {"proc": {"command": ["cat"]}},
    "phases": ["OPEN", "CLEAR"],
    "capabilities": {"echo": {"runner": "proc", "class": "analysis", "timeout_s": 10,
                              "default_profile": "MEM[SOFT=64,HARD=128,VOL=LOW]; PRIORITY=5"}},
    "policy": {"deterministic": True},
}
REQUEST = json.dumps({"capability": "echo", "degradation": {}, "payload": {"text": "hello"},
                      "phase": "OPEN", "run_id": "0" * 64}, sort_keys=True,
                     separators=(",", ":")).encode()


def stats(samples: list[float]) -> dict:
    s = sorted(samples)
    return {"p50_ms": statistics.median(s) * 1000, "p99_ms": s[min(len(s) - 1, int(len(s) * 0.99))] * 1000,
            "calls_s": len(s) / sum(s)}


async def _one(spawn_coro) -> float:
    t0 = time.perf_counter()
    proc = await spawn_coro()
    out, _ = await proc.communicate(REQUEST)
    await proc.wait()
    assert out == REQUEST, out[:80]
    return time.perf_counter() - t0


async def floor(n: int, cwd: str) -> list[float]:
    async def sp():
        return await asyncio.create_subprocess_exec(
            "cat", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, cwd=cwd, start_new_session=True,
            env={"PATH": "/usr/bin:/bin"})
    return [await _one(sp) for _ in range(n)]


async def floor_sandbox(n: int, cwd: str, phase: str) -> list[float] | str:
    from aal_core.config import OverlaysConfig
    from aal_core.overlays.sandbox import SandboxUnavailable, plan, probe, spawn
    cfg = OverlaysConfig()
    mech = probe(cfg)
    out = []
    for _ in range(n):
        try:
            conf = plan(phase=phase, cap_class="analysis", network=False, mechanisms=mech, config=cfg)
        except SandboxUnavailable as exc:
            return f"refused: {exc}"

        async def sp(conf=conf):
            return await spawn(["cat"], conf, env={"PATH": "/usr/bin:/bin"}, cwd=cwd)
        t0 = time.perf_counter()
        await _one(sp)
        conf.cleanup()
        out.append(time.perf_counter() - t0)
    return out


def fsync_floor(n: int, base: str) -> list[float]:
    path = os.path.join(base, "state", "bench-fsync.jsonl")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    line = b"x" * 699 + b"\n"
    out = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            os.write(fd, line)
            os.fsync(fd)
            out.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        os.unlink(path)
    return out


def bus(n: int, base: str, phase: str) -> list[float] | str:
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
    from aal_core.client import Client
    sock = os.path.join(base, "aal-core.sock")
    out = []
    with Client(sock, timeout=60) as c:
        for i in range(n):
            t0 = time.perf_counter()
            r = c.call("overlay.invoke", {"overlay": "trivial", "capability": "echo", "phase": phase,
                                          "payload": {"text": "hello"}})
            out.append(time.perf_counter() - t0)
            if not r["ok"]:
                return f"{r['error']['code']}: {r['error']['message']}"
    return out


def start_daemon(base: str, cgroups: bool = True, stages: str | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "NOTIFY_", "WATCHDOG_"))}
    if stages:
        env["AAL_OVERLAY_STAGES"] = stages
    err = open(os.path.join(base, "daemon.stderr"), "wb")
    cmd = [os.path.join(BIN, "aal-core"), "run", "--local", base, "--tegrastats", "off"]
    if not cgroups:
        cfg = os.path.join(base, "aal-core.toml")
        with open(cfg, "w") as fh:
            fh.write('[govern]\ncgroup_root = "off"\n')
        cmd += ["--config", cfg]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
    from aal_core.client import Client
    sock = os.path.join(base, "aal-core.sock")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if os.path.exists(sock):
            try:
                with Client(sock) as c:
                    c.call("system.health")
                return p
            except Exception:  # noqa: BLE001
                pass
        time.sleep(0.05)
    p.kill()
    raise SystemExit("the daemon did not start:\n" + open(os.path.join(base, "daemon.stderr")).read())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("-n", type=int, default=None)
    ap.add_argument("--no-cgroup", action="store_true",
                    help="govern.cgroup_root = off: no per-call cgroup (shows what the cgroup costs)")
    ap.add_argument("--stages", action="store_true",
                    help="per-stage breakdown of a call inside the daemon (AAL_OVERLAY_STAGES)")
    args = ap.parse_args(argv)
    n = args.n or (60 if args.quick else 300)
    import uvloop
    base = tempfile.mkdtemp(prefix="aalb", dir="/tmp")
    os.chmod(base, 0o711)
    src = os.path.join(base, "src", "trivial")
    os.makedirs(src)
    os.chmod(os.path.join(base, "src"), 0o755)
    with open(os.path.join(src, "manifest.json"), "w") as fh:
        json.dump(MANIFEST, fh)
    os.chmod(src, 0o755)
    results: dict = {}
    stages_file = os.path.join(base, "stages.jsonl") if args.stages else None
    stages: dict = {}
    d = start_daemon(base, cgroups=not args.no_cgroup, stages=stages_file)
    try:
        from aal_core.client import Client
        with Client(os.path.join(base, "aal-core.sock")) as c:
            c.call("overlay.install", {"path": src})
            mech = c.call("system.status")["overlays"]["confinement"]
        warm = max(5, n // 10)
        for phase in ("OPEN", "CLEAR"):
            bus(warm, base, phase)
        uvloop.run(floor(warm, src))
        # Interleaved: each case in turn, twice, so drift on a shared machine hits all alike.
        for rnd in range(2):
            for name, fn in (("floor: fork/exec cat", lambda: uvloop.run(floor(n, src))),
                             ("floor + sandbox OPEN", lambda: uvloop.run(floor_sandbox(n, src, "OPEN"))),
                             ("floor + sandbox CLEAR", lambda: uvloop.run(floor_sandbox(n, src, "CLEAR"))),
                             ("overlay.invoke OPEN", lambda: bus(n, base, "OPEN")),
                             ("overlay.invoke CLEAR", lambda: bus(n, base, "CLEAR")),
                             ("fsync 700 B (state dir)", lambda: fsync_floor(n, base))):
                mark = os.path.getsize(stages_file) if stages_file and os.path.exists(stages_file) else 0
                got = fn()
                if stages_file and name.startswith("overlay.invoke"):
                    with open(stages_file, "rb") as fh:
                        fh.seek(mark)
                        for line in fh.read().splitlines():
                            for k, v in json.loads(line).items():
                                stages.setdefault(name, {}).setdefault(k, []).append(v)
                if isinstance(got, str):
                    results[name] = got
                else:
                    results.setdefault(name, []).extend(got)
    finally:
        d.terminate()
        d.wait(15)
        shutil.rmtree(base, ignore_errors=True)
    print(f"overlay bus, {n} sequential calls per case x 2 rounds; {platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}; CLEAR: {mech.get('clear', '?')}"
          + ("; no per-call cgroup (--no-cgroup)" if args.no_cgroup else ""))
    print(f"{'case':26} {'p50 ms':>9} {'p99 ms':>9} {'calls/s':>9}")
    st = {}
    for name, v in results.items():
        if isinstance(v, str):
            print(f"{name:26} {v}")
            continue
        st[name] = stats(v)
        s = st[name]
        print(f"{name:26} {s['p50_ms']:9.2f} {s['p99_ms']:9.2f} {s['calls_s']:9.1f}")
    print()
    for phase in ("OPEN", "CLEAR"):
        b, f, f0 = (st.get(f"overlay.invoke {phase}"), st.get(f"floor + sandbox {phase}"),
                    st.get("floor: fork/exec cat"))
        if b and f and f0:
            print(f"{phase}: bus over its sandboxed floor {b['p50_ms'] - f['p50_ms']:+.2f} ms p50 "
                  f"({b['p50_ms'] / f['p50_ms']:.2f}x), over the bare floor {b['p50_ms'] - f0['p50_ms']:+.2f} ms "
                  f"({b['p50_ms'] / f0['p50_ms']:.2f}x); goal <= +2 ms over the floor")
    for name, per in stages.items():
        print(f"\n{name}, inside the daemon (ms per call; stages in call order):")
        print(f"  {'stage':24} {'p50':>8} {'mean':>8}")
        for k, v in per.items():
            print(f"  {k:24} {statistics.median(v):8.3f} {statistics.fmean(v):8.3f}")
        if name in st and "total" in per:
            print(f"  {'rpc + loop (client-daemon)':24} {st[name]['p50_ms'] - statistics.median(per['total']):8.3f}")
    fs = st.get("fsync 700 B (state dir)")
    if fs:
        print(f"of which the disk: one fsync of the provenance line, {fs['p50_ms']:.2f} ms p50 here")
    return 0


if __name__ == "__main__":
    sys.exit(main())
