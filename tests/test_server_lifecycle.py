"""Reload and stop: SIGHUP and system.reload keep connections; SIGTERM
finishes in-flight requests within the bound and exits 0."""
from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import signal
import time

import pytest
import uvloop

from aal_core import errors as E
from aal_core.listener import bind_socket
from aal_core.rpc import Dispatcher, Limits
from aal_core.rpc.server import Hub, RpcServer

from helpers import short_tmpdir, wait_for
from rpc_fixtures import RawConn, make_registry

pytestmark = pytest.mark.slow


def _write_config(d, text):
    with open(os.path.join(d.base, "aal-core.toml"), "w") as fh:
        fh.write(text)


def _wait_log(d, text, timeout=10.0):
    wait_for(lambda: text in d.log(), timeout, what=f"{text!r} in the daemon's log")


def test_sighup_reload_keeps_connections_and_reports_changes(daemon_factory):
    d = daemon_factory(config="[rpc]\nmax_batch = 3\n")
    c = RawConn(d.socket)
    sub = RawConn(d.socket)
    assert sub.call("system.heartbeat.subscribe")["result"]["subscription"]
    batch = [{"jsonrpc": "2.0", "id": i, "method": "system.health"} for i in range(5)]
    c.send_obj(batch)
    assert c.reply()["error"]["code"] == E.INVALID_REQUEST   # 5 > 3
    _write_config(d, "[rpc]\nmax_batch = 10\ngroup = \"nogroup\"\n[daemon]\nlog_level = \"debug\"\n")
    d.signal(signal.SIGHUP)
    _wait_log(d, "event=reloaded")
    log = d.log()
    assert "changed=daemon.log_level,rpc.max_batch,rpc.group" in log or \
        all(k in log for k in ("daemon.log_level", "rpc.max_batch", "rpc.group"))
    assert "restart_required=rpc.group" in log
    # Same connection, new limit in force; the restart-only key kept its value.
    c.send_obj(batch)
    assert [r["id"] for r in c.reply()] == list(range(5))
    st = c.call("system.status")["result"]
    assert st["config"]["rpc"]["max_batch"] == 10 and st["config"]["rpc"]["group"] == "aal"
    assert st["config"]["daemon"]["log_level"] == "debug"
    # The subscription survived too.
    sub.sock.settimeout(5)
    assert json.loads(sub.line())["method"] == "system.heartbeat.update"
    c.close()
    sub.close()
    assert d.stop() == 0


def test_system_reload_rpc(daemon_factory):
    d = daemon_factory(config="[rpc]\nmax_batch = 3\n")
    c = RawConn(d.socket)
    r = c.call("system.reload")["result"]
    assert r == {"reloaded": True, "changed": [], "restart_required": []}
    _write_config(d, "[rpc]\nmax_batch = 4\n[daemon]\nstate_dir = \"/tmp/elsewhere\"\n")
    r = c.call("system.reload")["result"]
    assert r["changed"] == ["daemon.state_dir", "rpc.max_batch"]
    assert r["restart_required"] == ["daemon.state_dir"]
    assert c.call("system.status")["result"]["state_dir"] == os.path.join(d.base, "state")
    c.close()


def test_reload_lets_units_see_what_changed(daemon_factory):
    """Units compare the new config with ctx.config during reload: the shared
    context must still hold the old one then (it was replaced before, so a
    reload of signal.model was reported but the stress model stayed)."""
    d = daemon_factory(config='[signal]\nmodel = "classic"\n')
    assert wait_for(lambda: d.call("stress.get"), what="a first sample")["model"] == "classic"
    _write_config(d, '[signal]\nmodel = "fused"\n')
    assert d.call("system.reload")["changed"] == ["signal.model"]
    wait_for(lambda: d.call("stress.get")["model"] == "fused", what="samples of the fused model")
    assert d.call("system.status")["config"]["signal"]["model"] == "fused"


def _nofile_soft(pid: int) -> int:
    with open(f"/proc/{pid}/limits") as fh:
        line = next(ln for ln in fh if ln.startswith("Max open files"))
    return int(line.split()[3])


def test_open_file_limit_follows_max_connections_on_reload(daemon_factory):
    """rpc.max_connections is live: a reload raising it raises the soft
    RLIMIT_NOFILE too, as start-up does, or accept() would hit EMFILE first."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2000:
        pytest.skip(f"hard RLIMIT_NOFILE {hard} is below what the test raises to")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))   # the daemon inherits it
    try:
        d = daemon_factory(config="[rpc]\nmax_connections = 100\n")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert _nofile_soft(d.proc.pid) == 256          # 100 + 64 fits: left as it was
    _write_config(d, "[rpc]\nmax_connections = 1500\n")
    assert d.call("system.reload")["changed"] == ["rpc.max_connections"]
    assert _nofile_soft(d.proc.pid) == 1500 + 64
    assert d.stop() == 0


def test_a_bad_reload_keeps_the_running_config(daemon_factory):
    d = daemon_factory(config="[rpc]\nmax_batch = 3\n")
    c = RawConn(d.socket)
    path = os.path.join(d.base, "aal-core.toml")
    _write_config(d, "[rpc]\nmax_batch = \"many\"\n")
    e = c.call("system.reload")["error"]
    assert e["code"] == E.CONFIG_INVALID
    assert e["message"] == f"{path}: rpc.max_batch must be an integer, got str 'many'"
    d.signal(signal.SIGHUP)
    _wait_log(d, "event=reload_failed")
    assert c.call("system.status")["result"]["config"]["rpc"]["max_batch"] == 3
    assert c.call("system.health")["result"]["ok"] is True
    c.close()
    assert d.stop() == 0


def test_sigterm_with_clients_and_subscribers_exits_0_and_removes_the_socket(daemon_factory):
    d = daemon_factory(config="[rpc]\nheartbeat_interval_s = 0.01\n")
    conns = [RawConn(d.socket) for _ in range(20)]
    for c in conns[:10]:
        c.call("system.heartbeat.subscribe")
    assert d.stop() == 0
    for c in conns:
        assert c.at_eof(timeout=5)
        c.close()
    assert not os.path.exists(d.socket)
    log = d.log()
    # (The ten that never sent anything may not have been accepted yet.)
    m = re.search(r"event=stopping clients=(\d+)", log)
    assert m and 10 <= int(m.group(1)) <= 20 and "event=stopped" in log


def test_sigint_is_a_graceful_stop_too(daemon_factory):
    d = daemon_factory()
    d.signal(signal.SIGINT)
    assert d.proc.wait(15) == 0 and "event=stopped" in d.log()


# ------------------------------------------------------- the stop bound, in process

def _serve_and_stop(grace_s: float, sleep_s: float):
    """Start an RpcServer on a real socket, send a slow request, stop with
    grace_s while it runs; return (reply or None, seconds stop took, calls)."""
    reg, seen = make_registry()
    path = os.path.join(short_tmpdir(), "s.sock")

    async def main():
        server = RpcServer(Dispatcher(reg, Limits()), Hub(), max_connections=10, idle_timeout_s=60,
                           outbox_max_frames=8, group="aal")
        await server.start(bind_socket(path, "aal"))
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "sleep",
                                 "params": {"text": "done", "x": sleep_s}}).encode() + b"\n")
        await writer.drain()
        while not any(c[0] == "sleep-start" for c in seen["calls"]):
            await asyncio.sleep(0.005)
        t0 = time.monotonic()
        await server.stop(grace_s)
        took = time.monotonic() - t0
        line = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
        return (json.loads(line) if line else None), took

    reply, took = uvloop.run(main())
    return reply, took, seen["calls"]


def test_stop_lets_an_inflight_request_finish_within_the_bound():
    reply, took, calls = _serve_and_stop(grace_s=5.0, sleep_s=0.3)
    assert reply == {"jsonrpc": "2.0", "id": 1, "result": {"text": "done"}}
    assert ("sleep-end", {"text": "done", "x": 0.3}) in calls
    assert took < 5.0


def test_stop_cancels_what_outlives_the_bound():
    reply, took, calls = _serve_and_stop(grace_s=0.2, sleep_s=30)
    assert reply is None                      # connection closed without a reply
    assert not any(c[0] == "sleep-end" for c in calls)
    assert took < 10
