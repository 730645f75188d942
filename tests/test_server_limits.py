"""Connection limits of the real daemon: max connections, idle timeout, and
the bounded outbox of a client that subscribes and never reads."""
from __future__ import annotations

import json
import time

import pytest

from aal_core import errors as E

from rpc_fixtures import RawConn, keeps_serving

pytestmark = pytest.mark.slow


def _status(path):
    c = RawConn(path)
    try:
        return c.call("system.status")["result"]
    finally:
        c.close()


def test_max_connections_refuses_with_overloaded_and_others_are_unaffected(daemon_factory):
    d = daemon_factory(config="[rpc]\nmax_connections = 5\n")
    held = [RawConn(d.socket) for _ in range(5)]
    try:
        for c in held:
            assert c.call("system.health")["result"]["ok"] is True
        extra = RawConn(d.socket)
        r = extra.reply()
        assert r["id"] is None and r["error"]["code"] == E.OVERLOADED
        assert "too many connections (limit 5)" in r["error"]["message"]
        assert r["error"]["data"] == {"max_connections": 5}
        assert extra.at_eof()
        extra.close()
        # The five admitted ones carry on.
        for i, c in enumerate(held):
            assert c.call("system.health", id_=i)["id"] == i
        st = held[0].call("system.status")["result"]["connections"]
        assert st["open"] == 5 and st["max"] == 5 and st["refused_total"] >= 1
        # A slot frees up when one leaves.
        held.pop().close()
        deadline = time.monotonic() + 5
        while True:
            c = RawConn(d.socket)
            c.send_obj({"jsonrpc": "2.0", "id": 1, "method": "system.health"})
            r = c.reply()
            c.close()
            if "result" in r or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert r["result"]["ok"] is True
    finally:
        for c in held:
            c.close()


def test_idle_connections_are_closed_but_subscribers_are_not(daemon_factory):
    d = daemon_factory(config="[rpc]\nidle_timeout_s = 0.5\nheartbeat_interval_s = 0.1\n")
    idle = RawConn(d.socket)
    busy = RawConn(d.socket)
    sub = RawConn(d.socket)
    try:
        assert idle.call("system.health")["result"]["ok"]
        assert sub.call("system.heartbeat.subscribe")["result"]["topic"] == "system.heartbeat"
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.5:
            assert busy.call("system.health")["result"]["ok"]   # activity keeps it open
            time.sleep(0.1)
        assert idle.at_eof(timeout=3.0)
        assert busy.call("system.health")["result"]["ok"]
        # The subscriber got pushes the whole time and is still open.
        notes = [json.loads(sub.line()) for _ in range(5)]
        assert all(n["method"] == "system.heartbeat.update" for n in notes)
        assert not sub.at_eof(timeout=0.3)
    finally:
        for c in (idle, busy, sub):
            c.close()
    assert "event=idle_close" in d.log()


def test_a_subscriber_that_never_reads_loses_the_oldest_and_is_told(daemon_factory):
    d = daemon_factory(config="[rpc]\noutbox_max_frames = 8\nheartbeat_interval_s = 0.001\n")
    slow = RawConn(d.socket, rcvbuf=4096)
    try:
        r = slow.call("system.heartbeat.subscribe")
        sub_id = r["result"]["subscription"]
        with keeps_serving(d.socket):
            # Wait (not reading) until the daemon reports drops for us.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                st = _status(d.socket)["connections"]
                if st["dropped_total"] > 0:
                    break
                time.sleep(0.1)
            assert st["dropped_total"] > 0, "nothing was dropped for a client that never reads"
        # Now read: every gap in seq is exactly the reported drop count.
        prev, gaps, after = None, 0, 0
        t_end = time.monotonic() + 30
        while time.monotonic() < t_end and after < 50:
            n = json.loads(slow.line())
            p = n["params"]
            assert n["method"] == "system.heartbeat.update" and p["subscription"] == sub_id
            seq = p["data"]["seq"]
            if prev is not None:
                assert seq - prev - 1 == p["dropped"], (prev, seq, p["dropped"])
            gaps += p["dropped"] > 0
            after += gaps > 0
            prev = seq
        assert gaps >= 1 and after == 50
    finally:
        slow.close()
    # The daemon bounded the memory it spent on that client.
    assert "Traceback" not in d.log()
