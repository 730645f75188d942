"""The events stream against a real redis-server: a band change, the
directive it causes, venom decisions, an OOM kill and a source going down
and coming back each arrive as an entry with the documented fields."""
from __future__ import annotations

import os
import re
import sys

import pytest
import redis

from aal_core.client import Client

from export_helpers import start_exporter, start_redis
from helpers import cleanup, short_tmpdir, start_daemon, wait_for

MEMINFO = ("MemTotal:        8000000 kB\nMemFree:         {avail:>8} kB\nMemAvailable:    {avail:>8} kB\n"
           "Buffers:                 0 kB\nCached:                  0 kB\nSwapTotal:               0 kB\n"
           "SwapFree:                0 kB\nShmem:                   0 kB\n")


def write(path: str, text: str) -> None:
    """Overwrite in place with text of the same length (the daemon keeps the
    file open and re-reads it, as it does /proc): never a half-written file."""
    mode = "r+" if os.path.exists(path) else "w"
    with open(path, mode) as fh:
        assert mode == "w" or len(fh.read()) == len(text)
        fh.seek(0)
        fh.write(text)


def tegrastats_tool(path: str, flag: str) -> str:
    """A tegrastats stand-in: a line every 50 ms while `flag` exists, then it
    exits (a tegrastats that dies; the daemon restarts it with backoff)."""
    with open(path, "w") as fh:
        fh.write(f"#!{sys.executable}\nimport os, sys, time\n"
                 f"while os.path.exists({flag!r}):\n"
                 "    print('RAM 1200/7620MB (lfb 40x4MB) CPU [5%@1190] tj@48.5C', flush=True)\n"
                 "    time.sleep(0.05)\n"
                 "sys.exit(3)\n")
    os.chmod(path, 0o755)
    return path


HOST_VMSTAT = open("/proc/vmstat").read()


def vmstat(oom_kill: int) -> str:
    """This host's vmstat as read once, with the given oom_kill counter."""
    text = HOST_VMSTAT
    return re.sub(r"^oom_kill \d+$", f"oom_kill {oom_kill}", text, flags=re.M) if "oom_kill" in text \
        else text + f"oom_kill {oom_kill}\n"


@pytest.fixture
def board():
    base = short_tmpdir()
    root = os.path.join(base, "proc")
    os.makedirs(root)
    write(os.path.join(root, "meminfo"), MEMINFO.format(avail=7200000))
    write(os.path.join(root, "vmstat"), vmstat(7))
    flag = os.path.join(base, "tegrastats-runs")
    open(flag, "w").close()
    tool = tegrastats_tool(os.path.join(base, "tegrastats"), flag)
    d = start_daemon("--proc-root", root, base=base, tegrastats=tool, config="[sense]\nretry_max_s = 1.0\n")
    red = start_redis(base)
    procs = [red]
    try:
        yield d, root, flag, red, procs
    finally:
        for p in reversed(procs):
            p.stop()
        cleanup(d)


def events(r) -> list[dict]:
    return [{k.decode(): v.decode() for k, v in f.items()} for _, f in r.xrange("aal-core:b1:events")]


def test_every_kind_of_event_reaches_the_stream(board):
    d, root, flag, red, procs = board
    job = Client(d.socket)        # a job lives as long as its connection
    job.call("job.submit", {"job_id": "j1", "profile": "balanced"})
    ex = start_exporter(d, f'[fleet]\nredis_url = "{red.url}"\nnode_id = "b1"\nsample_hz = 5.0\n')
    procs.append(ex)
    r = redis.Redis.from_url(red.url)
    wait_for(lambda: r.xlen("aal-core:b1:samples") >= 2, 20, "samples on the stream")
    assert d.call("stress.get")["band"] == "LOW"

    write(os.path.join(root, "meminfo"), MEMINFO.format(avail=80000))     # 1 % available: CRITICAL
    write(os.path.join(root, "vmstat"), vmstat(9))
    os.unlink(flag)                                      # tegrastats dies

    def kinds():
        return {e["type"] for e in events(r)}
    want = {"band_change", "directive", "venom_decision", "oom_kill", "source_down"}
    wait_for(lambda: want <= kinds(), 30, f"events {want}")
    open(flag, "w").close()                              # and comes back
    wait_for(lambda: "source_up" in kinds(), 20, "source_up")

    ev = events(r)
    band = next(e for e in ev if e["type"] == "band_change")
    assert band["from"] == "LOW" and band["to"] != "LOW" and 0 < float(band["stress"]) <= 1
    directive = next(e for e in ev if e["type"] == "directive")
    assert directive["job_id"] == "j1" and directive["kind"] and int(directive["ledger_index"]) > 0
    assert d.call("ledger.get", {"index": int(directive["ledger_index"])})["entries"][0]["data"]["type"] \
        == "govern.directive"
    oom = next(e for e in ev if e["type"] == "oom_kill")
    assert (oom["count"], oom["total"]) == ("2", "2")
    down = next(e for e in ev if e["type"] == "source_down")
    up = next(e for e in ev if e["type"] == "source_up")
    assert down["source"] == up["source"] == "tegrastats" and int(down["seq"]) < int(up["seq"])
    venom = next(e for e in ev if e["type"] == "venom_decision")
    assert venom["action"].isupper() and int(venom["beat"]) >= 0
    job.close()
    seqs = [int(e["seq"]) for e in ev]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
