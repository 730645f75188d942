"""Helpers for the training-loop tests: a socket proxy that can inject frames,
ledger reads, and a daemon config whose ladder answers the first report."""
from __future__ import annotations

import os
import socket
import threading

# halve_at = 0: the first report of a run is answered with a batch halving
# whatever the host's stress; the other rungs are out of reach.
EAGER = "[train]\nhalve_at = 0.0\nbatch_halvings = 1\ncheckpointing_at = 0.999\npause_at = 1.0\n"


def ledger_data(d, kind: str) -> list[dict]:
    """The `data` of every ledger entry of type `kind`."""
    out = []
    start = 0
    while True:
        entries = d.call("ledger.get", {"start": start})["entries"]
        out += [e["data"] for e in entries if e["data"].get("type") == kind]
        if len(entries) < 1000:
            return out
        start += len(entries)


class InjectingProxy:
    """A Unix socket between one client and the daemon: forwards both ways
    line by line, keeps the daemon's lines, and writes extra lines to the
    client (an attacker on the path) between the daemon's frames."""

    def __init__(self, daemon_path: str, path: str):
        self.daemon_path, self.path = daemon_path, path
        self.from_daemon: list[bytes] = []
        self._client = None
        self._lock = threading.Lock()
        self._srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._srv.bind(path)
        self._srv.listen(4)
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._stop:
            try:
                c, _ = self._srv.accept()
            except OSError:
                return
            u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            u.connect(self.daemon_path)
            with self._lock:
                self._client = c
            threading.Thread(target=self._pump, args=(c, u, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(u, c, True), daemon=True).start()

    def _pump(self, src, dst, downstream: bool):
        buf = b""
        while True:
            try:
                chunk = src.recv(1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if downstream:
                    self.from_daemon.append(line)
                    with self._lock:
                        dst.sendall(line + b"\n")
                else:
                    dst.sendall(line + b"\n")

    def inject(self, line: bytes) -> None:
        with self._lock:
            self._client.sendall(line.rstrip(b"\n") + b"\n")

    def close(self):
        self._stop = True
        self._srv.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass
