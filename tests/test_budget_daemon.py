"""Per-peer budgets on the real daemon and socket (README, "Budgets").

One fast test per budget, each on its own daemon with [budget] exempt = ""
so the root test client is budgeted too; then a flood by a real non-root
peer (`aalmember`, in group aal) that is refused past its budgets while the
daemon's RSS and the ledger file stay within the README's bounds and a
second client (root, under its budget) is served normally."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from aal_core import errors as E
from aal_core.rpc.registry import LEDGER_WRITERS

from helpers import cleanup, start_daemon, wait_for
from rpc_fixtures import RawConn

pytestmark = [pytest.mark.slow]

BASE = """
[venom]
enabled = false
[budget]
exempt = ""
"""


def _daemon(**budget):
    cfg = BASE + "".join(f"{k} = {json.dumps(v)}\n" for k, v in budget.items())
    return start_daemon(config=cfg)


def _batch(conn: RawConn, reqs: list) -> list:
    """Send a batch as one frame; the replies, in order."""
    conn.send_obj([dict({"jsonrpc": "2.0", "id": i, "method": m}, **({} if p is None else {"params": p}))
                   for i, (m, p) in enumerate(reqs)])
    while True:
        out = conn.reply()
        if type(out) is list:
            return sorted(out, key=lambda r: r["id"])


def _budget_status(d) -> dict:
    return d.call("system.status")["budgets"]


def _uid_row(st: dict, uid: int) -> dict:
    return next(r for r in st["uids"] if r["uid"] == uid)


def _refusal(reply: dict) -> dict:
    assert "error" in reply, reply
    e = reply["error"]
    assert e["code"] == E.BUDGET_EXCEEDED, e
    return e["data"]


def _submit(i, prefix="j"):
    return ("job.submit", {"job_id": f"{prefix}{i}", "profile": "MINIMAL"})


def test_jobs_held_per_connection_and_per_uid_released_on_end_and_close():
    d = _daemon(jobs_per_connection=3, jobs_per_uid=5)
    try:
        a, b = RawConn(d.socket), RawConn(d.socket)
        out = _batch(a, [_submit(i, "a") for i in range(4)])
        assert all("result" in r for r in out[:3])
        data = _refusal(out[3])
        assert data == {"budget": "jobs_per_connection", "scope": "connection", "uid": 0, "limit": 3, "used": 3}
        assert "jobs_per_connection" in out[3]["error"]["message"]
        out = _batch(b, [_submit(i, "b") for i in range(3)])
        assert [("result" in r) for r in out] == [True, True, False]
        assert _refusal(out[2])["budget"] == "jobs_per_uid" and _refusal(out[2])["used"] == 5
        st = _budget_status(d)
        assert st["jobs"] == 5 and st["refused"] == {"jobs_per_connection": 1, "jobs_per_uid": 1}
        assert _uid_row(st, 0)["jobs"] == 5
        # job.release frees one; closing connection a frees its other two.
        assert "result" in b.call("job.release", {"job_id": "b0"})
        assert "result" in b.call("job.submit", {"job_id": "b9", "profile": "MINIMAL"})
        a.close()
        wait = time.monotonic() + 5
        while _budget_status(d)["jobs"] != 2 and time.monotonic() < wait:
            time.sleep(0.05)
        assert _budget_status(d)["jobs"] == 2
        assert "result" in b.call("job.submit", {"job_id": "b10", "profile": "MINIMAL"})
        b.close()
    finally:
        cleanup(d)


def test_subscriptions_per_connection_and_per_uid():
    d = _daemon(subscriptions_per_connection=4, subscriptions_per_uid=6)
    try:
        a, b = RawConn(d.socket), RawConn(d.socket)
        out = _batch(a, [("job.subscribe", {"job_id": f"x{i}"}) for i in range(5)])
        assert all("result" in r for r in out[:4])
        assert _refusal(out[4]) == {"budget": "subscriptions_per_connection", "scope": "connection",
                                    "uid": 0, "limit": 4, "used": 4}
        out = _batch(b, [("system.heartbeat.subscribe", None)] * 3)
        assert [("result" in r) for r in out] == [True, True, False]
        assert _refusal(out[2])["budget"] == "subscriptions_per_uid"
        sub = out[0]["result"]["subscription"]
        assert b.call("system.heartbeat.unsubscribe", {"subscription": sub})["result"] == {"unsubscribed": True}
        assert "result" in b.call("system.heartbeat.subscribe")
        st = _budget_status(d)
        assert st["subscriptions"] == 6
        assert st["refused"] == {"subscriptions_per_connection": 1, "subscriptions_per_uid": 1}
        a.close()
        b.close()
    finally:
        cleanup(d)


def test_ledger_calls_per_second_is_refused_with_retry_after():
    d = _daemon(ledger_calls_per_s=2.0, ledger_calls_burst=5)
    try:
        c = RawConn(d.socket)
        out = _batch(c, [("ledger.append", {"data": {"type": "t", "n": i}}) for i in range(8)])
        assert all("result" in r for r in out[:5])
        for r in out[5:]:
            data = _refusal(r)
            assert data["budget"] == "ledger_calls_per_s" and data["limit"] == 2.0 and data["uid"] == 0
            assert 0 < data["retry_after_s"] <= 0.5
        # job.submit is a ledger-writing call too: same bucket.
        assert _refusal(c.call("job.submit", {"job_id": "r", "profile": "MINIMAL"}))["budget"] == "ledger_calls_per_s"
        # Read-only calls are not counted.
        assert "result" in c.call("ledger.manifest")
        time.sleep(out[5]["error"]["data"]["retry_after_s"] + 0.05)
        assert "result" in c.call("ledger.append", {"data": {"type": "t"}})
        st = _budget_status(d)
        assert st["refused"] == {"ledger_calls_per_s": 4} and _uid_row(st, 0)["ledger_calls"] == 6
        c.close()
    finally:
        cleanup(d)


def test_ledger_bytes_per_day_counts_the_records_appended():
    d = _daemon(ledger_bytes_per_day=6000)
    path = os.path.join(d.base, "state", "ledger.aal")
    try:
        c = RawConn(d.socket)
        size0 = os.path.getsize(path)
        note = "x" * 1000
        ok = 0
        refused = None
        for i in range(20):
            r = c.call("ledger.append", {"data": {"type": "t", "note": note, "i": i}})
            if "error" in r:
                refused = _refusal(r)
                break
            ok += 1
        assert refused is not None and refused["budget"] == "ledger_bytes_per_day"
        grown = os.path.getsize(path) - size0
        # The bytes charged are the bytes the file grew by, exactly.
        assert refused["used"] == grown and refused["limit"] == 6000
        # Calls are admitted while the use is below the limit: it ends past
        # the limit by less than one record (about 1200 B here).
        assert 6000 <= grown < 6000 + 1300 and ok in (5, 6) and 0 < refused["retry_after_s"] <= 86400
        st = _budget_status(d)
        assert st["ledger_bytes_24h"] == _uid_row(st, 0)["ledger_bytes_24h"] == grown
        assert st["refused"] == {"ledger_bytes_per_day": 1}
        c.close()
    finally:
        cleanup(d)


def test_every_ledger_writer_charges_its_records():
    """job.submit and job.release (LEDGER_WRITERS) are charged the bytes they append."""
    assert {"job.submit", "job.release", "ledger.append", "venom.set_model", "venom.release",
            "system.rotate_key", "overlay.invoke", "train.register", "train.report",
            "train.field_report", "train.telemetry"} == LEDGER_WRITERS
    d = _daemon()
    path = os.path.join(d.base, "state", "ledger.aal")
    try:
        c = RawConn(d.socket)
        size0 = os.path.getsize(path)
        assert "result" in c.call("job.submit", {"job_id": "w", "profile": "MINIMAL"})
        assert "result" in c.call("job.release", {"job_id": "w"})
        row = _uid_row(_budget_status(d), 0)
        assert row["ledger_calls"] == 2
        # The governor's records are written after its reply: wait for them.
        wait_for(lambda: os.path.getsize(path) - size0 == row["ledger_bytes_24h"], 5, "both records")
        assert row["ledger_bytes_24h"] == os.path.getsize(path) - size0 > 0
        c.close()
    finally:
        cleanup(d)


def test_budgets_reload_live():
    d = _daemon(jobs_per_connection=1)
    cfg_path = os.path.join(d.base, "aal-core.toml")
    try:
        c = RawConn(d.socket)
        assert "result" in c.call("job.submit", {"job_id": "a", "profile": "MINIMAL"})
        assert _refusal(c.call("job.submit", {"job_id": "b", "profile": "MINIMAL"}))["limit"] == 1
        with open(cfg_path) as fh:
            text = fh.read()
        with open(cfg_path, "w") as fh:
            fh.write(text.replace("jobs_per_connection = 1", "jobs_per_connection = 2"))
        r = c.call("system.reload")["result"]
        assert "budget.jobs_per_connection" in r["changed"] and r["restart_required"] == []
        assert "result" in c.call("job.submit", {"job_id": "b", "profile": "MINIMAL"})
        assert _refusal(c.call("job.submit", {"job_id": "c", "profile": "MINIMAL"}))["limit"] == 2
        c.close()
    finally:
        cleanup(d)


# ------------------------------------------------------------------ the flood

FLOOD_BUDGET = dict(jobs_per_uid=48, jobs_per_connection=32, subscriptions_per_uid=48,
                    subscriptions_per_connection=32, ledger_calls_per_s=50.0, ledger_calls_burst=400,
                    ledger_bytes_per_day=256 * 1024)
# Bounds stated in README ("Budgets"): RSS growth of the daemon over the
# flood, and the latency of every call of a client under its budget.
RSS_GROWTH_MAX = 16 << 20
LATENCY_MAX_S = 1.0

FLOODER = r"""
import json, socket, sys
sock_path = sys.argv[1]
def conn():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.settimeout(60); s.connect(sock_path)
    return s, s.makefile("rb")
out = {}
def batch(c, reqs):
    s, f = c
    s.sendall(json.dumps([{"jsonrpc": "2.0", "id": i, "method": m, "params": p}
                          for i, (m, p) in enumerate(reqs)]).encode() + b"\n")
    while True:
        r = json.loads(f.readline())
        if type(r) is list:
            break
    for x in r:
        m = reqs[x["id"]][0]
        row = out.setdefault(m, {"ok": 0, "refused": {}, "other": []})
        if "result" in x:
            row["ok"] += 1
        elif x["error"]["code"] == -32011:
            b = x["error"]["data"]["budget"]
            row["refused"][b] = row["refused"].get(b, 0) + 1
        else:
            row["other"].append(x["error"])
conns = [conn(), conn()]
n = 0
def submits(c, count):
    global n
    batch(c, [("job.submit", {"job_id": "f%d" % (n + i), "profile": "MINIMAL"}) for i in range(count)])
    n += count
for c in conns:                              # jobs budgets: 2 x 100 job.submit
    submits(c, 100)
for c in conns:                              # 2 x 1000 subscriptions
    for j in range(10):
        batch(c, [("job.subscribe", {"job_id": "s%d" % (n + i)}) for i in range(100)])
        n += 100
for j in range(20):                          # 2000 ledger.append of 2 KB: the bytes budget
    batch(conns[0], [("ledger.append", {"data": {"type": "flood", "note": "y" * 2000, "i": n + i}})
                     for i in range(100)])
    n += 100
for c in conns:                              # and 2 x 10000 job.submit more
    for j in range(100):
        submits(c, 100)
print(json.dumps(out))
"""


def _vmrss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.root
def test_a_flooding_peer_is_refused_while_another_is_served():
    from test_permissions import MEMBER, _ensure_users, as_user
    import pwd
    _ensure_users()
    member_uid = pwd.getpwnam(MEMBER).pw_uid
    d = _daemon(**FLOOD_BUDGET)
    path = os.path.join(d.base, "state", "ledger.aal")
    try:
        os.chmod(d.base, 0o755)
        script = os.path.join(d.base, "flood.py")
        with open(script, "w") as fh:
            fh.write(FLOODER)
        os.chmod(script, 0o644)
        other = RawConn(d.socket)
        assert "result" in other.call("system.health")
        rss0, size0 = _vmrss(d.proc.pid), os.path.getsize(path)
        flood = subprocess.Popen(["setpriv", f"--reuid={MEMBER}", f"--regid={MEMBER}", "--init-groups", "--",
                                  sys.executable, script, d.socket],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # The second client: a job submitted and released, a health check,
        # in a loop while the flood runs.
        latencies, i = [], 0
        while flood.poll() is None:
            for method, params in (("job.submit", {"job_id": f"ok{i}", "profile": "BALANCED"}),
                                   ("system.health", None), ("job.release", {"job_id": f"ok{i}"})):
                t = time.monotonic()
                r = other.call(method, params)
                latencies.append(time.monotonic() - t)
                assert "result" in r, (method, r)
            i += 1
            time.sleep(0.01)
        stdout, stderr = flood.communicate(timeout=120)
        assert flood.returncode == 0, stderr
        seen = json.loads(stdout)
        rss1 = _vmrss(d.proc.pid)
        grown = os.path.getsize(path) - size0

        # Every call was answered, with a result or a budget refusal only.
        assert all(not row["other"] for row in seen.values()), seen
        assert seen["job.submit"]["ok"] <= FLOOD_BUDGET["jobs_per_uid"]
        assert seen["job.subscribe"]["ok"] == FLOOD_BUDGET["subscriptions_per_uid"]
        assert set(seen["job.subscribe"]["refused"]) == {"subscriptions_per_connection", "subscriptions_per_uid"}
        assert {"jobs_per_connection", "jobs_per_uid", "ledger_bytes_per_day"} <= set(seen["job.submit"]["refused"])
        assert "ledger_bytes_per_day" in seen["ledger.append"]["refused"]
        assert seen["ledger.append"]["ok"] < 200
        # The refusals the flooder saw are the ones system.status counts.
        st = _budget_status(d)
        row = _uid_row(st, member_uid)
        saw = {}
        for m in seen.values():
            for k, v in m["refused"].items():
                saw[k] = saw.get(k, 0) + v
        assert row["refused"] == saw and st["refused"] == saw
        assert st["refused_total"] == sum(saw.values()) >= 20000
        # Bounds: the flooder's bytes stop at its budget plus one record;
        # the file grew by what the two uids were charged, plus the
        # daemon's own govern.release record (< 300 B) for each job its
        # connections held when they closed.
        assert row["ledger_bytes_24h"] <= FLOOD_BUDGET["ledger_bytes_per_day"] + 2400
        charged = sum(r["ledger_bytes_24h"] for r in st["uids"])
        assert 0 <= grown - charged <= seen["job.submit"]["ok"] * 300, (grown, charged)
        assert rss1 - rss0 <= RSS_GROWTH_MAX, (rss0, rss1)
        # The other client was served, promptly.
        assert i >= 3 and max(latencies) < LATENCY_MAX_S, max(latencies)
        assert "refused" not in _uid_row(st, 0)
        print(f"flood: rss {rss0 >> 20} -> {rss1 >> 20} MiB, ledger +{grown} B, "
              f"max latency {max(latencies) * 1000:.0f} ms over {len(latencies)} calls, "
              f"refused {st['refused_total']}")
        other.close()
    finally:
        cleanup(d)


def test_only_the_ledger_writers_append_for_their_caller():
    """Every method's example call (as tests/test_contracts.py makes them):
    the chain grows only for LEDGER_WRITERS, and those are charged."""
    d = _daemon()
    try:
        c = RawConn(d.socket)
        doc = c.call("rpc.discover")["result"]

        def length():
            return c.call("ledger.manifest")["result"]["chain_length"]

        def settled():
            # The governor writes its records after replying: wait until the chain stops growing.
            last = length()
            while True:
                time.sleep(0.1)
                now = length()
                if now == last:
                    return now
                last = now

        writers_seen = set()
        for i, m in enumerate(sorted(doc["methods"], key=lambda m: m["name"])):
            name = m["name"]
            assert m.get("x-writes-ledger", False) == (name in LEDGER_WRITERS), name
            before = settled()
            reply = c.call(name, m.get("x-example-params"), id_=i)
            after = settled()
            if name in LEDGER_WRITERS:
                if after > before:
                    writers_seen.add(name)
                if name == "job.submit" and "result" in reply:   # no directives for it later
                    c.call("job.release", {"job_id": reply["result"]["job_id"]})
                    settled()
            else:
                assert after == before, f"{name} appended {after - before} ledger entries but is not in LEDGER_WRITERS"
        # venom is off here (venom.* record only through the running loop).
        assert writers_seen >= {"job.submit", "ledger.append"}
        c.close()
    finally:
        cleanup(d)
