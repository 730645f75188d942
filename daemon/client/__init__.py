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

import collections
import errno
import importlib
import itertools
import json
import os
import socket


class _LazyAsyncio:
    """asyncio at AsyncClient's first use: a Client-only process (the
    exporter) keeps it, and the ssl it loads, out of its RSS."""

    def __getattr__(self, name):
        return getattr(importlib.import_module("asyncio"), name)


asyncio = _LazyAsyncio()

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


def _request(method: str, params=None, id_=None) -> dict:
    """A JSON-RPC request object; a notification when id_ is None."""
    req = {"jsonrpc": "2.0", "method": method}
    if id_ is not None:
        req["id"] = id_
    if params is not None:
        req["params"] = params
    return req


def _frame(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def _is_notification(msg) -> bool:
    return isinstance(msg, dict) and "method" in msg and "id" not in msg


def _result(msg: dict):
    if "error" in msg:
        e = msg["error"]
        raise RpcCallError(e.get("code", 0), e.get("message", ""), e.get("data"))
    return msg.get("result")


# Unread notifications a Client keeps (the oldest are dropped past it).
MAX_NOTIFICATIONS = 1024


class Client:
    """Blocking client.  Notifications that arrive while waiting for a reply
    are kept in `self.notifications` until read by `notifications_iter()`,
    at most `max_notifications` of them: past it the oldest are dropped and
    counted in `notifications_dropped`, so a caller that never reads them
    cannot grow without bound."""

    def __init__(self, path: str | None = None, timeout: float | None = 30.0,
                 max_notifications: int = MAX_NOTIFICATIONS):
        if max_notifications < 1:
            raise ValueError("max_notifications must be >= 1")
        self.path = path or default_socket()
        self._ids = itertools.count(1)
        self.notifications: collections.deque = collections.deque(maxlen=max_notifications)
        self.notifications_dropped = 0
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
        try:
            self.sock.sendall(_frame(obj))
        except OSError as exc:
            raise ConnectError(f"connection to aal-core on {self.path} failed: {exc.strerror or exc}") from None

    def _read_msg(self):
        while b"\n" not in self._buf:
            try:
                chunk = self.sock.recv(1 << 16)
            except socket.timeout:
                raise ConnectError(f"no reply from aal-core on {self.path} within "
                                   f"{self.sock.gettimeout()}s (is the daemon stalled?)") from None
            except OSError as exc:
                raise ConnectError(f"connection to aal-core on {self.path} failed: {exc.strerror or exc}") from None
            if not chunk:
                raise ConnectError(f"aal-core closed the connection on {self.path}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def _wait(self, id_):
        while True:
            msg = self._read_msg()
            if _is_notification(msg):
                self._keep(msg)
                continue
            if isinstance(msg, list) or msg.get("id") == id_ or msg.get("id") is None:
                return msg

    def _keep(self, note: dict) -> None:
        if len(self.notifications) == self.notifications.maxlen:
            self.notifications_dropped += 1
        self.notifications.append(note)

    def call(self, method: str, params=None):
        id_ = next(self._ids)
        self._send(_request(method, params, id_))
        return _result(self._wait(id_))

    def notify(self, method: str, params=None) -> None:
        self._send(_request(method, params))

    def batch(self, calls: list[tuple[str, object]]) -> list:
        """Send [(method, params), ...] as one batch; results (or RpcCallError
        instances) in the same order."""
        if not calls:
            raise ValueError("an empty batch is not a valid JSON-RPC request")
        ids = [next(self._ids) for _ in calls]
        self._send([_request(m, p, i) for i, (m, p) in zip(ids, calls)])
        replies = self._wait(ids[0])
        if isinstance(replies, dict):  # the whole batch was rejected
            _result(replies)
        return _batch_results(ids, replies)

    def subscribe(self, topic: str, params=None):
        """Subscribe and yield each pushed notification's params."""
        sub = self.call(f"{topic}.subscribe", params)["subscription"]
        return self.notifications_iter(sub)

    def notifications_iter(self, subscription: str | None = None):
        while True:
            while self.notifications:
                n = self.notifications.popleft()
                if subscription is None or n.get("params", {}).get("subscription") == subscription:
                    yield n["params"]
            msg = self._read_msg()
            if _is_notification(msg):
                self._keep(msg)


class AsyncClient:
    """asyncio client.  Many calls may be outstanding at once (replies are
    matched by id); pushed notifications go to an asyncio.Queue per
    subscription, which gets None when the connection ends.  Each queue keeps
    at most `max_notifications`; past it the oldest are dropped and counted
    in `notifications_dropped`."""

    def __init__(self, path: str | None = None, max_notifications: int = MAX_NOTIFICATIONS,
                 on_notification=None):
        if max_notifications < 1:
            raise ValueError("max_notifications must be >= 1")
        self.max_notifications = max_notifications
        # on_notification(method, params) for notifications outside any
        # subscription (train.command, train.key_rotated), in the reading task.
        self.on_notification = on_notification
        self.notifications_dropped = 0
        self.path = path or default_socket()
        self._ids = itertools.count(1)
        self._pending: dict = {}          # id, or frozenset of a batch's ids → future
        self._subs: dict[str, asyncio.Queue] = {}
        self._early: dict[str, list] = {}
        self._reader = self._writer = None
        self._task = None
        self._closed: Exception | None = None

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
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass

    def _resolve(self, key, msg) -> None:
        fut = self._pending.pop(key, None)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    async def _read_loop(self):
        err = ConnectError(f"aal-core closed the connection on {self.path}")
        try:
            while True:
                line = await self._reader.readline()
                if not line:
                    break
                msg = json.loads(line)
                if isinstance(msg, list):
                    self._resolve(frozenset(r.get("id") for r in msg if isinstance(r, dict)), msg)
                    continue
                if _is_notification(msg):
                    params = msg.get("params", {})
                    sub = params.get("subscription")
                    if sub is None and self.on_notification is not None:
                        self.on_notification(msg["method"], params)
                        continue
                    q = self._subs.get(sub)
                    if q is not None:
                        self._put(q, params)
                    else:
                        early = self._early.setdefault(sub, [])
                        if len(early) < 1024:
                            early.append(params)
                    continue
                id_ = msg.get("id")
                if id_ is None and "error" in msg:
                    # A whole batch (or a frame) was rejected: fail the only
                    # batch waiting, if it is unambiguous.
                    batches = [k for k in self._pending if isinstance(k, frozenset)]
                    if len(batches) == 1:
                        self._resolve(batches[0], msg)
                    continue
                self._resolve(id_, msg)
        except (OSError, ValueError) as exc:
            err = ConnectError(f"connection to aal-core on {self.path} failed: {exc}")
        finally:
            self._closed = err
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(err)
            self._pending.clear()
            for q in self._subs.values():
                self._put(q, None)

    def _put(self, q: asyncio.Queue, item) -> None:
        if q.full():
            q.get_nowait()
            self.notifications_dropped += 1
        q.put_nowait(item)

    async def _send(self, key, obj):
        if self._closed is not None:
            raise self._closed
        if self._writer is None:
            raise ConnectError("not connected: call connect() first")
        fut = asyncio.get_running_loop().create_future()
        # If the caller was cancelled, nobody awaits it: retrieve the error here.
        fut.add_done_callback(_consume)
        self._pending[key] = fut
        self._writer.write(_frame(obj))
        try:
            await self._writer.drain()
        except OSError as exc:
            self._pending.pop(key, None)
            raise ConnectError(f"connection to aal-core on {self.path} failed: {exc}") from None
        return await fut

    async def call(self, method: str, params=None):
        id_ = next(self._ids)
        return _result(await self._send(id_, _request(method, params, id_)))

    async def batch(self, calls: list[tuple[str, object]]) -> list:
        """Send [(method, params), ...] as one batch; results (or RpcCallError
        instances) in the same order.  A batch the daemon rejects as a
        whole raises RpcCallError."""
        if not calls:
            raise ValueError("an empty batch is not a valid JSON-RPC request")
        ids = [next(self._ids) for _ in calls]
        replies = await self._send(frozenset(ids), [_request(m, p, i) for i, (m, p) in zip(ids, calls)])
        if isinstance(replies, dict):
            _result(replies)
        return _batch_results(ids, replies)

    async def subscribe(self, topic: str, params=None) -> tuple[str, asyncio.Queue]:
        """Returns (subscription id, queue of notification params; None when the connection ends)."""
        res = await self.call(f"{topic}.subscribe", params)
        q: asyncio.Queue = asyncio.Queue(self.max_notifications)
        sub = res["subscription"]
        self._subs[sub] = q
        for p in self._early.pop(sub, []):
            self._put(q, p)
        return sub, q

    async def unsubscribe(self, topic: str, subscription: str) -> None:
        await self.call(f"{topic}.unsubscribe", {"subscription": subscription})
        self._subs.pop(subscription, None)
        self._early.pop(subscription, None)


def _consume(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()


def _batch_results(ids: list, replies: list) -> list:
    by_id = {r.get("id"): r for r in replies if isinstance(r, dict)}
    out = []
    for i in ids:
        r = by_id.get(i)
        if r is None:
            out.append(RpcCallError(-32603, f"no reply for request id {i} in the batch"))
            continue
        try:
            out.append(_result(r))
        except RpcCallError as e:
            out.append(e)
    return out
