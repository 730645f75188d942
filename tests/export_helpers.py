"""Real servers for the export and fleet tests: `aal-core export` beside a
daemon, a real Prometheus (Debian's package) and a real redis-server, each
on an ephemeral port in a temporary directory, killed at teardown."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request

from helpers import BIN, without_systemd_env

AAL_CORE = os.path.join(BIN, "aal-core")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, headers: dict | None = None, timeout: float = 5.0) -> tuple[str, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.headers.get("Content-Type", ""), r.read()


class Proc:
    def __init__(self, proc: subprocess.Popen, log_path: str, name: str):
        self.proc, self.log_path, self.name = proc, log_path, name

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as fh:
                return fh.read()
        except OSError:
            return ""

    def stop(self, sig=signal.SIGTERM, timeout: float = 10.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def _spawn(cmd: list, log_path: str, name: str, env: dict | None = None, cwd: str | None = None) -> Proc:
    with open(log_path, "wb") as fh:
        p = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    return Proc(p, log_path, name)


def _wait(fn, timeout: float, what: str, proc: Proc):
    deadline = time.monotonic() + timeout
    while True:
        if proc.proc.poll() is not None:
            raise AssertionError(f"{proc.name} exited with {proc.proc.returncode}:\n{proc.log()}")
        try:
            v = fn()
            if v:
                return v
        except Exception:  # noqa: BLE001 - not up yet
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not ready within {timeout}s:\n{proc.log()}")
        time.sleep(0.1)


class Exporter(Proc):
    port: int = 0

    def url(self, path: str = "/metrics") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def status(self) -> dict:
        return json.loads(http_get(self.url("/status"))[1])

    def metrics_text(self) -> str:
        return http_get(self.url())[1].decode()


def start_exporter(daemon, extra_toml: str = "", port: int | None = None, name: str = "exporter") -> Exporter:
    """`aal-core export --config <toml> --socket <daemon's>` on a free port."""
    port = port or free_port()
    cfg = os.path.join(daemon.base, f"{name}.toml")
    with open(cfg, "w") as fh:
        fh.write(f'[metrics]\nlisten = "127.0.0.1:{port}"\n{extra_toml}')
    p = _spawn([AAL_CORE, "export", "--config", cfg, "--socket", daemon.socket],
               os.path.join(daemon.base, f"{name}.log"), name, env=without_systemd_env())
    ex = Exporter(p.proc, p.log_path, name)
    ex.port = port
    _wait(lambda: http_get(ex.url("/status"))[0], 20, "exporter", ex)
    return ex


class Prometheus(Proc):
    port: int = 0

    def query(self, expr: str) -> list:
        q = urllib.parse.urlencode({"query": expr})
        body = json.loads(http_get(f"http://127.0.0.1:{self.port}/api/v1/query?{q}")[1])
        assert body["status"] == "success", body
        return body["data"]["result"]

    def targets(self) -> list:
        body = json.loads(http_get(f"http://127.0.0.1:{self.port}/api/v1/targets")[1])
        return body["data"]["activeTargets"]


def start_prometheus(base: str, targets: list[str], interval: str = "1s") -> Prometheus:
    port = free_port()
    d = os.path.join(base, "prometheus")
    os.makedirs(d, exist_ok=True)
    cfg = os.path.join(d, "prometheus.yml")
    with open(cfg, "w") as fh:
        fh.write(f"global:\n  scrape_interval: {interval}\n  scrape_timeout: {interval}\n"
                 f"scrape_configs:\n  - job_name: aal-core\n    static_configs:\n"
                 f"      - targets: [{', '.join(repr(t) for t in targets)}]\n")
    p = _spawn(["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={d}/data",
                f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"], os.path.join(d, "log"),
               "prometheus", cwd=d)
    prom = Prometheus(p.proc, p.log_path, "prometheus")
    prom.port = port
    _wait(lambda: http_get(f"http://127.0.0.1:{port}/-/ready")[0], 30, "prometheus", prom)
    return prom


class Redis(Proc):
    port: int = 0
    dir: str = ""

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def start_redis(base: str, port: int | None = None) -> Redis:
    """redis-server on a free (or the given) port; AOF on, so a restart keeps the streams."""
    port = port or free_port()
    d = os.path.join(base, "redis")
    os.makedirs(d, exist_ok=True)
    p = _spawn(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", d, "--save", "",
                "--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no"],
               os.path.join(d, f"log.{port}.{time.monotonic_ns()}"), "redis-server")
    r = Redis(p.proc, p.log_path, "redis-server")
    r.port, r.dir = port, d

    def ping():
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    _wait(ping, 20, "redis-server", r)
    return r


def remove(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)

