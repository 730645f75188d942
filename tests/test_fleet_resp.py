"""The exporter's RESP client (daemon/export/resp.py) against a real
redis-server: URLs, AUTH and SELECT, pipelined XADD, error replies, a
server that goes away; and that the exporter imports neither redis-py nor
asyncio."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
import redis

from aal_core.export.resp import Resp, RespError, encode, parse_url
from export_helpers import free_port
from helpers import short_tmpdir, wait_for


@pytest.fixture
def server():
    """redis-server with a password, on TCP and on a Unix socket."""
    base = short_tmpdir()
    port, sock = free_port(), os.path.join(base, "redis.sock")
    p = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--unixsocket", sock,
                          "--requirepass", "s3cret", "--save", "", "--appendonly", "no", "--dir", base],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def up():
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return os.path.exists(sock)
    try:
        wait_for(lambda: _try(up), 20, "redis-server")
        yield {"port": port, "sock": sock, "proc": p}
    finally:
        p.kill()
        p.wait()


def _try(fn):
    try:
        return fn()
    except OSError:
        return False


def test_parse_url_and_encoding():
    assert parse_url("redis://u:p%40ss@h:7000/3") == {"tls": False, "username": "u", "password": "p@ss", "db": 3,
                                                    "host": "h", "port": 7000}
    assert parse_url("rediss://:pw@h")["tls"] and parse_url("rediss://:pw@h")["port"] == 6379
    assert parse_url("unix:///run/redis.sock?db=2&password=x") == {"tls": False, "username": None,
                                                                  "password": "x", "db": 2,
                                                                  "unix": "/run/redis.sock"}
    with pytest.raises(ValueError, match="not a Redis URL"):
        parse_url("http://h:6379")
    assert encode("XADD", "k", 1, 0.5, b"\x00") == b"*5\r\n$4\r\nXADD\r\n$1\r\nk\r\n$1\r\n1\r\n$3\r\n0.5\r\n$1\r\n\x00\r\n"


def test_auth_select_pipeline_and_error_replies(server):
    r = Resp(f"redis://:s3cret@127.0.0.1:{server['port']}/2")
    assert r.command("PING") == "PONG"
    replies = r.pipeline([("XADD", "s", "MAXLEN", "~", 10, "*", "a", "1"),
                          ("INCR", "s"),                       # wrong type: an error reply in its place
                          ("XADD", "s", "*", "b", "2"),
                          ("XLEN", "s")])
    assert isinstance(replies[0], bytes) and b"-" in replies[0]
    assert isinstance(replies[1], RespError) and "WRONGTYPE" in str(replies[1])
    assert replies[3] == 2
    assert r.command("XREVRANGE", "s", "+", "-", "COUNT", 1)[0][1] == [b"b", b"2"]
    assert r.command("GET", "nothing") is None
    r.close()
    # What redis-py reads from the same URL: the entries went to db 2.
    assert redis.Redis.from_url(f"redis://:s3cret@127.0.0.1:{server['port']}/2").xlen("s") == 2
    assert redis.Redis.from_url(f"redis://:s3cret@127.0.0.1:{server['port']}/0").xlen("s") == 0


def test_unix_socket_url(server):
    r = Resp(f"unix://{server['sock']}?db=1&password=s3cret")
    assert r.command("PING") == "PONG"
    assert r.command("SET", "k", "v") == "OK" and r.command("GET", "k") == b"v"
    r.close()


def test_wrong_password_and_a_server_that_goes_away(server):
    with pytest.raises(RespError, match="WRONGPASS|invalid"):
        Resp(f"redis://:nope@127.0.0.1:{server['port']}/0").connect()
    r = Resp(f"redis://:s3cret@127.0.0.1:{server['port']}/0")
    assert r.command("PING") == "PONG"
    server["proc"].kill()
    server["proc"].wait()
    with pytest.raises(OSError):
        for _ in range(3):         # the first write may still land in the socket buffer
            r.command("PING")
            time.sleep(0.1)
    with pytest.raises(OSError):
        Resp(f"redis://127.0.0.1:{server['port']}/0", connect_timeout=0.5).connect()


def test_the_exporter_imports_neither_redis_py_nor_asyncio():
    code = ("import sys; from aal_core.export import main, fleet, resp; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('redis', 'asyncio')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
