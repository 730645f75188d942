"""Bounded unsent replies (README, "Slow readers"): the policy in process
over a real socket pair, and 100 clients that never read against the real
daemon, whose RSS stays bounded while another client is served."""
from __future__ import annotations

import asyncio
import json
import os
import socket
import time

import pytest
import uvloop

from aal_core import errors as E
from aal_core.rpc import Dispatcher, Limits
from aal_core.rpc.server import Connection, Hub, RpcServer

from helpers import wait_for
from rpc_fixtures import make_registry

SOFT, REPLY = 16 * 1024, 64 * 1024


def _server(hard=SOFT + REPLY, total=1 << 30):
    reg, _ = make_registry()
    reg.add("big", lambda p, c: {"text": "x" * p["n"]}, params="aaltest.v1.EchoParams", result="aaltest.v1.EchoResult")

    async def abig(p, c):
        await asyncio.sleep(0)
        return {"text": "y" * p["n"]}
    reg.add("abig", abig, params="aaltest.v1.EchoParams", result="aaltest.v1.EchoResult")
    return RpcServer(Dispatcher(reg, Limits(max_reply_bytes=REPLY)), Hub(), max_connections=10,
                     idle_timeout_s=60, outbox_max_frames=8, group="aal", unsent_soft_bytes=SOFT,
                     unsent_hard_bytes=hard, unsent_total_bytes=total)


async def _connected(server):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    conn = Connection(server)
    await asyncio.get_running_loop().connect_accepted_socket(lambda: conn, a)
    server.admit(conn)
    b.setblocking(False)
    return conn, b


def _req(i, method, n):
    return {"jsonrpc": "2.0", "id": i, "method": method, "params": {"text": "", "n": n}}


async def _read_all(sock, n, timeout=10):
    loop = asyncio.get_running_loop()
    buf = b""
    while buf.count(b"\n") < n:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), timeout)
        if not chunk:
            break
        buf += chunk
    return [json.loads(x) for x in buf.split(b"\n") if x]


def test_soft_limit_pauses_reading_and_everything_arrives_in_order_after_draining():
    async def main():
        server = _server()
        conn, peer = await _connected(server)
        frames = b"".join(json.dumps(_req(i, "big", 4000)).encode() + b"\n" for i in range(200))
        # The daemon stops reading, so the send completes only once we read.
        sending = asyncio.ensure_future(asyncio.get_running_loop().sock_sendall(peer, frames))
        await asyncio.sleep(0.3)
        # Not reading: dispatch stopped near the soft limit, the rest waits unparsed.
        assert conn.paused and not conn.reading and conn.backlog and not sending.done()
        assert conn.unsent <= SOFT + REPLY and server.unsent_total == conn.unsent
        got = await _read_all(peer, 200)
        await sending
        assert [g["id"] for g in got] == list(range(200))
        assert all(g["result"]["text"] == "x" * 4000 for g in got)
        assert not conn.closing and conn.reading
        peer.close()
        await asyncio.sleep(0.05)
        assert server.unsent_total == 0
    uvloop.run(main())


def test_oversize_reply_and_batch_member_get_the_precise_error():
    async def main():
        server = _server()
        conn, peer = await _connected(server)
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(peer, json.dumps(_req(7, "big", REPLY + 10)).encode() + b"\n")
        r = (await _read_all(peer, 1))[0]
        assert r["id"] == 7 and r["error"]["code"] == E.REPLY_TOO_LARGE
        assert r["error"]["data"]["limit"] == REPLY and r["error"]["data"]["size"] > REPLY
        batch = [_req(i, "big" if i % 2 else "abig", 20000) for i in range(6)]
        await loop.sock_sendall(peer, json.dumps(batch).encode() + b"\n")
        r = (await _read_all(peer, 1))[0]
        assert [m["id"] for m in r] == list(range(6))
        ok = [m for m in r if "result" in m]
        errs = [m for m in r if "error" in m]
        assert len(ok) == 3 and len(errs) == 3            # 3 x 20 KB fit in 64 KiB
        assert all(e["error"]["code"] == E.REPLY_TOO_LARGE and e["error"]["data"]["limit"] == REPLY
                   and e["error"]["data"]["batch_bytes"] > 40000 for e in errs)
        assert len(json.dumps(r)) < REPLY + 6 * 400
        peer.close()
    uvloop.run(main())


def test_hard_limit_closes_a_client_that_does_not_read_and_logs_it(caplog):
    async def main():
        server = _server()
        conn, peer = await _connected(server)
        # Async replies arrive without reading more: 20 x 60 KB > the hard limit.
        frames = b"".join(json.dumps(_req(i, "abig", 60000)).encode() + b"\n" for i in range(20))
        await asyncio.get_running_loop().sock_sendall(peer, frames)
        await asyncio.sleep(0.5)
        assert conn.closing and server.backlog_closed_total == 1 and server.unsent_total == 0
        peer.close()
    uvloop.run(main())
    rec = [r for r in caplog.records if r.msg == "reply_backlog_closed"]
    assert len(rec) == 1 and rec[0].kv["pid"] == os.getpid() and rec[0].kv["uid"] == os.getuid()
    assert rec[0].kv["unsent"] > rec[0].kv["limit"] == SOFT + REPLY


def test_total_limit_sheds_the_stalled_biggest_and_serves_the_reader():
    async def main():
        server = _server(total=4 * (SOFT + REPLY))
        hogs = [await _connected(server) for _ in range(8)]
        loop = asyncio.get_running_loop()
        for _, peer in hogs:
            await loop.sock_sendall(peer, json.dumps(_req(1, "big", 60000)).encode() + b"\n")
        await asyncio.sleep(0.3)
        closed = [c for c, _ in hogs if c.closing]
        assert closed and len(closed) < 8
        assert server.unsent_total <= server.unsent_total_max
        reader, rpeer = await _connected(server)
        for i in range(5):
            await loop.sock_sendall(rpeer, json.dumps(_req(i, "big", 100)).encode() + b"\n")
            assert (await _read_all(rpeer, 1))[0]["id"] == i
        assert not reader.closing
    uvloop.run(main())


# ------------------------------------------------- the real daemon, 100 hogs

def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


RSS_BOUND_MIB = 40       # README: baseline + 40 MiB with the default limits
LATENCY_S = 0.5


@pytest.mark.slow
def test_100_clients_that_never_read_keep_the_daemon_bounded_and_others_served(daemon_factory):
    d = daemon_factory(config="[sense]\nsample_hz = 100.0\n")
    with d.client() as c:
        wait_for(lambda: len(c.call("stress.history", {"count": 600})["samples"]) >= 600, 20,
                 "a full stress history")
        c.call("rpc.discover")
        time.sleep(0.5)
        base = _rss_mib(d.proc.pid)
        hogs = []
        for i in range(100):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(d.socket)
            if i % 2:
                batch = [{"jsonrpc": "2.0", "id": k, "method": "rpc.discover"} for k in range(100)]
            else:
                batch = [{"jsonrpc": "2.0", "id": k, "method": "stress.history", "params": {"count": 600}}
                         for k in range(100)]
            s.sendall(json.dumps(batch).encode() + b"\n"
                      + b'{"jsonrpc":"2.0","id":"after","method":"system.health"}\n')
            hogs.append(s)
        peak, lat = base, []
        t_end = time.monotonic() + 4
        while time.monotonic() < t_end:
            for m, p in (("system.health", None), ("stress.get", None)):
                t0 = time.monotonic()
                c.call(m, p)
                lat.append(time.monotonic() - t0)
            peak = max(peak, _rss_mib(d.proc.pid))
            time.sleep(0.05)
        assert peak <= base + RSS_BOUND_MIB, (base, peak)
        assert len(lat) >= 20 and max(lat) < LATENCY_S, sorted(lat)[-5:]
    # Survivors were only paused: draining gives the whole batch, then the
    # request read after it; the others were closed.
    survivors = 0
    for s in hogs:
        s.settimeout(10)
        buf = b""
        while buf.count(b"\n") < 2:
            try:
                chunk = s.recv(1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                break
            buf += chunk
        s.close()
        lines = buf.split(b"\n")
        if buf.count(b"\n") == 2:
            batch, after = json.loads(lines[0]), json.loads(lines[1])
            assert [m["id"] for m in batch] == list(range(100)) and after["id"] == "after"
            assert all("result" in m or m["error"]["code"] == E.REPLY_TOO_LARGE for m in batch)
            survivors += 1
    log = d.log()
    assert 0 < survivors < 100, survivors
    assert "event=reply_backlog_shed" in log and f"pid={os.getpid()}" in log and f"uid={os.getuid()}" in log


def test_reply_limits_reload_live_and_are_checked_in_order(daemon_factory):
    d = daemon_factory(config="[rpc]\n")
    cfg = os.path.join(d.base, "aal-core.toml")
    with d.client() as c:
        assert c.call("rpc.discover")["openrpc"]
        with open(cfg, "w") as fh:
            fh.write("[rpc]\nmax_reply_bytes = 4096\nunsent_soft_bytes = 8192\n"
                     "unsent_hard_bytes = 16384\nunsent_total_bytes = 65536\n")
        r = c.call("system.reload")
        assert {"rpc.max_reply_bytes", "rpc.unsent_soft_bytes", "rpc.unsent_hard_bytes",
                "rpc.unsent_total_bytes"} <= set(r["changed"])
        # The same, open connection now gets the precise error for a big reply.
        from aal_core.client import RpcCallError
        with pytest.raises(RpcCallError) as ei:
            c.call("rpc.discover")
        assert ei.value.code == E.REPLY_TOO_LARGE and ei.value.data["limit"] == 4096
        with open(cfg, "w") as fh:
            fh.write("[rpc]\nunsent_hard_bytes = 300000\n")      # < soft + max_reply
        with pytest.raises(RpcCallError) as ei:
            c.call("system.reload")
        assert ei.value.code == E.CONFIG_INVALID and "rpc.unsent_hard_bytes must be at least" in ei.value.message
        with pytest.raises(RpcCallError):
            c.call("rpc.discover")                               # old (reloaded) limits kept
