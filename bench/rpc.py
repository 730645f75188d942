#!/usr/bin/env python3
"""JSON-RPC benchmark of the real daemon, next to its floor, in one run.

    .venv/bin/python bench/rpc.py                     full (idle measured over 60 s)
    .venv/bin/python bench/rpc.py --idle-seconds 10   shorter idle window
    .venv/bin/python bench/rpc.py --quick             fewer requests, 5 s idle

1. system.health, one client, sequential (send, wait for the reply, repeat):
   requests/s and p50/p99 latency.
2. system.health, one client pipelining (a window of 64 requests in flight).
   Both against the floor: a raw echo server (uvloop, same kind of AF_UNIX
   stream socket, same bytes, same client code) measured in the same run, so
   the ratio is the cost of framing + JSON + dispatch + the handler.
   The peer a user would otherwise reach for is a plain asyncio + json
   line server doing the same dispatch (bench/loop_json.py measures that
   comparison in detail).
   The peer of issue 13's goals: the minimal uvloop + orjson line server
   of bench/loop_json.py (split, parse, dispatch, encode, one write per
   read), also in the same run: goals >= 0.9x sequential, >= 0.8x pipelined.
3. The daemon's idle RSS, and its CPU use and wake-ups while idle (no
   clients) over --idle-seconds: CPU from /proc/<pid>/schedstat (ns on a
   CPU, exact), wake-ups = times its threads were scheduled in (schedstat's
   third field); goals RSS <= 40 MiB, CPU <= 0.5 % of one core.

Not a test: nothing here asserts a time.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import psutil

BIN = os.path.dirname(sys.executable)
REQ = b'{"jsonrpc":"2.0","id":1,"method":"system.health"}\n'

ECHO_SERVER = r"""
import asyncio, sys, uvloop
class Echo(asyncio.Protocol):
    def connection_made(self, t): self.t = t
    def data_received(self, d): self.t.write(d)
async def main(path):
    srv = await asyncio.get_running_loop().create_unix_server(Echo, path)
    print("ready", flush=True)
    await asyncio.Event().wait()
uvloop.run(main(sys.argv[1]))
"""


def _connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    return s


def _read_lines(sock, buf: bytearray, n: int) -> None:
    """Read until n complete lines are in; drop them from buf."""
    while buf.count(b"\n") < n:
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise RuntimeError("server closed the connection")
        buf += chunk
    cut = 0
    for _ in range(n):
        cut = buf.index(b"\n", cut) + 1
    del buf[:cut]


def sequential(path: str, n: int) -> dict:
    s = _connect(path)
    buf = bytearray()
    lat = []
    for _ in range(min(n // 10, 1000)):          # warm up
        s.sendall(REQ)
        _read_lines(s, buf, 1)
    t0 = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        s.sendall(REQ)
        _read_lines(s, buf, 1)
        lat.append(time.perf_counter() - t)
    dt = time.perf_counter() - t0
    s.close()
    return _summary(n, dt, lat)


def pipelined(path: str, n: int, window: int = 64) -> dict:
    """`window` requests in flight; latency is send→reply of each request."""
    s = _connect(path)
    buf = bytearray()
    sent_at: list[float] = []
    lat = []
    t0 = time.perf_counter()
    sent = done = 0
    while done < n:
        k = min(window - (sent - done), n - sent)
        if k > 0:
            now = time.perf_counter()
            s.sendall(REQ * k)
            sent_at.extend([now] * k)
            sent += k
        chunk = s.recv(1 << 16)
        if not chunk:
            raise RuntimeError("server closed the connection")
        buf += chunk
        got = buf.count(b"\n")
        if got:
            now = time.perf_counter()
            lat.extend(now - sent_at[done + i] for i in range(got))
            done += got
            del buf[:buf.rindex(b"\n") + 1]
    dt = time.perf_counter() - t0
    s.close()
    return _summary(n, dt, lat)


def _summary(n, dt, lat) -> dict:
    lat = sorted(lat)
    return {"rps": n / dt, "p50_us": lat[len(lat) // 2] * 1e6,
            "p99_us": lat[int(len(lat) * 0.99)] * 1e6, "n": n}


def start_daemon(base: str) -> subprocess.Popen:
    sock = os.path.join(base, "aal-core.sock")
    p = subprocess.Popen([os.path.join(BIN, "aal-core"), "run", "--local", base, "--tegrastats", "off",
                          "--log-level", "warning"],
                         stdout=subprocess.DEVNULL, stderr=open(os.path.join(base, "stderr"), "wb"))
    deadline = time.monotonic() + 30
    while True:
        try:
            s = _connect(sock)
            s.sendall(REQ)
            _read_lines(s, bytearray(), 1)
            s.close()
            return p
        except OSError:
            if p.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"daemon did not start:\n{open(os.path.join(base, 'stderr')).read()}")
            time.sleep(0.05)


def start_echo(path: str) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", ECHO_SERVER, path], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


def start_minimal(path: str) -> subprocess.Popen:
    """bench/loop_json.py's minimal JSON-RPC line server, uvloop + orjson."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from loop_json import SERVER
    p = subprocess.Popen([sys.executable, "-c", SERVER, "uvloop", "orjson", path], stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


def _schedstat(pid: int) -> tuple[int, int]:
    """(ns on a CPU, times scheduled in) summed over the process's threads."""
    ns = runs = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                a, _, c = fh.read().split()
        except OSError:
            continue
        ns += int(a)
        runs += int(c)
    return ns, runs


def idle_usage(pid: int, seconds: float) -> dict:
    proc = psutil.Process(pid)
    time.sleep(1.0)   # past start-up
    s0 = _schedstat(pid)
    t0 = time.monotonic()
    time.sleep(seconds)
    s1 = _schedstat(pid)
    wall = time.monotonic() - t0
    cpu = (s1[0] - s0[0]) / 1e9
    mem = proc.memory_full_info()
    return {"seconds": wall, "cpu_s": cpu, "cpu_pct": 100 * cpu / wall,
            "wakeups_per_s": (s1[1] - s0[1]) / wall,
            "rss_mib": mem.rss / 2**20, "uss_mib": mem.uss / 2**20,
            "threads": proc.num_threads()}


def fmt(name, r):
    return f"  {name:<34} {r['rps']:>10,.0f} req/s   p50 {r['p50_us']:>7.1f} us   p99 {r['p99_us']:>7.1f} us"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=30000)
    ap.add_argument("--idle-seconds", type=float, default=60.0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    a = ap.parse_args(argv)
    if a.quick:
        a.requests, a.idle_seconds = 5000, min(a.idle_seconds, 5.0)

    base = tempfile.mkdtemp(prefix="aalb", dir="/tmp")
    echo_path = os.path.join(base, "echo.sock")
    mini_path = os.path.join(base, "minimal.sock")
    daemon = start_daemon(base)
    echo = start_echo(echo_path)
    mini = start_minimal(mini_path)
    out: dict = {"cpu": os.cpu_count(), "python": sys.version.split()[0]}
    try:
        print(f"aal-core JSON-RPC benchmark ({a.requests} requests each; {os.cpu_count()} CPUs; "
              f"Python {out['python']})")
        sock = os.path.join(base, "aal-core.sock")
        for mode, fn in (("sequential", sequential), ("pipelined (window 64)", pipelined)):
            # Interleave the two servers, best of 3 each, to share the noise.
            runs = {"daemon": [], "echo": [], "minimal": []}
            for _ in range(3):
                runs["daemon"].append(fn(sock, a.requests))
                runs["echo"].append(fn(echo_path, a.requests))
                runs["minimal"].append(fn(mini_path, a.requests))
            d = max(runs["daemon"], key=lambda r: r["rps"])
            e = max(runs["echo"], key=lambda r: r["rps"])
            m = max(runs["minimal"], key=lambda r: r["rps"])
            print(f"{mode}:")
            print(fmt("aal-core system.health", d))
            print(fmt("peer: minimal uvloop+orjson server", m))
            print(fmt("floor: raw echo (uvloop, same socket)", e))
            print(f"  ratio daemon/floor: {d['rps'] / e['rps']:.2f}x throughput, "
                  f"{d['p50_us'] / e['p50_us']:.2f}x p50, {d['p99_us'] / e['p99_us']:.2f}x p99")
            goal = 0.9 if mode == "sequential" else 0.8
            r = d["rps"] / m["rps"]
            print(f"  goal (issue 13): >= {goal:.1f}x the minimal server: {r:.2f}x "
                  f"{'MET' if r >= goal else 'NOT MET'}")
            out[mode.split()[0]] = {"daemon": d, "echo": e, "minimal": m}
        print(f"idle ({a.idle_seconds:.0f} s, no clients; all units running):")
        idle = idle_usage(daemon.pid, a.idle_seconds)
        print(f"  RSS {idle['rss_mib']:.1f} MiB (USS {idle['uss_mib']:.1f} MiB), {idle['threads']} threads, "
              f"CPU {idle['cpu_s']:.3f} s over {idle['seconds']:.0f} s = {idle['cpu_pct']:.2f}% of one core, "
              f"{idle['wakeups_per_s']:.1f} wake-ups/s")
        print(f"  goal (issue 13): RSS <= 40 MiB: {idle['rss_mib']:.1f} "
              f"{'MET' if idle['rss_mib'] <= 40 else 'NOT MET'}; CPU <= 0.5 %: {idle['cpu_pct']:.2f} "
              f"{'MET' if idle['cpu_pct'] <= 0.5 else 'NOT MET'}")
        out["idle"] = idle
        if a.json:
            with open(a.json, "w") as fh:
                json.dump(out, fh, indent=2)
    finally:
        for p in (daemon, echo, mini):
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
