"""The cost of being watched: scrape latency, the exporter's RSS and CPU, the
daemon's CPU per scrape at 1 s and 15 s intervals, and the daemon's sampling
jitter with and without scraping and fleet publishing, side by side.

    .venv/bin/python bench/metrics.py [--window S] [--quick] [--out bench/results/metrics.txt]

A real daemon (`aal-core run --local`, tegrastats off, 10 Hz sampling), a
real `aal-core export`, and a real redis-server for the fleet phase.  Floor:
system.metrics called directly over the socket (what any scrape costs the
daemon at least).  Goal (issue 12): at a 15 s scrape and 1 Hz fleet
publishing the daemon's CPU rises by < 0.2% of one core, jitter does not
change measurably, and the exporter stays under 30 MiB RSS and 0.5% of a core.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from aal_core.client import Client  # noqa: E402
from export_helpers import free_port, start_exporter, start_redis  # noqa: E402
from helpers import cleanup, short_tmpdir, start_daemon  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        f = fh.read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def jitter_during(d, seconds: float, scrape=None, every: float = 0.0) -> tuple[list[float], float]:
    """Stress samples' spacing error (ms) while optionally scraping every
    `every` s; also the daemon's CPU share of one core over the window."""
    stop = threading.Event()

    def scraper():
        while not stop.wait(every):
            scrape()
    t = threading.Thread(target=scraper, daemon=True) if scrape else None
    pid = d.proc.pid
    c0, w0 = cpu_s(pid), time.monotonic()
    if t:
        t.start()
    stamps = []
    with Client(d.socket, timeout=None) as c:
        end = time.monotonic() + seconds
        for note in c.subscribe("stress"):
            stamps.append(note["data"]["timestamp"])
            if time.monotonic() > end:
                break
    stop.set()
    if t:
        t.join()
    share = (cpu_s(pid) - c0) / (time.monotonic() - w0)
    gaps = [(b - a) for a, b in zip(stamps, stamps[1:])]
    nominal = statistics.median(gaps)
    return [abs(g - nominal) * 1000 for g in gaps], share


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--window", type=float, default=60.0, help="seconds per measured phase")
    ap.add_argument("--quick", action="store_true", help="20 s phases")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "metrics.txt"))
    a = ap.parse_args(argv)
    window = 20.0 if a.quick else a.window
    lines = []

    def say(s=""):
        print(s, flush=True)
        lines.append(s)

    d = start_daemon(base=short_tmpdir(), tegrastats="off")
    procs = []
    try:
        time.sleep(2)
        # Floor: system.metrics straight over the socket.
        floor = []
        with Client(d.socket) as c:
            for _ in range(200):
                t0 = time.perf_counter()
                snap = c.call("system.metrics")
                floor.append((time.perf_counter() - t0) * 1000)
        nfam = len(snap["families"])
        ex = start_exporter(d)
        procs.append(ex)
        url = ex.url()

        def scrape():
            with urllib.request.urlopen(url, timeout=10) as r:
                return r.read()
        lat, size = [], 0
        for _ in range(200):
            t0 = time.perf_counter()
            size = len(scrape())
            lat.append((time.perf_counter() - t0) * 1000)
        say(f"# bench/metrics.py, window {window:.0f} s per phase, {os.cpu_count()} CPUs, "
            f"Python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
        say(f"system.metrics: {nfam} families; exposition {size} bytes")
        say()
        say("| | p50 ms | p99 ms |")
        say("|---|---:|---:|")
        say(f"| floor: system.metrics over the socket | {pct(floor, .5):.2f} | {pct(floor, .99):.2f} |")
        say(f"| scrape of `aal-core export` /metrics | {pct(lat, .5):.2f} | {pct(lat, .99):.2f} |")
        say(f"ratio scrape/floor p50: {pct(lat, .5) / pct(floor, .5):.2f}x")
        say()
        # Daemon CPU and jitter: idle, scraped every 1 s, every 15 s.
        rows = []
        for name, every in (("idle (no scrape)", 0.0), ("scrape every 15 s", 15.0), ("scrape every 1 s", 1.0)):
            c_ex0 = cpu_s(ex.proc.pid)
            jit, share = jitter_during(d, window, scrape if every else None, every)
            ex_share = (cpu_s(ex.proc.pid) - c_ex0) / window
            rows.append((name, share, jit, ex_share))
        # Fleet: 1 Hz samples to a real Redis, 15 s scrape.
        red = start_redis(d.base)
        procs.append(red)
        ex.stop()
        procs.remove(ex)
        ex2 = start_exporter(d, f'[fleet]\nredis_url = "{red.url}"\nsample_hz = 1.0\nhead_every_s = 60.0\n',
                             port=free_port(), name="exporter-fleet")
        procs.append(ex2)
        url = ex2.url()
        time.sleep(2)
        c_ex0 = cpu_s(ex2.proc.pid)
        jit, share = jitter_during(d, window, scrape, 15.0)
        rows.append(("scrape every 15 s + fleet 1 Hz", share, jit, (cpu_s(ex2.proc.pid) - c_ex0) / window))
        base_share = rows[0][1]
        say("| phase | daemon CPU (% of a core) | rise vs idle | jitter p50 ms | jitter p99 ms | exporter CPU % |")
        say("|---|---:|---:|---:|---:|---:|")
        for name, share, jit, ex_share in rows:
            say(f"| {name} | {share * 100:.3f} | {(share - base_share) * 100:+.3f} | {pct(jit, .5):.2f} | "
                f"{pct(jit, .99):.2f} | {ex_share * 100:.3f} |")
        one = [r for r in rows if r[0] == "scrape every 1 s"][0]
        scrapes = window / 1.0
        say()
        say(f"daemon CPU per scrape (1 s interval): {(one[1] - base_share) * window / scrapes * 1000:.2f} ms")
        say(f"exporter RSS: {rss_mib(ex2.proc.pid):.1f} MiB (goal < 30), daemon RSS: {rss_mib(d.proc.pid):.1f} MiB")
        fl = rows[-1]
        say(f"goal at 15 s + 1 Hz fleet: daemon rise {(fl[1] - base_share) * 100:+.3f}% (< 0.2), "
            f"exporter {fl[3] * 100:.3f}% (< 0.5)")
    finally:
        for p in reversed(procs):
            p.stop()
        cleanup(d)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
