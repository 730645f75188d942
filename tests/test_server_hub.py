"""The push hub and a connection's outbox, in process over a real socket
pair: encode once, filters, drop-oldest with exact counts, cleanup on close."""
from __future__ import annotations

import asyncio
import json
import socket

import uvloop

from aal_core.rpc import Dispatcher, Limits
from aal_core.rpc.registry import Registry
from aal_core.rpc.server import Connection, Hub, RpcServer


def _server(outbox=4):
    reg = Registry()
    reg.add_topic("t", data="Heartbeat", subscribe=lambda p, c: None)
    return RpcServer(Dispatcher(reg, Limits()), Hub(), max_connections=10, idle_timeout_s=60,
                     outbox_max_frames=outbox, group="aal")


async def _connected(server):
    """A Connection on one end of a socketpair, and the raw other end."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    loop = asyncio.get_running_loop()
    conn = Connection(server)
    await loop.connect_accepted_socket(lambda: conn, a)
    b.setblocking(False)
    return conn, b


async def _read_lines(sock, n, timeout=5):
    loop = asyncio.get_running_loop()
    buf = b""
    while buf.count(b"\n") < n:
        buf += await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), timeout)
    return [json.loads(x) for x in buf.split(b"\n") if x][:n]


def test_filters_and_encoding_once():
    async def main():
        server = _server()
        hub, topic = server.hub, server.dispatcher.registry.topics["t"]
        c1, s1 = await _connected(server)
        c2, s2 = await _connected(server)
        c1.subscribe(topic, None)
        c2.subscribe(topic, lambda d: d["seq"] % 2 == 0)
        c3, s3 = await _connected(server)
        c3.subscribe(topic, lambda d: 1 / 0)       # a broken filter
        assert hub.publish("t", {"seq": 1}) == 1
        assert hub.publish("t", {"seq": 2}) == 2
        assert hub.publish("t", {"seq": 3}, encoded=b'{"seq":3,"pre":true}') == 1
        got1 = await _read_lines(s1, 3)
        got2 = await _read_lines(s2, 1)
        assert [g["params"]["data"] for g in got1] == [{"seq": 1}, {"seq": 2}, {"seq": 3, "pre": True}]
        assert got2[0]["params"]["data"] == {"seq": 2} and got2[0]["method"] == "t.update"
        for s in (s1, s2, s3):
            s.close()
        await asyncio.sleep(0.05)
        assert hub.subscribers("t") == 0       # subscriptions end with their connection
        assert hub.publish("t", {"seq": 4}) == 0
    uvloop.run(main())


def test_outbox_drops_oldest_and_counts_exactly():
    async def main():
        server = _server(outbox=4)
        hub, topic = server.hub, server.dispatcher.registry.topics["t"]
        conn, peer = await _connected(server)
        sub = conn.subscribe(topic, None)
        conn.pause_writing()               # as the transport does when the client stops reading
        for i in range(1, 11):
            hub.publish("t", {"seq": i})
        assert len(conn.outbox) == 4 and conn.dropped_total == 6 and server.dropped_total == 6
        conn.resume_writing()
        got = await _read_lines(peer, 4)
        assert [(g["params"]["data"]["seq"], g["params"]["dropped"]) for g in got] == \
            [(7, 6), (8, 0), (9, 0), (10, 0)]
        assert all(g["params"]["subscription"] == sub for g in got)
        peer.close()
    uvloop.run(main())
