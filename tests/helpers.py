"""Test helpers: run the real daemon as a subprocess on a private socket."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from aal_core.client import Client

BIN = os.path.dirname(sys.executable)
AAL_CORE = os.path.join(BIN, "aal-core")
AALCTL = os.path.join(BIN, "aalctl")


def without_systemd_env() -> dict:
    """os.environ without what systemd hands a service (LISTEN_*, NOTIFY_*,
    WATCHDOG_*): a daemon a test starts must not take the runner's sockets
    or ping its watchdog."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "NOTIFY_", "WATCHDOG_"))}


def wait_for(fn, timeout: float = 10.0, what: str = "condition", every: float = 0.05):
    """Poll fn() until it returns something truthy and return that value.

    fn is called at least once, and once more after the deadline, so a slow
    machine never fails a check that has just become true.  On timeout the
    AssertionError names what was awaited and fn's last value.
    """
    deadline = time.monotonic() + timeout
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        time.sleep(every)


def short_tmpdir(prefix: str = "aal") -> str:
    """A short path under /tmp (AF_UNIX paths are limited to 107 bytes)."""
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


class DaemonProc:
    def __init__(self, proc: subprocess.Popen, base: str, socket: str, stderr_path: str):
        self.proc, self.base, self.socket, self.stderr_path = proc, base, socket, stderr_path

    def client(self, **kw) -> Client:
        return Client(self.socket, **kw)

    def call(self, method, params=None):
        with self.client() as c:
            return c.call(method, params)

    def log(self) -> str:
        with open(self.stderr_path, errors="replace") as fh:
            return fh.read()

    def signal(self, sig) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("daemon did not stop on SIGTERM within %ss\n%s" % (timeout, self.log()))
        return self.proc.returncode


def start_daemon(*args: str, base: str | None = None, config: str | None = None,
                 env: dict | None = None, wait: float = 20.0, tegrastats: str = "off") -> DaemonProc:
    """Start `aal-core run --local BASE` (+ args) and wait until it answers."""
    base = base or short_tmpdir()
    sock = os.path.join(base, "aal-core.sock")
    cmd = [AAL_CORE, "run", "--local", base, "--tegrastats", tegrastats]
    if config:
        cfg_path = os.path.join(base, "aal-core.toml")
        with open(cfg_path, "w") as fh:
            fh.write(config)
        cmd += ["--config", cfg_path]
    cmd += list(args)
    stderr_path = os.path.join(base, "daemon.stderr")
    full_env = without_systemd_env()
    full_env.update(env or {})
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=full_env)
    d = DaemonProc(proc, base, sock, stderr_path)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited with {proc.returncode}:\n{d.log()}")
        if os.path.exists(sock):
            try:
                d.call("system.health")
                return d
            except Exception:  # noqa: BLE001 - not up yet
                pass
        time.sleep(0.05)
    d.stop()
    raise AssertionError(f"daemon did not answer within {wait}s:\n{d.log()}")


def cleanup(d: DaemonProc) -> None:
    try:
        d.stop()
    finally:
        shutil.rmtree(d.base, ignore_errors=True)
