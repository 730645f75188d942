"""Socket activation with a real inherited listening socket, and the rules
for an existing socket file: a stale one is replaced, a live one is never
stolen."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import pytest

from helpers import AAL_CORE, short_tmpdir, without_systemd_env
from rpc_fixtures import RawConn

pytestmark = pytest.mark.slow

# What systemd does for a socket unit: the listening socket at fd 3,
# LISTEN_FDS=1 and LISTEN_PID set to the service's own pid.  bash gets the
# socket as stdin, moves it to fd 3, and execs the daemon (same pid as $$).
LAUNCHER = 'exec 3<&0 0</dev/null; LISTEN_FDS=1 LISTEN_FDNAMES=aal-core.socket LISTEN_PID=$$ exec "$@"'


def _wait_answers(path: str, proc, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"daemon exited with {proc.returncode}"
        try:
            c = RawConn(path, timeout=5)
            r = c.call("system.status")
            c.close()
            return r["result"]
        except OSError:
            time.sleep(0.05)
    raise AssertionError("daemon did not answer")


def _listening_socket(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(16)
    return s


def test_serves_on_the_inherited_socket(tmp_path):
    base = short_tmpdir()
    path = os.path.join(base, "activated.sock")
    lsock = _listening_socket(path)
    ino = os.stat(path).st_ino
    # A client may connect before the daemon even exists: the kernel queues it.
    early = RawConn(path)
    early.send(b'{"jsonrpc":"2.0","id":"early","method":"system.health"}\n')
    proc = subprocess.Popen(["bash", "-c", LAUNCHER, "launcher", AAL_CORE, "run", "--local", base,
                             "--tegrastats", "off"],
                            stdin=lsock.fileno(), env=without_systemd_env(), stdout=subprocess.DEVNULL,
                            stderr=open(os.path.join(base, "stderr"), "wb"))
    lsock.close()  # only the daemon holds it now
    try:
        assert early.reply()["id"] == "early"
        st = _wait_answers(path, proc)
        assert st["socket_activated"] is True and st["socket"] == path
        assert os.stat(path).st_ino == ino  # the daemon did not re-bind the path
        # Its own --local socket path was not created.
        assert not os.path.exists(os.path.join(base, "aal-core.sock"))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        # The socket file belongs to systemd: left in place.
        assert os.path.exists(path)
    finally:
        early.close()
        if proc.poll() is None:
            proc.kill()


def test_listen_pid_of_another_process_is_ignored():
    base = short_tmpdir()
    path = os.path.join(base, "activated.sock")
    lsock = _listening_socket(path)
    launcher = 'exec 3<&0 0</dev/null; LISTEN_FDS=1 LISTEN_PID=1 exec "$@"'
    proc = subprocess.Popen(["bash", "-c", launcher, "launcher", AAL_CORE, "run", "--local", base,
                             "--tegrastats", "off"],
                            stdin=lsock.fileno(), env=without_systemd_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    lsock.close()
    try:
        st = _wait_answers(os.path.join(base, "aal-core.sock"), proc)
        assert st["socket_activated"] is False
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_stale_socket_file_is_replaced(daemon_factory):
    base = short_tmpdir()
    path = os.path.join(base, "aal-core.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)          # a socket file nobody listens on (a crashed daemon's)
    s.close()
    assert os.path.exists(path)
    d = daemon_factory(base=base)
    assert d.call("system.health")["ok"] is True


def test_live_socket_is_never_stolen(daemon_factory):
    first = daemon_factory()
    ino = os.stat(first.socket).st_ino
    proc = subprocess.run([AAL_CORE, "run", "--local", first.base, "--tegrastats", "off"],
                          env=without_systemd_env(), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 3
    assert "event=cannot_listen" in proc.stderr
    assert f"{first.socket} is in use by a running server" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert os.stat(first.socket).st_ino == ino
    assert first.call("system.health")["ok"] is True


def test_a_non_socket_file_is_not_removed(tmp_path):
    base = short_tmpdir()
    path = os.path.join(base, "aal-core.sock")
    with open(path, "w") as fh:
        fh.write("precious")
    proc = subprocess.run([AAL_CORE, "run", "--local", base, "--tegrastats", "off"],
                          env=without_systemd_env(), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 3 and "exists and is not a socket" in proc.stderr
    assert open(path).read() == "precious"


def test_unwritable_socket_directory_is_a_listen_error():
    proc = subprocess.run([AAL_CORE, "run", "--local", short_tmpdir(), "--tegrastats", "off",
                           "--socket", "/proc/aal-core/x.sock"],
                          env=without_systemd_env(), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 3 and "cannot listen on /proc/aal-core/x.sock" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.root
def test_a_live_socket_it_may_not_probe_is_not_taken_either():
    # A live socket this user cannot connect to (EACCES), in a directory it
    # owns (so it could unlink the file): "cannot tell" is not "stale".
    base = short_tmpdir()
    path = os.path.join(base, "aal-core.sock")
    os.chown(base, 65534, 65534)                      # nobody
    live = _listening_socket(path)                    # root's, mode 0600
    os.chmod(path, 0o600)
    ino = os.stat(path).st_ino
    try:
        proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
                               AAL_CORE, "run", "--local", base, "--tegrastats", "off"],
                              env=without_systemd_env(), capture_output=True, text=True, timeout=30)
        assert proc.returncode == 3, proc.stderr
        assert "event=cannot_listen" in proc.stderr and "Permission denied" in proc.stderr
        assert os.stat(path).st_ino == ino
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.connect(path)                           # still root's listener
        probe.close()
    finally:
        live.close()
        subprocess.run(["rm", "-rf", base])
