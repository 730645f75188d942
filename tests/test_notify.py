"""sd_notify with a real AF_UNIX datagram socket as $NOTIFY_SOCKET (the one
boundary systemd would own), against the real daemon process."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import pytest

from helpers import AAL_CORE, short_tmpdir
from rpc_fixtures import RawConn

pytestmark = pytest.mark.slow


class NotifySocket:
    def __init__(self, path: str):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.log: list[tuple[float, dict]] = []

    def recv(self, timeout: float) -> dict | None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except socket.timeout:
            return None
        msg = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
        self.log.append((time.monotonic(), msg))
        return msg

    def wait_for(self, key: str, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.recv(max(0.01, deadline - time.monotonic()))
            if msg is not None and key in msg:
                return msg
        raise AssertionError(f"no {key} within {timeout}s; got {[m for _, m in self.log]}")

    def drain(self, seconds: float) -> list[dict]:
        out = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            msg = self.recv(max(0.01, deadline - time.monotonic()))
            if msg is not None:
                out.append(msg)
        return out

    def close(self):
        self.sock.close()


@pytest.fixture
def notified():
    base = short_tmpdir()
    ns = NotifySocket(os.path.join(base, "notify.sock"))
    procs = []

    def start(watchdog_usec: int | None = None, config: str | None = None):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "WATCHDOG_"))}
        env["NOTIFY_SOCKET"] = ns.path
        if watchdog_usec:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        cmd = [AAL_CORE, "run", "--local", base, "--tegrastats", "off"]
        if config is not None:
            with open(os.path.join(base, "aal-core.toml"), "w") as fh:
                fh.write(config)
            cmd += ["--config", os.path.join(base, "aal-core.toml")]
        err = open(os.path.join(base, "stderr"), "wb")
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        procs.append(p)
        return p

    yield base, ns, start
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGCONT)
            p.kill()
            p.wait()
    ns.close()


def test_ready_only_once_listening_then_status_stays_current(notified):
    base, ns, start = notified
    p = start()
    msg = ns.wait_for("READY")
    # At the moment READY=1 arrives, the socket answers: no retry needed.
    c = RawConn(os.path.join(base, "aal-core.sock"))
    assert c.call("system.health")["result"]["ok"] is True
    assert msg["READY"] == "1" and "0 clients" in msg["STATUS"]
    # No READY before it: the first message of all was this one.
    assert "READY" in ns.log[0][1]
    # STATUS= follows the number of clients (the status loop runs every 2 s).
    msg = ns.wait_for("STATUS", timeout=10)
    assert "1 clients" in msg["STATUS"], msg
    st = c.call("system.status")["result"]
    assert st["summary"].endswith("1 clients")   # the same text (other units' parts move on)
    c.close()
    p.send_signal(signal.SIGTERM)
    assert ns.wait_for("STOPPING")["STOPPING"] == "1"
    assert p.wait(15) == 0


def test_watchdog_pings_from_the_loop_and_stop_when_it_stalls(notified):
    base, ns, start = notified
    p = start(watchdog_usec=400_000)
    ns.wait_for("READY")
    pings = [m for m in ns.drain(2.0) if "WATCHDOG" in m]
    # Half of 0.4 s: about 10 pings in 2 s (loose bounds: CI machines stall).
    assert 5 <= len(pings) <= 14, len(pings)
    p.send_signal(signal.SIGSTOP)
    time.sleep(0.3)
    ns.drain(0.1)
    stalled = [m for m in ns.drain(1.5) if "WATCHDOG" in m]
    assert stalled == []
    p.send_signal(signal.SIGCONT)
    assert ns.wait_for("WATCHDOG", timeout=5)["WATCHDOG"] == "1"
    p.send_signal(signal.SIGTERM)
    assert p.wait(15) == 0


def test_no_watchdog_pings_unless_asked(notified):
    base, ns, start = notified
    p = start()
    ns.wait_for("READY")
    assert not [m for m in ns.drain(1.0) if "WATCHDOG" in m]
    p.send_signal(signal.SIGTERM)
    assert p.wait(15) == 0


def test_sighup_sends_reloading_with_monotonic_usec_then_ready(notified):
    base, ns, start = notified
    p = start(config="[rpc]\nmax_batch = 10\n")
    ns.wait_for("READY")
    c = RawConn(os.path.join(base, "aal-core.sock"))
    with open(os.path.join(base, "aal-core.toml"), "w") as fh:
        fh.write("[rpc]\nmax_batch = 20\n")
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    p.send_signal(signal.SIGHUP)
    msg = ns.wait_for("RELOADING")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert msg["RELOADING"] == "1" and before <= int(msg["MONOTONIC_USEC"]) <= after
    assert ns.wait_for("READY")["READY"] == "1"
    # The client connected before the reload is still served, under the new config.
    assert c.call("system.status")["result"]["config"]["rpc"]["max_batch"] == 20
    c.close()
    p.send_signal(signal.SIGTERM)
    assert ns.wait_for("STOPPING")
    assert p.wait(15) == 0
