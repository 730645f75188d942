"""Fleet publishing against a real redis-server (Debian's package): two
boards on one Redis, Redis killed and restarted mid-run, Redis absent at
start, a consumer killed mid-batch, forged and rewritten ledgers."""
from __future__ import annotations

import asyncio
import glob
import json
import os
import subprocess
import sys
import time

import pytest
import redis
import redis.asyncio as aioredis

from aal_core.fleet import FleetConsumer
from export_helpers import AAL_CORE, free_port, start_exporter, start_redis
from helpers import AALCTL, cleanup, short_tmpdir, start_daemon, wait_for

FLEET = '[fleet]\nredis_url = "{url}"\nnode_id = "{node}"\nsample_hz = {hz}\nhead_every_s = {head_s}\n' \
        'head_every_entries = 5\nbuffer_max = {buf}\nreconnect_max_s = 1.0\n'


def fleet_toml(url, node, hz=5.0, head_s=1.0, buf=10000) -> str:
    return FLEET.format(url=url, node=node, hz=hz, head_s=head_s, buf=buf)


@pytest.fixture
def world():
    """Daemons, exporters and redis-servers started by a test, stopped at teardown."""
    w = {"daemons": [], "procs": []}
    yield w
    for p in reversed(w["procs"]):
        p.stop()
    for d in w["daemons"]:
        cleanup(d)


def board(world, node, url, **kw):
    d = start_daemon(base=short_tmpdir(), tegrastats="off")
    world["daemons"].append(d)
    ex = start_exporter(d, fleet_toml(url, node, **kw), name=f"exporter-{node}")
    world["procs"].append(ex)
    return d, ex


def run(coro):
    return asyncio.run(coro)


async def consume(url, group="g", name="c1", min_idle_ms=30000, on_entry=None):
    r = aioredis.from_url(url)
    try:
        c = FleetConsumer(r, group, name, min_idle_ms=min_idle_ms, on_entry=on_entry)
        await c.drain()
        return c
    finally:
        await r.aclose()


def seqs(r: redis.Redis, node: str) -> list[int]:
    out = []
    for kind in ("samples", "events", "heads"):
        out += [int(f[b"seq"]) for _, f in r.xrange(f"aal-core:{node}:{kind}")]
    return out


@pytest.mark.slow
def test_two_boards_on_one_redis_and_the_consumer_sees_both(world):
    red = start_redis(short_tmpdir())
    world["procs"].append(red)
    d1, _ = board(world, "b1", red.url)
    d2, _ = board(world, "b2", red.url)
    r = redis.Redis(port=red.port)
    for node in ("b1", "b2"):
        wait_for(lambda n=node: r.xlen(f"aal-core:{n}:heads") >= 2 and r.xlen(f"aal-core:{n}:samples") >= 3,
                 timeout=20, what=f"{node}'s streams")
    d1.call("ledger.append", {"data": {"type": "test.fleet"}})
    wait_for(lambda: any(int(f[b"size"]) >= 2 for _, f in r.xrange("aal-core:b1:heads")), what="b1's grown head")
    c = run(consume(red.url))
    assert set(c.boards) == {"b1", "b2"}
    for node, d in (("b1", d1), ("b2", d2)):
        b = c.boards[node]
        assert b.sample is not None and b.sample["band"] in ("LOW", "MODERATE", "HIGH", "CRITICAL")
        assert b.heads_verified >= 2 and not b.issues, b.issues
        assert b.head["public_key"] == d.call("system.public_key")["public_key"]
    assert c.boards["b1"].head["size"] >= 2
    assert any(e.get("type") == "daemon_up" for e in c.boards["b1"].events)
    # Every entry was acknowledged: nothing pending in the group.
    for k in r.keys("aal-core:b*"):
        assert r.xpending(k, "g")["pending"] == 0
    # Trimmed with MAXLEN ~: the config's lengths are applied (approximately).
    info = r.xinfo_stream("aal-core:b1:samples")
    assert info["length"] >= 3
    # aalctl fleet status, JSON and text, from the same streams (its own group).
    out = subprocess.run([AALCTL, "fleet", "status", "--redis-url", red.url, "--json"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    st = json.loads(out.stdout)
    assert set(st) == {"b1", "b2"} and st["b1"]["heads_verified"] >= 2
    out = subprocess.run([AALCTL, "fleet", "status", "--redis-url", red.url], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and "b1: stress" in out.stdout and "b2: stress" in out.stdout
    # and again at once: the group has read everything, every board is still shown
    out = subprocess.run([AALCTL, "fleet", "status", "--redis-url", red.url, "--json"], capture_output=True,
                         text=True, timeout=60)
    st = json.loads(out.stdout)
    assert set(st) == {"b1", "b2"} and all(st[n]["sample"] and st[n]["head"] for n in st), st
    w = subprocess.run([AALCTL, "fleet", "watch", "--redis-url", red.url, "--group", "w", "--count", "5"],
                       capture_output=True, text=True, timeout=60)
    assert w.returncode == 0 and len(w.stdout.splitlines()) >= 5
    assert all(json.loads(line)["node"] in ("b1", "b2") for line in w.stdout.splitlines())


@pytest.mark.slow
def test_redis_killed_and_restarted_loses_at_most_the_buffer_and_counts_it(world):
    base = short_tmpdir()
    port = free_port()
    red = start_redis(base, port)
    world["procs"].append(red)
    d, ex = board(world, "b1", red.url, hz=20.0, buf=15)
    r = redis.Redis(port=port)
    wait_for(lambda: r.xlen("aal-core:b1:samples") >= 5, what="samples before the kill")
    red.kill()
    wait_for(lambda: ex.status()["fleet"]["redis_up"] is False, what="the exporter to see Redis down")
    # The daemon is not slowed: it keeps sampling and answering at its own pace.
    s0 = d.call("stress.get")["seq"]
    wait_for(lambda: ex.status()["fleet"]["dropped"] > 0, timeout=20, what="the buffer to overflow")
    assert d.call("stress.get")["seq"] > s0
    st = ex.status()["fleet"]
    assert st["buffered"] <= 15 and st["redis_error"]
    red2 = start_redis(base, port)            # same port, same AOF directory
    world["procs"].append(red2)
    wait_for(lambda: ex.status()["fleet"]["redis_up"], timeout=20, what="the exporter to reconnect")
    wait_for(lambda: ex.status()["fleet"]["buffered"] == 0, what="the buffer to drain")
    time.sleep(0.5)
    dropped = ex.status()["fleet"]["dropped"]
    got = sorted(set(seqs(r2 := redis.Redis(port=port), "b1")))
    missing = set(range(got[0], got[-1] + 1)) - set(got)
    # Every entry that is missing was dropped from the full buffer, and counted.
    assert 0 < len(missing) <= dropped, (len(missing), dropped)
    metrics = ex.metrics_text()
    assert f"aal_core_fleet_dropped_total {float(dropped)}" in metrics or "aal_core_fleet_dropped_total" in metrics
    assert "aal_core_fleet_redis_up 1.0" in metrics
    assert ex.status()["fleet"]["reconnects"] >= 1
    # Publishing resumed after the restart.
    n = r2.xlen("aal-core:b1:samples")
    wait_for(lambda: r2.xlen("aal-core:b1:samples") > n, what="new samples after the restart")


@pytest.mark.slow
def test_redis_absent_at_start_export_starts_and_says_so(world):
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    d, ex = board(world, "b1", url)
    st = wait_for(lambda: ex.status()["fleet"] if ex.status()["fleet"]["reconnects"] >= 1 else None,
                  what="a failed connection attempt")
    assert st["redis_up"] is False and st["redis_error"] and st["daemon_up"] is True
    assert "aal_core_fleet_redis_up 0.0" in ex.metrics_text()
    # The daemon does not care: it serves as usual.
    assert d.call("system.health")["ok"]
    red = start_redis(short_tmpdir(), port)
    world["procs"].append(red)
    wait_for(lambda: ex.status()["fleet"]["redis_up"], timeout=20, what="the exporter to connect")
    r = redis.Redis(port=port)
    wait_for(lambda: r.xlen("aal-core:b1:heads") >= 1 and r.xlen("aal-core:b1:samples") >= 1,
             what="entries once Redis is there")


CONSUMER_KILLED = """
import os, signal, sys, redis
r = redis.Redis(port=int(sys.argv[1]))
streams = {k: ">" for k in r.keys("aal-core:b1:*")}
got = r.xreadgroup("g", "dead", streams, count=5)
print(sum(len(e) for _, e in got), flush=True)
os.kill(os.getpid(), signal.SIGKILL)      # mid-batch: read, never acknowledged
"""


@pytest.mark.slow
def test_a_consumer_killed_mid_batch_leaves_entries_another_claims_and_processes(world):
    red = start_redis(short_tmpdir())
    world["procs"].append(red)
    board(world, "b1", red.url)
    r = redis.Redis(port=red.port)
    wait_for(lambda: r.xlen("aal-core:b1:samples") >= 5 and r.xlen("aal-core:b1:heads") >= 1, what="entries")
    for k in r.keys("aal-core:b1:*"):
        r.xgroup_create(k, "g", id="0")
    p = subprocess.run([sys.executable, "-c", CONSUMER_KILLED, str(red.port)], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == -9, p.stderr
    read = int(p.stdout.strip())
    assert read > 0
    pending = {k: r.xpending_range(k, "g", "-", "+", 1000) for k in r.keys("aal-core:b1:*")}
    dead_ids = {(k.decode(), e["message_id"].decode()) for k, es in pending.items() for e in es
                if e["consumer"] == b"dead"}
    assert len(dead_ids) == read
    time.sleep(0.2)
    seen = []
    c = run(consume(red.url, name="alive", min_idle_ms=100,
                    on_entry=lambda node, kind, eid, f, issue: seen.append((f"aal-core:{node}:{kind}", eid))))
    assert c.claimed >= read
    # Claimed *and processed*: every one of them went through the handler.
    assert dead_ids <= set(seen)
    assert dead_ids <= set(c.processed)
    for k in r.keys("aal-core:b1:*"):
        assert r.xpending(k, "g")["pending"] == 0


def _signing_key(d):
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    path = os.path.join(d.base, "state", "signing.key")
    with open(path, "rb") as fh:
        return load_pem_private_key(fh.read(), None)


@pytest.mark.slow
def test_forged_and_rewritten_heads_are_flagged(world):
    from aal_core.ledger.head import signed_bytes
    red = start_redis(short_tmpdir())
    world["procs"].append(red)
    d, ex = board(world, "b1", red.url, head_s=0.5)
    r = redis.Redis(port=red.port)
    wait_for(lambda: r.xlen("aal-core:b1:heads") >= 2, what="heads")
    c = run(consume(red.url))
    assert c.boards["b1"].heads_verified >= 2 and not c.boards["b1"].issues

    # 1. A forged head: a bigger size and another root under the board's old signature.
    last = {k.decode(): v.decode() for k, v in r.xrevrange("aal-core:b1:heads", count=1)[0][1].items()}
    r.xadd("aal-core:b1:heads", {**last, "size": str(int(last["size"]) + 10), "root": "ab" * 32})
    c = run(consume(red.url))
    assert [i["kind"] for i in c.boards["b1"].issues] == ["forged"]

    # 2. A real rewrite: stop the board, replace its ledger (same key), let it
    # grow past the old size, start it again: the exporter links the new head
    # to the stream's last one with ledger.consistency, which cannot hold.
    ex.stop()
    d.stop()
    for p in glob.glob(os.path.join(d.base, "state", "ledger.aal*")):
        os.unlink(p)
    old_size = max(int(f[b"size"]) for _, f in r.xrange("aal-core:b1:heads"))
    d2 = start_daemon(base=d.base, tegrastats="off")
    world["daemons"].append(d2)
    for i in range(old_size + 2):
        d2.call("ledger.append", {"data": {"type": "rewritten", "i": i}})
    n = r.xlen("aal-core:b1:heads")
    ex2 = start_exporter(d2, fleet_toml(red.url, "b1", head_s=0.5), name="exporter-b1-again")
    world["procs"].append(ex2)
    wait_for(lambda: r.xlen("aal-core:b1:heads") > n, what="a head from the rewritten ledger")
    c = run(consume(red.url))
    kinds = [i["kind"] for i in c.boards["b1"].issues]
    assert "rewritten" in kinds, c.boards["b1"].issues
    out = subprocess.run([AALCTL, "fleet", "status", "--redis-url", red.url, "--group", "ops"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "REWRITTEN" in out.stdout and "FORGED" in out.stdout, out.stdout

    # 3. A head signed with the board's real key over a root that does not
    # extend the last verified one (a rewrite the exporter did not catch).
    key = _signing_key(d2)
    last = {k.decode(): v.decode() for k, v in r.xrevrange("aal-core:b1:heads", count=1)[0][1].items()}
    size, ts, root = int(last["size"]) + 3, int(time.time() * 1000), bytes(range(32))
    sig = key.sign(signed_bytes(size, root, ts)).hex()
    r.xadd("aal-core:b1:heads", {"size": size, "root": root.hex(), "timestamp": ts, "signature": sig,
                                 "public_key": last["public_key"], "prev_size": last["size"],
                                 "consistency": json.dumps(["cd" * 32])})
    ex2.stop()
    c = run(consume(red.url, group="fresh-check"))
    flagged = [i for i in c.boards["b1"].issues if i["size"] == size]
    assert flagged and flagged[0]["kind"] == "rewritten", c.boards["b1"].issues
