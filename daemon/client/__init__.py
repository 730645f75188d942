"""Client library for the aal-core socket: synchronous `Client` and asyncio
`AsyncClient`.  Errors from the daemon raise `RpcCallError` carrying the
JSON-RPC code, message and data; a missing or refused socket raises
`ConnectError` with one readable sentence.

    with Client("/run/aal-core/aal-core.sock") as c:
        print(c.call("system.status"))
        for note in c.subscribe("stress", {"mode": "band"}):
            ...
"""
from __future__ import annotations

import asyncio
import errno
import itertools
import json
import os
import socket

DEFAULT_SOCKET = "/run/aal-core/aal-core.sock"

__all__ = ["AsyncClient", "Client", "ConnectError", "RpcCallError", "default_socket"]


def default_socket() -> str:
    return os.environ.get("AAL_CORE_SOCKET", DEFAULT_SOCKET)


class RpcCallError(Exception):
    def __init__(self, code: int, message: str, data=None):
        super().__init__(f"{message} (code {code})")
        self.code, self.message, self.data = code, message, data


class ConnectError(Exception):
    pass


def _connect_error(path: str, exc: OSError) -> ConnectError:
    if exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
        return ConnectError(f"cannot connect to {path}: no aal-core is listening there "
                            f"(is the service running? try: systemctl status aal-core)")
    if exc.errno == errno.EACCES:
        return ConnectError(f"permission denied on {path}: is your user in the 'aal' group? "
                            f"(sudo usermod -aG aal $USER, then log in again)")
    return ConnectError(f"cannot connect to {path}: {exc.strerror or exc}")


def _result(msg: dict):
    if "error" in msg:
        e = msg["error"]
        raise RpcCallError(e.get("code", 0), e.get("message", ""), e.get("data"))
    return msg.get("result")


class Client:
    """Blocking client.  Notifications that arrive while waiting for a reply
    are kept in `self.notifications` until read by `notifications_iter()`."""

    def __init__(self, path: str | None = None, timeout: float | None = 30.0):
        self.path = path or default_socket()
        self._ids = itertools.count(1)
        self.notifications: list[dict] = []
        self._buf = b""
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(self.path)
        except OSError as exc:
            self.sock.close()
            raise _connect_error(self.path, exc) from None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.sock.close()

    def _send(self, obj) -> None:
        self.sock.sendall(json.dumps(obj, separators=(",", ":")).encode() + b"\n")

    def _read_msg(self):
        while b"\n" not in self._buf:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectError(f"aal-core closed the connection on {self.path}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def _wait(self, id_):
        while True:
            msg = self._read_msg()
            if isinstance(msg, dict) and "method" in msg and "id" not in msg:
                self.notifications.append(msg)
                continue
            if isinstance(msg, list) or msg.get("id") == id_ or msg.get("id") is None:
                return msg

    def call(self, method: str, params=None):
        id_ = next(self._ids)
        req = {"jsonrpc": "2.0", "id": id_, "method": method}
        if params is not None:
            req["params"] = params
        self._send(req)
        return _result(self._wait(id_))

    def notify(self, method: str, params=None) -> None:
        req = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            req["params"] = params
        self._send(req)

    def batch(self, calls: list[tuple[str, object]]) -> list:
        """Send [(method, params), ...] as one batch; results (or RpcCallError
        instances) in the same order."""
        ids = [next(self._ids) for _ in calls]
        self._send([{"jsonrpc": "2.0", "id": i, "method": m, **({"params": p} if p is not None else {})}
                    for i, (m, p) in zip(ids, calls)])
        replies = self._wait(ids[0])
        if isinstance(replies, dict):  # the whole batch was rejected
            _result(replies)
        by_id = {r.get("id"): r for r in replies}
        out = []
        for i in ids:
            try:
                out.append(_result(by_id[i]))
            except RpcCallError as e:
                out.append(e)
        return out

    def subscribe(self, topic: str, params=None):
        """Subscribe and yield each pushed notification's params."""
        sub = self.call(f"{topic}.subscribe", params)["subscription"]
        return self.notifications_iter(sub)

    def notifications_iter(self, subscription: str | None = None):
        while True:
            while self.notifications:
                n = self.notifications.pop(0)
                if subscription is None or n.get("params", {}).get("subscription") == subscription:
                    yield n["params"]
            msg = self._read_msg()
            if isinstance(msg, dict) and "method" in msg and "id" not in msg:
                self.notifications.append(msg)


class AsyncClient:
    """asyncio client; pushed notifications go to an asyncio.Queue per subscription."""

    def __init__(self, path: str | None = None):
        self.path = path or default_socket()
        self._ids = itertools.count(1)
        self._pending: dict = {}
        self._subs: dict[str, asyncio.Queue] = {}
        self._early: dict[str, list] = {}
        self._reader = self._writer = None
        self._task = None

    async def connect(self) -> "AsyncClient":
        try:
            self._reader, self._writer = await asyncio.open_unix_connection(self.path, limit=1 << 22)
        except OSError as exc:
            raise _connect_error(self.path, exc) from None
        self._task = asyncio.ensure_future(self._read_loop())
        return self

    async def __aenter__(self):
        return await self.connect()

    async def __aexit__(self, *exc):
        await self.close()

    async def close(self):
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except OSError:
                pass
        if self._task is not None:
            self._task.cancel()

    async def _read_loop(self):
        err = ConnectError(f"aal-core closed the connection on {self.path}")
        try:
            while True:
                line = await self._reader.readline()
                if not line:
                    break
                msg = json.loads(line)
                if isinstance(msg, list):
                    key = tuple(sorted(str(r.get("id")) for r in msg))
                    fut = self._pending.pop(key, None)
                    if fut and not fut.done():
                        fut.set_result(msg)
                    continue
                if "method" in msg and "id" not in msg:
                    sub = msg.get("params", {}).get("subscription")
                    q = self._subs.get(sub)
                    if q is not None:
                        q.put_nowait(msg["params"])
                    else:
                        self._early.setdefault(sub, []).append(msg["params"])
                    continue
                fut = self._pending.pop(msg.get("id"), None)
                if fut and not fut.done():
                    fut.set_result(msg)
        finally:
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(err)
            for q in self._subs.values():
                q.put_nowait(None)

    async def call(self, method: str, params=None):
        id_ = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._pending[id_] = fut
        req = {"jsonrpc": "2.0", "id": id_, "method": method}
        if params is not None:
            req["params"] = params
        self._writer.write(json.dumps(req, separators=(",", ":")).encode() + b"\n")
        await self._writer.drain()
        return _result(await fut)

    async def subscribe(self, topic: str, params=None) -> tuple[str, asyncio.Queue]:
        """Returns (subscription id, queue of notification params; None when the connection ends)."""
        res = await self.call(f"{topic}.subscribe", params)
        q: asyncio.Queue = asyncio.Queue()
        sub = res["subscription"]
        self._subs[sub] = q
        for p in self._early.pop(sub, []):
            q.put_nowait(p)
        return sub, q
