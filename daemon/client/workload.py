"""A governed workload's side of the contract: register, listen, obey, acknowledge.

    job = GovernedJob(job_id="llm-1", profile="BALANCED", metadata={"model": "toy"})
    job.start()                       # subscribe, then submit (nothing missed)
    while generating:
        for d in job.pending():       # directives pushed since the last call
            apply(d["metadata"])      # e.g. KVCache.apply(d)
            job.ack(d)
        ...
    job.close()                       # release (closing the socket releases too)

One socket, one reader thread: replies go to the caller waiting for them,
`job.directive` notifications to a queue the workload drains when it is at a
safe point (between tokens), so a directive is never applied in the middle of
a step.  Heartbeats are sent from the reader side on a timer.  No torch here.
"""
from __future__ import annotations

import itertools
import json
import queue
import socket
import threading
import time

from . import ConnectError, RpcCallError, _connect_error, _frame, _is_notification, _request, _result, default_socket

__all__ = ["GovernedJob"]


class GovernedJob:
    def __init__(self, job_id: str, profile: str, *, metadata: dict | None = None, pid: int | None = None,
                 socket_path: str | None = None, heartbeat_s: float | None = None, timeout: float = 10.0):
        self.job_id = job_id
        self.profile = profile
        self.metadata_in = dict(metadata or {})
        self.pid = pid
        self.path = socket_path or default_socket()
        self.heartbeat_s = heartbeat_s
        self.timeout = timeout
        self.info: dict | None = None          # the job.submit result
        self.metadata: dict = {}                # the degradation state in force
        self.version = 0                        # highest directive version seen
        self.acked = 0
        self.directives: queue.Queue = queue.Queue()
        self.received = 0
        self.closed = threading.Event()
        self._ids = itertools.count(1)
        self._waiting: dict[int, list] = {}
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.connect(self.path)
        except OSError as exc:
            self._sock.close()
            raise _connect_error(self.path, exc) from None
        self._reader = threading.Thread(target=self._read_loop, name=f"aal-job-{job_id}", daemon=True)
        self._reader.start()
        self._hb: threading.Thread | None = None

    # -------------------------------------------------------------- calls

    def call(self, method: str, params=None):
        id_ = next(self._ids)
        slot: list = []
        ev = threading.Event()
        self._waiting[id_] = [ev, slot]
        data = _frame(_request(method, params, id_))
        with self._lock:
            self._sock.sendall(data)
        if not ev.wait(self.timeout):
            self._waiting.pop(id_, None)
            raise ConnectError(f"no reply to {method} within {self.timeout}s from {self.path}")
        msg = slot[0]
        if msg is None:
            raise ConnectError(f"aal-core closed the connection on {self.path}")
        return _result(msg)

    def _read_loop(self):
        buf = b""
        try:
            while True:
                chunk = self._sock.recv(1 << 16)
                if not chunk:
                    break
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        self._dispatch(json.loads(line))
        except OSError:
            pass
        finally:
            self.closed.set()
            for ev, slot in list(self._waiting.values()):
                slot.append(None)
                ev.set()
            self._waiting.clear()

    def _dispatch(self, msg):
        if _is_notification(msg) and msg["method"] == "job.directive":
            d = msg["params"]["data"]
            if d.get("job_id") == self.job_id and d.get("version", 0) >= self.version:
                self.version = d["version"]
                self.received += 1
                d["_received_monotonic"] = time.monotonic()
                self.directives.put(d)
            return
        if isinstance(msg, dict):
            w = self._waiting.pop(msg.get("id"), None)
            if w is not None:
                w[1].append(msg)
                w[0].set()

    # ---------------------------------------------------------- lifecycle

    def start(self) -> dict:
        """Subscribe to this job's directives, then submit it.  Returns the
        job.submit result (its `metadata` is the state to start with)."""
        self.call("job.subscribe", {"job_id": self.job_id})
        params = {"job_id": self.job_id, "profile": self.profile, "metadata": self.metadata_in}
        if self.pid is not None:
            params["pid"] = self.pid
        self.info = self.call("job.submit", params)
        self.metadata = dict(self.info["metadata"])
        period = self.heartbeat_s or max(0.05, self.info["heartbeat_timeout_s"] / 3)
        self._hb = threading.Thread(target=self._heartbeats, args=(period,), daemon=True,
                                    name=f"aal-job-{self.job_id}-hb")
        self._hb.start()
        return self.info

    def _heartbeats(self, period: float):
        while not self.closed.wait(period):
            try:
                self.call("job.heartbeat", {"job_id": self.job_id})
            except (ConnectError, RpcCallError, OSError):
                return

    def pending(self) -> list[dict]:
        """Directives received since the last call, oldest first.  Only the
        last one's metadata matters (each carries the full state)."""
        out = []
        while True:
            try:
                out.append(self.directives.get_nowait())
            except queue.Empty:
                return out

    def wait(self, timeout: float) -> dict | None:
        """Block until a directive arrives (or timeout)."""
        try:
            return self.directives.get(timeout=timeout)
        except queue.Empty:
            return None

    def ack(self, directive: dict) -> dict:
        """Record the directive's state as in force and acknowledge it."""
        self.metadata = dict(directive["metadata"])
        res = self.call("job.ack", {"job_id": self.job_id, "version": directive["version"]})
        self.acked = max(self.acked, directive["version"])
        return res

    def get(self) -> dict:
        return self.call("job.get", {"job_id": self.job_id})

    def close(self, release: bool = True) -> None:
        if release and not self.closed.is_set():
            try:
                self.call("job.release", {"job_id": self.job_id})
            except (ConnectError, RpcCallError, OSError):
                pass
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        self.closed.set()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.close()
