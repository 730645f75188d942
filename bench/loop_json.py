#!/usr/bin/env python3
"""Event loop and JSON library for the daemon, chosen by measurement.

    .venv/bin/python bench/loop_json.py            (~1 min)
    .venv/bin/python bench/loop_json.py --quick    (~15 s)

1. JSON: encode and decode of the daemon's typical frames (a request, a
   system.status reply, a pushed stress sample), stdlib json (compact
   separators, what a user would reach for) vs orjson, µs per frame.
2. Round trip: the same minimal JSON-RPC line server (parse each frame,
   dispatch to a dict of handlers, encode the reply, one write per read)
   run under {asyncio, uvloop} x {json, orjson}, each in its own process on
   an AF_UNIX socket, driven by the same client, sequential and pipelined
   (window 64); the floor is a raw echo server (uvloop) on the same kind of
   socket, measured in the same run.

Not a test: nothing here asserts a time.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import timeit

import orjson

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rpc import ECHO_SERVER, pipelined, sequential  # noqa: E402  (same client code as bench/rpc.py)

REQUEST = b'{"jsonrpc":"2.0","id":17,"method":"system.status","params":{"verbose":true}}'
STATUS = {"jsonrpc": "2.0", "id": 17, "result": {
    "version": "0.1.0", "uptime_s": 1234.567, "pid": 4242, "socket": "/run/aal-core/aal-core.sock",
    "state_dir": "/var/lib/aal-core", "config_file": "/etc/aal-core/aal-core.toml",
    "config": {"daemon": {"socket": "/run/aal-core/aal-core.sock", "state_dir": "/var/lib/aal-core",
                          "log_level": "info", "stop_grace_s": 5.0, "ready_timeout_s": 10.0},
               "rpc": {"max_frame_bytes": 1048576, "max_depth": 64, "max_batch": 100,
                       "max_connections": 1000, "idle_timeout_s": 300.0, "outbox_max_frames": 256,
                       "group": "aal", "heartbeat_interval_s": 1.0},
               "sense": {"proc_root": "/proc", "tegrastats_command": "tegrastats",
                         "tegrastats_interval_ms": 1000, "cgroup": "", "sample_hz": 10.0}},
    "connections": {"open": 3, "max": 1000, "accepted_total": 1204, "refused_total": 0,
                    "dropped_total": 0, "inflight": 0},
    "hardware": {"kind": "jetson", "jetson_model": "NVIDIA Jetson Orin Nano Developer Kit",
                 "l4t_release": "36.4.3", "jetpack": "6.1/6.2", "gpus": []},
    "sources": [{"name": "meminfo", "present": True, "mode": "live"},
                {"name": "psi", "present": True, "mode": "live"},
                {"name": "tegrastats", "present": True, "mode": "live"}],
    "summary": "stress 0.41 MODERATE (fused); ledger 1822 entries; 2 jobs, level 0.10; 3 clients",
    "event_loop": "uvloop.Loop", "json_library": "orjson 3.13.0", "socket_activated": True}}
SAMPLE = {"jsonrpc": "2.0", "method": "stress.update", "params": {"subscription": "s3", "dropped": 0, "data": {
    "stress": 0.4137, "band": "MODERATE", "model": "fused",
    "components": {"mem": 0.52, "psi": 0.18, "swap": 0.0, "gpu": 0.61, "thermal": 0.33},
    "trend_per_s": 0.0123, "seconds_to_exhaustion": 182.5, "timestamp": 1763951234.123456,
    "monotonic": 81234.567}}}

SERVER = r"""
import asyncio, sys, time
LOOP, JSON, PATH = sys.argv[1:4]
if JSON == "orjson":
    import orjson
    loads = orjson.loads
    def dumps(o): return orjson.dumps(o, option=orjson.OPT_APPEND_NEWLINE)
else:
    import json
    loads = json.loads
    def dumps(o): return json.dumps(o, separators=(",", ":")).encode() + b"\n"
T0 = time.monotonic()
HANDLERS = {"system.health": lambda p: {"ok": True, "uptime_s": round(time.monotonic() - T0, 3)}}
class Rpc(asyncio.Protocol):
    def connection_made(self, t):
        self.t, self.buf = t, b""
    def data_received(self, data):
        buf = self.buf + data
        *frames, self.buf = buf.split(b"\n")
        out = []
        for f in frames:
            m = loads(f)
            out.append(dumps({"jsonrpc": "2.0", "id": m["id"], "result": HANDLERS[m["method"]](m.get("params"))}))
        if out:
            self.t.write(b"".join(out))
async def main():
    await asyncio.get_running_loop().create_unix_server(Rpc, PATH)
    print("ready", flush=True)
    await asyncio.Event().wait()
if LOOP == "uvloop":
    import uvloop
    uvloop.run(main())
else:
    asyncio.run(main())
"""


def us_per_op(fn, n):
    best = min(timeit.repeat(fn, number=n, repeat=5))
    return best / n * 1e6


def json_section(n: int) -> dict:
    res = {}
    stdlib_dumps = lambda o: json.dumps(o, separators=(",", ":")).encode()  # noqa: E731
    print("JSON (µs per frame, best of 5; lower is better)")
    print(f"  {'frame':<28}{'json':>10}{'orjson':>10}{'json/orjson':>13}")
    cases = [("decode request (80 B)", lambda: json.loads(REQUEST), lambda: orjson.loads(REQUEST)),
             ("encode status reply", lambda: stdlib_dumps(STATUS), lambda: orjson.dumps(STATUS)),
             ("decode status reply", None, None),
             ("encode stress push", lambda: stdlib_dumps(SAMPLE), lambda: orjson.dumps(SAMPLE))]
    status_bytes = orjson.dumps(STATUS)
    cases[2] = ("decode status reply", lambda: json.loads(status_bytes), lambda: orjson.loads(status_bytes))
    for name, a, b in cases:
        ta, tb = us_per_op(a, n), us_per_op(b, n)
        print(f"  {name:<28}{ta:>10.2f}{tb:>10.2f}{ta / tb:>12.1f}x")
        res[name] = {"json_us": ta, "orjson_us": tb}
    print(f"  (status reply is {len(status_bytes)} bytes)")
    return res


def loop_section(requests: int) -> dict:
    base = tempfile.mkdtemp(prefix="aalj", dir="/tmp")
    procs = {}
    res = {}
    try:
        echo_path = os.path.join(base, "echo.sock")
        procs["floor: raw echo (uvloop)"] = (subprocess.Popen([sys.executable, "-c", ECHO_SERVER, echo_path],
                                                              stdout=subprocess.PIPE, text=True), echo_path)
        for loop in ("asyncio", "uvloop"):
            for js in ("json", "orjson"):
                path = os.path.join(base, f"{loop}-{js}.sock")
                procs[f"{loop} + {js}"] = (subprocess.Popen([sys.executable, "-c", SERVER, loop, js, path],
                                                            stdout=subprocess.PIPE, text=True), path)
        for p, _ in procs.values():
            assert p.stdout.readline().strip() == "ready"
        print(f"Round trip, system.health-like, {requests} requests (best of 3, interleaved)")
        print(f"  {'server':<28}{'seq req/s':>12}{'p50 µs':>9}{'p99 µs':>9}{'pipe req/s':>13}{'p50 µs':>9}")
        best: dict = {k: {} for k in procs}
        for _ in range(3):
            for name, (_, path) in procs.items():
                for mode, fn in (("seq", sequential), ("pipe", pipelined)):
                    r = fn(path, requests)
                    if r["rps"] > best[name].get(mode, {"rps": 0})["rps"]:
                        best[name][mode] = r
        for name, r in best.items():
            print(f"  {name:<28}{r['seq']['rps']:>12,.0f}{r['seq']['p50_us']:>9.1f}{r['seq']['p99_us']:>9.1f}"
                  f"{r['pipe']['rps']:>13,.0f}{r['pipe']['p50_us']:>9.1f}")
        peer = best["asyncio + json"]
        floor = best["floor: raw echo (uvloop)"]
        for name in ("asyncio + orjson", "uvloop + json", "uvloop + orjson"):
            r = best[name]
            print(f"  {name}: {r['seq']['rps'] / peer['seq']['rps']:.2f}x seq, "
                  f"{r['pipe']['rps'] / peer['pipe']['rps']:.2f}x pipelined vs asyncio + json; "
                  f"{r['pipe']['rps'] / floor['pipe']['rps']:.2f}x of the echo floor pipelined")
        res = best
    finally:
        for p, _ in procs.values():
            p.kill()
            p.wait()
        shutil.rmtree(base, ignore_errors=True)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    a = ap.parse_args(argv)
    n, reqs = (2000, 5000) if a.quick else (20000, 30000)
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, orjson {orjson.__version__}")
    out = {"json": json_section(n), "loop": loop_section(reqs)}
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
