"""aalctl and the client library against the real daemon."""
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess

import pytest

from aal_core import errors as E
from aal_core.client import AsyncClient, Client, ConnectError, RpcCallError

from helpers import AALCTL, short_tmpdir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live():
    from helpers import cleanup, start_daemon
    d = start_daemon(config="[rpc]\nheartbeat_interval_s = 0.02\n")
    yield d
    cleanup(d)


def aalctl(*args, timeout=30):
    return subprocess.run([AALCTL, *args], capture_output=True, text=True, timeout=timeout)


# ----------------------------------------------------------------- aalctl

def test_status_is_readable(live):
    r = aalctl("--socket", live.socket, "status")
    assert r.returncode == 0 and r.stderr == ""
    lines = r.stdout.splitlines()
    assert lines[0].startswith("aal-core ") and f"pid {live.proc.pid}" in lines[0]
    assert any(ln.split() == ["socket", live.socket] for ln in lines)
    assert any(ln.strip().startswith("clients") and "open" in ln for ln in lines)
    assert any("uvloop" in ln and "orjson" in ln for ln in lines)


def test_socket_from_the_environment(live):
    r = subprocess.run([AALCTL, "call", "system.health"], capture_output=True, text=True, timeout=30,
                       env=dict(os.environ, AAL_CORE_SOCKET=live.socket))
    assert r.returncode == 0 and json.loads(r.stdout)["ok"] is True


def test_call_prints_json(live):
    r = aalctl("--socket", live.socket, "call", "system.heartbeat.unsubscribe", '{"subscription": "x"}')
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("aalctl: error: ")
    err = json.loads(r.stderr[len("aalctl: error: "):])
    assert err["code"] == E.CONFLICT and err["data"] == {"subscription": "x"}
    r = aalctl("--socket", live.socket, "call", "system.health")
    assert r.returncode == 0 and json.loads(r.stdout)["ok"] is True
    r = aalctl("--socket", live.socket, "call", "system.heartbeat.unsubscribe", '["positional"]')
    assert r.returncode == 1 and json.loads(r.stderr.split("error: ", 1)[1])["code"] == E.CONFLICT


@pytest.mark.parametrize("args,code,fragment", [
    (["call", "no.such"], 1, '"code": -32601'),
    (["call", "system.health", '{"bad": json'], 2, "params are not valid JSON"),
    (["call", "system.health", "5"], 2, "must be a JSON array or object"),
])
def test_call_errors(live, args, code, fragment):
    r = aalctl("--socket", live.socket, *args)
    assert r.returncode == code and fragment in r.stderr and "Traceback" not in r.stderr


def test_watch_follows_a_subscription(live):
    r = aalctl("--socket", live.socket, "watch", "system.heartbeat", "--count", "3")
    assert r.returncode == 0, r.stderr
    notes = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert len(notes) == 3 and all(set(n) == {"subscription", "dropped", "data"} for n in notes)
    seqs = [n["data"]["seq"] for n in notes]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3


def test_watch_of_an_unknown_topic(live):
    r = aalctl("--socket", live.socket, "watch", "nope")
    assert r.returncode == 1 and '"code": -32601' in r.stderr


@pytest.mark.parametrize("make", ["missing", "refused"])
def test_missing_or_refused_socket_is_one_sentence_exit_3(make):
    base = short_tmpdir()
    path = os.path.join(base, "aal-core.sock")
    if make == "refused":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(path)  # a socket file with nobody listening
        s.close()
    for args in (["status"], ["call", "system.health"], ["watch", "system.heartbeat"]):
        r = aalctl("--socket", path, *args)
        assert r.returncode == 3 and r.stdout == ""
        assert r.stderr == (f"aalctl: cannot connect to {path}: no aal-core is listening there "
                            f"(is the service running? try: systemctl status aal-core)\n")


def test_daemon_going_away_mid_watch_is_exit_3():
    from helpers import cleanup, start_daemon
    d = start_daemon(config="[rpc]\nheartbeat_interval_s = 0.02\n")
    try:
        p = subprocess.Popen([AALCTL, "--socket", d.socket, "watch", "system.heartbeat"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert json.loads(p.stdout.readline())["data"]["seq"] >= 1
        assert d.stop() == 0
        out, err = p.communicate(timeout=15)
        assert p.returncode == 3 and "closed the connection" in err and "Traceback" not in err
    finally:
        cleanup(d)


# ----------------------------------------------------------------- Client

def test_sync_client_call_batch_and_errors(live):
    with Client(live.socket) as c:
        assert c.call("system.health")["ok"] is True
        res = c.batch([("system.health", None), ("no.such", None), ("system.status", {})])
        assert res[0]["ok"] is True
        assert isinstance(res[1], RpcCallError) and res[1].code == E.METHOD_NOT_FOUND
        assert res[2]["version"]
        with pytest.raises(RpcCallError) as ei:
            c.call("system.heartbeat.unsubscribe", {"subscription": 1})
        assert ei.value.code == E.INVALID_PARAMS and ei.value.data["param"] == "subscription"
        with pytest.raises(ValueError):
            c.batch([])
        # Refused before anything was sent: the next call gets its own reply
        # (it used to get the daemon's "empty batch" error).
        assert c.call("system.health")["ok"] is True


def test_sync_client_subscription_keeps_notifications_that_arrive_during_calls(live):
    with Client(live.socket) as c:
        it = c.subscribe("system.heartbeat")
        first = next(it)
        for _ in range(5):
            assert c.call("system.health")["ok"] is True   # pushes arrive meanwhile
        later = [next(it) for _ in range(5)]
        seqs = [first["data"]["seq"]] + [n["data"]["seq"] for n in later]
        assert seqs == sorted(seqs)
        # Drops are reported, never silent: each gap equals the count.
        for a, b, n in zip(seqs, seqs[1:], later):
            assert b - a - 1 == n["dropped"]


def test_sync_client_connect_errors():
    with pytest.raises(ConnectError, match="no aal-core is listening"):
        Client(os.path.join(short_tmpdir(), "none.sock"))


# ----------------------------------------------------------------- AsyncClient

def test_async_client_concurrent_calls_batch_and_subscription(live):
    async def main():
        async with AsyncClient(live.socket) as c:
            # 200 calls in flight at once on one connection, matched by id.
            results = await asyncio.gather(*(c.call("system.health") for _ in range(200)))
            assert all(r["ok"] for r in results)
            sub, q = await c.subscribe("system.heartbeat")
            got = [await asyncio.wait_for(q.get(), 5) for _ in range(3)]
            assert all(n["subscription"] == sub for n in got)
            # Calls and a batch while pushes keep coming.
            b = await c.batch([("system.health", None), ("no.such", None)])
            assert b[0]["ok"] is True and isinstance(b[1], RpcCallError) and b[1].code == E.METHOD_NOT_FOUND
            two = await asyncio.gather(c.batch([("system.health", None)] * 3),
                                       c.batch([("system.status", None)] * 2))
            assert len(two[0]) == 3 and all("version" in r for r in two[1])
            with pytest.raises(RpcCallError) as ei:
                await c.batch([("system.health", None)] * 101)
            assert ei.value.code == E.INVALID_REQUEST and ei.value.data["max_batch"] == 100
            with pytest.raises(RpcCallError) as ei:
                await c.call("nope")
            assert ei.value.code == E.METHOD_NOT_FOUND
            await c.unsubscribe("system.heartbeat", sub)
            while not q.empty():
                q.get_nowait()
            assert (await c.call("system.health"))["ok"]
    asyncio.run(main())


def test_async_client_sees_the_connection_end():
    from helpers import cleanup, start_daemon
    d = start_daemon(config="[rpc]\nheartbeat_interval_s = 0.02\n")

    async def main():
        c = await AsyncClient(d.socket).connect()
        sub, q = await c.subscribe("system.heartbeat")
        await asyncio.wait_for(q.get(), 5)
        await asyncio.get_running_loop().run_in_executor(None, d.stop)
        while (item := await asyncio.wait_for(q.get(), 10)) is not None:
            pass
        with pytest.raises(ConnectError, match="closed the connection"):
            await c.call("system.health")
        await c.close()
    try:
        asyncio.run(main())
    finally:
        cleanup(d)


def test_async_client_connect_error():
    async def main():
        with pytest.raises(ConnectError, match="no aal-core is listening"):
            await AsyncClient(os.path.join(short_tmpdir(), "none.sock")).connect()
    asyncio.run(main())
