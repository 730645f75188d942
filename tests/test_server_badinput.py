"""Bad input over the real socket of a real daemon.  Each case checks the
reply, that the same connection still works where it should, and that
other clients are served all along."""
from __future__ import annotations

import json
import socket
import time

import pytest

from aal_core import errors as E

from rpc_fixtures import RawConn, keeps_serving

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shared_daemon():
    from helpers import cleanup, start_daemon
    d = start_daemon()
    yield d
    assert d.stop() == 0
    cleanup(d)


def _still_works(c: RawConn):
    r = c.call("system.health", id_="after")
    assert r["id"] == "after" and r["result"]["ok"] is True


@pytest.mark.parametrize("frame,code,check", [
    (b'{"jsonrpc":"2.0","id":1,"method":"system.health\xff\xfe"}\n', E.PARSE_ERROR,
     lambda e: e["data"] == {"reason": "invalid UTF-8", "position": 47}),  # the \xff
    (b'{"jsonrpc":"2.0","id":1,"method":"system.he\n', E.PARSE_ERROR,
     lambda e: "end of data" in e["data"]["reason"]),
    (b'{"jsonrpc":"2.0","id":1,"method":"system.health","params":{"a":1e400}}\n', E.PARSE_ERROR,
     lambda e: "infinity" in e["data"]["reason"]),
    (b'{"jsonrpc":"2.0","id":99999999999999999999999,"method":"system.health"}\n', E.INVALID_REQUEST,
     lambda e: e["data"]["id"] == "99999999999999999999999"),
    (b"[" * 200_000 + b"]" * 200_000 + b"\n", E.INVALID_REQUEST,
     lambda e: e["data"] == {"max_depth": 64}),
    (b'{"jsonrpc":"2.0","id":1,"method":"system.health","params":' + b"[" * 70 + b"]" * 70 + b"}\n",
     E.INVALID_REQUEST, lambda e: e["data"] == {"max_depth": 64}),
    (b'{"jsonrpc":"2.0","id":1,"method":"no.such.method"}\n', E.METHOD_NOT_FOUND,
     lambda e: e["data"] == {"method": "no.such.method"}),
    (b'{"jsonrpc":"2.0","id":1,"method":"system.heartbeat.unsubscribe","params":{"subscription":5}}\n',
     E.INVALID_PARAMS, lambda e: e["data"]["param"] == "subscription" and e["data"]["got"] == "integer"),
    (b'{"jsonrpc":"2.0","id":1,"method":"system.heartbeat.unsubscribe","params":[]}\n',
     E.INVALID_PARAMS, lambda e: e["data"]["missing"] == ["subscription"]),
    (b'{"jsonrpc":"2.0","id":1,"method":"system.health","params":{"x":"' + b"y" * 900_000 + b'"}}\n',
     E.INVALID_PARAMS, lambda e: e["data"]["param"] == "x"),
    (b"[]\n", E.INVALID_REQUEST, lambda e: e["message"] == "empty batch"),
])
def test_bad_frames_get_a_precise_error_and_the_connection_goes_on(shared_daemon, frame, code, check):
    with keeps_serving(shared_daemon.socket):
        c = RawConn(shared_daemon.socket)
        try:
            c.send(frame)
            r = c.reply()
            assert r["error"]["code"] == code, r
            assert check(r["error"]), r["error"]
            _still_works(c)
        finally:
            c.close()


def test_huge_string_within_the_limit_is_accepted(shared_daemon):
    c = RawConn(shared_daemon.socket)
    try:
        big = "z" * 1_000_000
        # A huge method name is an unknown method, echoed back intact.
        c.send_obj({"jsonrpc": "2.0", "id": 7, "method": big[:1_000_000 - 100]})
        r = c.reply()
        assert r["error"]["code"] == E.METHOD_NOT_FOUND and len(r["error"]["data"]["method"]) == 1_000_000 - 100
        _still_works(c)
    finally:
        c.close()


def test_oversize_frame_gets_an_error_then_the_connection_closes(shared_daemon):
    with keeps_serving(shared_daemon.socket):
        other = RawConn(shared_daemon.socket)
        c = RawConn(shared_daemon.socket)
        try:
            try:
                c.send(b'{"jsonrpc":"2.0","id":1,"method":"' + b"x" * (2 << 20))
            except (BrokenPipeError, ConnectionResetError):
                pass  # the daemon may close before we finish sending
            r = json.loads(c.line())
            assert r["id"] is None and r["error"]["code"] == E.FRAME_TOO_LARGE
            assert r["error"]["data"]["limit"] == 1 << 20 and r["error"]["data"]["size_at_least"] > 1 << 20
            assert c.at_eof()
            _still_works(other)
        finally:
            c.close()
            other.close()
    assert "event=frame_too_large" in shared_daemon.log()


def test_pipelined_frames_in_one_write_are_all_answered_in_order(shared_daemon):
    c = RawConn(shared_daemon.socket)
    try:
        n = 2000
        c.send(b"".join(json.dumps({"jsonrpc": "2.0", "id": i, "method": "system.health"}).encode() + b"\n"
                        for i in range(n)))
        ids = [c.reply()["id"] for _ in range(n)]
        assert ids == list(range(n))
    finally:
        c.close()


def test_a_request_split_across_many_writes(shared_daemon):
    c = RawConn(shared_daemon.socket)
    try:
        frame = b'{"jsonrpc":"2.0","id":"split","method":"system.health"}\n'
        for i in range(len(frame)):
            c.send(frame[i:i + 1])
            time.sleep(0.001)
        assert c.reply()["id"] == "split"
    finally:
        c.close()


def test_500_connections_at_once(shared_daemon):
    with keeps_serving(shared_daemon.socket):
        conns = [RawConn(shared_daemon.socket, timeout=20) for _ in range(500)]
        try:
            for i, c in enumerate(conns):
                c.send_obj({"jsonrpc": "2.0", "id": i, "method": "system.health"})
            for i, c in enumerate(conns):
                r = c.reply()
                assert r["id"] == i and r["result"]["ok"] is True
            st = conns[0].call("system.status")["result"]
            assert st["connections"]["open"] >= 500
        finally:
            for c in conns:
                c.close()


def test_clients_that_disconnect_mid_request(shared_daemon):
    with keeps_serving(shared_daemon.socket):
        for i in range(50):
            c = RawConn(shared_daemon.socket)
            if i % 3 == 0:
                c.send(b'{"jsonrpc":"2.0","id":1,"method":"system.sta')   # half a frame
            elif i % 3 == 1:
                # A request whose (async) reply has nowhere to go.
                c.send(b'{"jsonrpc":"2.0","id":1,"method":"system.reload"}\n')
            else:
                c.send(b"".join(b'{"jsonrpc":"2.0","id":%d,"method":"system.status"}\n' % k
                                for k in range(300)))
            # RST instead of FIN where possible: the rudest way to leave.
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            c.close()
    st = RawConn(shared_daemon.socket).call("system.status")["result"]
    # The dead connections are gone (only this one, plus maybe the probe's).
    deadline = time.monotonic() + 5
    while st["connections"]["open"] > 2 and time.monotonic() < deadline:
        time.sleep(0.05)
        st = RawConn(shared_daemon.socket).call("system.status")["result"]
    assert st["connections"]["open"] <= 2
    assert "Traceback" not in shared_daemon.log()


def test_half_close_still_gets_the_replies(shared_daemon):
    c = RawConn(shared_daemon.socket)
    try:
        c.send(b'{"jsonrpc":"2.0","id":1,"method":"system.health"}\n'
               b'{"jsonrpc":"2.0","id":2,"method":"system.reload"}\n')
        c.sock.shutdown(socket.SHUT_WR)
        got = {c.reply()["id"], c.reply()["id"]}
        assert got == {1, 2}
        assert c.at_eof()
    finally:
        c.close()


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_a_client_that_never_reads_its_replies(shared_daemon):
    # Pipelined requests whose replies (a few KB each) are never read: once
    # the replies fill the socket buffers the daemon must stop reading this
    # client instead of queueing replies without bound, and go on serving
    # the others; then the client still gets its replies, in order.
    frame = b'{"jsonrpc":"2.0","id":1,"method":"system.status"}\n'
    pid = shared_daemon.proc.pid
    rss_before = _rss_bytes(pid)
    with keeps_serving(shared_daemon.socket) as probe:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(shared_daemon.socket)
        s.setblocking(False)
        sent, stalled_since = 0, None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                sent += s.send(frame * 64)
                stalled_since = None
            except BlockingIOError:
                stalled_since = stalled_since or time.monotonic()
                if time.monotonic() - stalled_since > 1.0:
                    break          # nobody drains our requests any more
                time.sleep(0.01)
        assert stalled_since is not None, "the daemon kept reading a client that never reads"
        ok_while_stalled = probe["ok"]
        time.sleep(0.5)
        assert probe["ok"] > ok_while_stalled, "other clients were not served"
        grown = _rss_bytes(pid) - rss_before
        assert grown < 48 << 20, f"daemon RSS grew by {grown >> 20} MiB for one client that does not read"
        # Now read: the replies come, in order, all of the same request.
        s.setblocking(True)
        s.settimeout(10)
        buf, replies = b"", 0
        while replies < 50:
            buf += s.recv(1 << 16)
            lines = buf.split(b"\n")
            buf = lines.pop()
            for line in lines:
                r = json.loads(line)
                assert r["id"] == 1 and r["result"]["pid"] == pid
                replies += 1
        s.close()
    assert sent > 0
