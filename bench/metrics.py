"""The cost of being watched: scrape latency, the exporter's RSS and CPU, the
daemon's CPU per scrape at 1 s and 15 s intervals, and the daemon's sampling
jitter with and without scraping and fleet publishing, side by side.

    .venv/bin/python bench/metrics.py [--window S] [--rounds N] [--quick] [--out bench/results/metrics.txt]

A real daemon (`aal-core run --local`, tegrastats off, 10 Hz sampling), a
real `aal-core export`, and a real redis-server for the fleet phase.  The
four phases (idle, scrape every 15 s, every 1 s, every 15 s with 1 Hz fleet
publishing) run interleaved, --rounds times --window seconds each, so that
the load of a shared machine falls on all of them alike.  Floor: system.metrics
called directly over the socket (what any scrape costs the daemon at least);
peer for the RSS: a bare prometheus_client exporter (start_http_server, no
collector), the least a prometheus_client exporter can be.  Goal (issue 12):
at a 15 s scrape and 1 Hz fleet publishing the daemon's CPU rises by < 0.2%
of one core, jitter does not change measurably, and the exporter stays under
30 MiB RSS and 0.5% of a core.
"""
from __future__ import annotations

import argparse
import os
import math
import statistics
import subprocess
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


def jitter_during(d, seconds: float, scrape=None, every: float = 0.0) -> tuple[list[float], float, float]:
    """Stress samples' spacing error (ms) while optionally scraping every
    `every` s; also the daemon's CPU share of one core over the window, and the window."""
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
    wall = time.monotonic() - w0
    share = (cpu_s(pid) - c0) / wall
    gaps = [(b - a) for a, b in zip(stamps, stamps[1:])]
    nominal = statistics.median(gaps)
    return [abs(g - nominal) * 1000 for g in gaps], share, wall


PEER = ("import prometheus_client, signal; prometheus_client.start_http_server(0, addr='127.0.0.1'); "
        "print('ready', flush=True); signal.pause()")


def mann_whitney_p(a, b) -> float:
    """Two-sided p-value of the Mann-Whitney U test (normal approximation,
    ties averaged): how likely two jitter samples this different are if the
    distributions are the same."""
    n1, n2 = len(a), len(b)
    if not n1 or not n2:
        return float("nan")
    allv = sorted([(v, 0) for v in a] + [(v, 1) for v in b])
    ranks, i = [0.0] * len(allv), 0
    while i < len(allv):
        j = i
        while j + 1 < len(allv) and allv[j + 1][0] == allv[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = (i + j) / 2 + 1
        i = j + 1
    r1 = sum(r for r, (_, g) in zip(ranks, allv) if g == 0)
    u = r1 - n1 * (n1 + 1) / 2
    mu, sigma = n1 * n2 / 2, math.sqrt(n1 * n2 * (n1 + n2 + 1) / 12)
    z = (u - mu) / sigma if sigma else 0.0
    return math.erfc(abs(z) / math.sqrt(2))


def peer_rss() -> float:
    p = subprocess.Popen([sys.executable, "-c", PEER], stdout=subprocess.PIPE)
    try:
        p.stdout.readline()
        time.sleep(1)
        urllib.request.urlopen(f"http://127.0.0.1:{_listen_port(p.pid)}/metrics", timeout=5).read()
        return rss_mib(p.pid)
    finally:
        p.kill()
        p.wait()


def _listen_port(pid: int) -> int:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        t = os.readlink(f"/proc/{pid}/fd/{fd}")
        if t.startswith("socket:["):
            inodes.add(t[8:-1])
    with open("/proc/net/tcp") as fh:
        for line in fh.readlines()[1:]:
            f = line.split()
            if f[9] in inodes and f[3] == "0A":
                return int(f[1].split(":")[1], 16)
    raise RuntimeError("the peer is not listening")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--window", type=float, default=60.0, help="seconds per phase and round")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the four phases")
    ap.add_argument("--quick", action="store_true", help="20 s phases, one round")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "metrics.txt"))
    a = ap.parse_args(argv)
    window, rounds = (20.0, 1) if a.quick else (a.window, a.rounds)
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

        def scraper(url):
            def scrape():
                with urllib.request.urlopen(url, timeout=10) as r:
                    return r.read()
            return scrape
        scrape = scraper(ex.url())
        lat, size = [], 0
        for _ in range(200):
            t0 = time.perf_counter()
            size = len(scrape())
            lat.append((time.perf_counter() - t0) * 1000)
        red = start_redis(d.base)
        procs.append(red)
        fleet_toml = f'[fleet]\nredis_url = "{red.url}"\nsample_hz = 1.0\nhead_every_s = 60.0\n'
        names = ("idle (no scrape)", "scrape every 15 s", "scrape every 1 s", "scrape every 15 s + fleet 1 Hz")
        acc = {n: {"cpu": 0.0, "wall": 0.0, "jit": [], "ex_cpu": 0.0, "scrapes": 0} for n in names}
        ex_rss = {"scrape only": 0.0, "fleet": 0.0}
        for _ in range(rounds):
            for name in names:
                target, every = ex, {"idle (no scrape)": 0.0, "scrape every 1 s": 1.0}.get(name, 15.0)
                if name.endswith("fleet 1 Hz"):
                    target = start_exporter(d, fleet_toml, port=free_port(), name="exporter-fleet")
                    procs.append(target)
                    time.sleep(3)       # connected, first head written
                c_ex0 = cpu_s(target.proc.pid)
                n_scrapes = [0]

                def counted(f=scraper(target.url())):
                    n_scrapes[0] += 1
                    f()
                jit, share, wall = jitter_during(d, window, counted if every else None, every)
                r = acc[name]
                r["cpu"] += share * wall
                r["wall"] += wall
                r["jit"] += jit
                r["ex_cpu"] += cpu_s(target.proc.pid) - c_ex0
                r["scrapes"] += n_scrapes[0]
                key = "fleet" if target is not ex else "scrape only"
                ex_rss[key] = max(ex_rss[key], rss_mib(target.proc.pid))
                if target is not ex:
                    status = target.status()
                    target.stop()
                    procs.remove(target)
        peer = peer_rss()
        say(f"# bench/metrics.py, {rounds} round(s) x {window:.0f} s per phase, interleaved, {os.cpu_count()} CPUs, "
            f"Python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
        say(f"system.metrics: {nfam} families; exposition {size} bytes; fleet published {status['fleet']['published']}")
        say()
        say("| | p50 ms | p99 ms |")
        say("|---|---:|---:|")
        say(f"| floor: system.metrics over the socket | {pct(floor, .5):.2f} | {pct(floor, .99):.2f} |")
        say(f"| scrape of `aal-core export` /metrics | {pct(lat, .5):.2f} | {pct(lat, .99):.2f} |")
        say(f"ratio scrape/floor p50: {pct(lat, .5) / pct(floor, .5):.2f}x")
        say()
        base = acc[names[0]]
        base_share = base["cpu"] / base["wall"]
        say("| phase | daemon CPU (% of a core) | rise vs idle | daemon CPU per scrape ms | jitter p50 ms | "
            "jitter p99 ms | jitter vs idle (Mann-Whitney p) | exporter CPU % |")
        say("|---|---:|---:|---:|---:|---:|---:|---:|")
        for name in names:
            r = acc[name]
            share = r["cpu"] / r["wall"]
            # Per scrape only where scrapes are all that changed (the fleet row's rise is mostly the fleet's).
            per = f"{(share - base_share) * r['wall'] / r['scrapes'] * 1000:.2f}" \
                if r["scrapes"] and "fleet" not in name else "–"
            mw = "–" if r is base else f"{mann_whitney_p(base['jit'], r['jit']):.3f}"
            say(f"| {name} | {share * 100:.3f} | {(share - base_share) * 100:+.3f} | {per} | "
                f"{pct(r['jit'], .5):.2f} | {pct(r['jit'], .99):.2f} | {mw} | {r['ex_cpu'] / r['wall'] * 100:.3f} |")
        fl = acc[names[-1]]
        rise = (fl["cpu"] / fl["wall"] - base_share) * 100
        ex_cpu = fl["ex_cpu"] / fl["wall"] * 100
        tick = 100.0 / TICK / base["wall"]
        say()
        say(f"CPU counters tick every {1000 / TICK:.0f} ms: one tick over a phase's {base['wall']:.0f} s "
            f"is {tick:.3f}% of a core")
        say(f"RSS: exporter {ex_rss['scrape only']:.1f} MiB scraping, {ex_rss['fleet']:.1f} MiB with the fleet; "
            f"peer (bare prometheus_client exporter) {peer:.1f} MiB; daemon {rss_mib(d.proc.pid):.1f} MiB")
        p50d = pct(fl["jit"], .5) - pct(base["jit"], .5)
        p99d = pct(fl["jit"], .99) - pct(base["jit"], .99)
        mwp = mann_whitney_p(base["jit"], fl["jit"])
        say()
        say("| goal at a 15 s scrape + 1 Hz fleet publishing | measured | goal | measured/goal | met")
        say("|---|---:|---:|---:|---|")
        say(f"| daemon CPU rise, % of a core | {rise:+.3f} | < 0.2 | {rise / 0.2:.2f} | {'yes' if rise < 0.2 else 'no'} |")
        say(f"| exporter RSS, MiB (peer {peer:.1f}) | {ex_rss['fleet']:.1f} | < 30 | {ex_rss['fleet'] / 30:.2f} | "
            f"{'yes' if ex_rss['fleet'] < 30 else 'no'} |")
        say(f"| exporter CPU, % of a core | {ex_cpu:.3f} | < 0.5 | {ex_cpu / 0.5:.2f} | {'yes' if ex_cpu < 0.5 else 'no'} |")
        same = mwp >= 0.01 or abs(p50d) < 0.1
        say(f"| sampling jitter vs idle: p50 {p50d:+.2f} ms, p99 {p99d:+.2f} ms, Mann-Whitney p | {mwp:.3f} | "
            f"no measurable change (p >= 0.01 or p50 within 0.1 ms) | – | {'yes' if same else 'no'} |")
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
