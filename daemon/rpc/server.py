"""The Unix-socket server: a thin asyncio shell around the pure protocol.

One `Connection` per client.  Bytes go through the framer and `Dispatcher.handle`
(compiled twins of `LineFramer` and `handle_frame`, ext/rpc_fast.pyx), and a
read's whole path (data_received, _process) is compiled too
(rpc_fast.ConnectionCore, whose references are _data_received_ref and
_process_ref here); replies are written in order of completion.  Flow control, in bytes of
output not yet taken by the client ("unsent"): past `unsent_soft_bytes`
reading from that client pauses (no frame is parsed or dispatched until it
drains); a write that would take it past `unsent_hard_bytes` closes it; and
when the sum over all connections passes `unsent_total_bytes`, the stalled
connections holding the most are closed until it is back under (README,
"Slow readers").  Pushed notifications wait in a bounded per-connection
queue where the oldest are dropped and counted, and the count is reported
to the client in the next notification it does get.
"""
from __future__ import annotations

import asyncio
import collections
import grp
import itertools
import os
import socket
import struct
import time

from .. import errors as E
from ..log import get_logger
from . import codec
from .protocol import Call, Dispatcher, FrameTooLarge, error_frame, new_framer
from .registry import Access
from ..rpc_fast import ConnectionCore, drain as _drain

log = get_logger("rpc")

_SO_PEERCRED_FMT = "3i"
_monotonic = time.monotonic


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the peer, from SO_PEERCRED."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize(_SO_PEERCRED_FMT))
    return struct.unpack(_SO_PEERCRED_FMT, raw)


def supplementary_groups(pid: int) -> set[int]:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except OSError:
        pass
    return set()


class AccessPolicy:
    """Root and the daemon's own user: admin.  Members of the socket group
    (primary or supplementary): write.  Anyone else who could connect: read."""

    def __init__(self, group: str):
        self.daemon_uid = os.geteuid()
        try:
            self.group_gid = grp.getgrnam(group).gr_gid
        except KeyError:
            self.group_gid = os.getegid()

    def level(self, pid: int, uid: int, gid: int) -> Access:
        if uid == 0 or uid == self.daemon_uid:
            return Access.ADMIN
        if gid == self.group_gid or self.group_gid in supplementary_groups(pid):
            return Access.WRITE
        return Access.READ


class Subscription:
    __slots__ = ("id", "topic", "accept", "dropped")

    def __init__(self, sub_id: str, topic, accept):
        self.id, self.topic, self.accept, self.dropped = sub_id, topic, accept, 0


class Hub:
    """Topic → subscriptions across all connections."""

    def __init__(self):
        self._subs: dict[str, dict[str, tuple["Connection", Subscription]]] = collections.defaultdict(dict)
        self._ids = itertools.count(1)

    def add(self, conn: "Connection", topic, accept) -> Subscription:
        sub = Subscription(f"s{next(self._ids)}", topic, accept)
        self._subs[topic.name][sub.id] = (conn, sub)
        return sub

    def remove(self, sub: Subscription) -> None:
        self._subs.get(sub.topic.name, {}).pop(sub.id, None)

    def subscribers(self, topic: str) -> int:
        return len(self._subs.get(topic, ()))

    def publish(self, topic: str, data: dict, encoded: bytes | None = None) -> int:
        """Push `data` to every subscriber whose filter accepts it, encoding it
        once (or using `encoded`, its JSON, if the caller has it already).
        Returns the number of connections it was queued to."""
        subs = self._subs.get(topic)
        if not subs:
            return 0
        frag = codec.Fragment(encoded if encoded is not None else codec.dumps_value(data))
        n = 0
        for conn, sub in list(subs.values()):
            if sub.accept is not None:
                try:
                    if not sub.accept(data):
                        continue
                except Exception as exc:  # noqa: BLE001 - one bad filter must not stop the publisher
                    log.error("subscription_filter_failed", topic=topic, subscription=sub.id, error=repr(exc))
                    continue
            conn.push(sub, frag)
            n += 1
        return n


# Per-connection flow control.  Replies and pushes go to the transport; once
# its buffer reaches the soft limit the client is not keeping up, so we stop
# reading its requests and hold its notifications in the bounded outbox
# (oldest dropped and counted).  Defaults of RpcConfig's unsent_* keys.
UNSENT_SOFT = 256 * 1024
UNSENT_HARD = 2 << 20
UNSENT_TOTAL = 8 << 20
# Async requests of one connection running at once; beyond it, reading pauses.
MAX_INFLIGHT = 128
# Seconds a closing connection may take to flush before it is aborted.
CLOSE_FLUSH_S = 2.0


def _drain_ref(conn, backlog, handle, call, out: list, room: int, max_inflight: int, server) -> int:
    """Pure-Python reference of rpc_fast.drain (tests/test_rpc_fast_diff.py)."""
    queued = 0
    inflight = conn.inflight
    while backlog and queued < room:
        if conn.paused or conn.closing or len(inflight) >= max_inflight or server.stopping:
            break
        ev = backlog[0]
        if type(ev) is not bytes:
            break
        backlog.popleft()
        r = handle(ev, call)
        if type(r) is bytes:
            out.append(r)
            queued += len(r)
        elif r is not None:
            conn._start_async(r)
    return queued


def _data_received_ref(self, data: bytes):
    """Pure-Python reference of rpc_fast.ConnectionCore.data_received
    (tests/test_rpc_conn_diff.py)."""
    if self.closing:
        return
    self.last_activity = _monotonic()
    self.backlog.extend(self.framer.feed(data))
    self._process()


def _process_ref(self):
    """Pure-Python reference of rpc_fast.ConnectionCore._process: handle
    backlog frames while the client keeps up; pause reading if not.
    Replies of one pass go out in one write (one syscall, not one each)."""
    server = self.server
    backlog = self.backlog
    out_buf: list[bytes] = []
    queued = 0
    # Replies of this pass may fill what is left below the soft limit
    # (the last one may cross it, by at most rpc.max_reply_bytes).
    room = server.unsent_soft - self.transport.get_write_buffer_size() if not self.closing else 0
    handle, call = server.dispatcher.fast, self.call
    while True:
        # The plain frames, compiled (ext/rpc_fast.pyx; reference: _drain_ref).
        queued += _drain(self, backlog, handle, call, out_buf, room - queued, self.max_inflight, server)
        if not backlog or self.paused or self.closing or len(self.inflight) >= self.max_inflight \
                or queued >= room:
            break
        ev = backlog.popleft()
        if type(ev) is not bytes:
            self._too_large(ev, out_buf)
            return
        # A bytes frame _drain left: only while the server stops (the
        # other reasons it stops at end the loop above).
        out_buf.append(self._overloaded())
    if out_buf and not self.closing:
        # Bounded by construction (soft limit + one reply), so not held
        # to the hard limit: that one catches what comes without reading.
        # (_write(..., bounded=True), inline: once per read.)
        t = self.transport
        t.write(out_buf[0] if len(out_buf) == 1 else b"".join(out_buf))
        now = t.get_write_buffer_size()
        if now != self.unsent:
            server.unsent_total += now - self.unsent
            self.unsent = now
        if server.unsent_total > server.unsent_total_max:
            server.shed()
    if backlog and queued and queued >= room and not self.paused and not self.closing:
        # A long run of pipelined frames: yield to other clients, then go on.
        asyncio.get_running_loop().call_soon(self._process)
    on = not backlog and not self.paused
    if on != self.reading:
        self._set_reading(on)


class Connection(ConnectionCore, asyncio.Protocol):
    """One client.  Its per-read path (data_received, _process) is
    ConnectionCore's, in C (ext/rpc_fast.pyx); the references are
    _data_received_ref and _process_ref above."""

    def __init__(self, server: "RpcServer"):
        self.server = server
        self.framer = new_framer(server.dispatcher.limits.max_frame_bytes)
        self.transport = None
        self.call: Call | None = None
        self.subs: dict[str, Subscription] = {}
        self.outbox: collections.deque = collections.deque()
        self.backlog: collections.deque = collections.deque()   # frames read but not yet handled
        self.dropped_total = 0
        self.inflight: set[asyncio.Future] = set()
        self.max_inflight = MAX_INFLIGHT
        self.paused = False           # the transport asked us to stop writing
        self.stalled_since: float | None = None   # when it last paused (None: writing)
        self.unsent = 0               # transport bytes as last counted in server.unsent_total
        self.reading = True
        self.closing = False
        self.last_activity = time.monotonic()
        self._close_hooks: list = []
        self.closed = asyncio.get_running_loop().create_future()

    # -- asyncio callbacks
    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        try:
            pid, uid, gid = peer_credentials(sock)
        except OSError:
            pid, uid, gid = 0, -1, -1
        self.call = Call(pid, uid, gid, self.server.policy.level(pid, uid, gid), self)
        # The transport pauses us once unsent > high, i.e. at the soft limit.
        transport.set_write_buffer_limits(high=self.server.unsent_soft - 1)
        if not self.server.admit(self):
            if self.server.stopping:
                msg = "server is shutting down"
            else:
                msg = f"too many connections (limit {self.server.max_connections}); try again later"
            transport.write(error_frame(None, E.OVERLOADED, msg,
                                        {"max_connections": self.server.max_connections}))
            self.close()

    # -- the rare turns of the per-read path (ConnectionCore and _process_ref)
    def _too_large(self, ev: FrameTooLarge, out_buf: list) -> None:
        """A frame past the limit: say so after this read's replies, close."""
        self.backlog.clear()
        out_buf.append(error_frame(None, E.FRAME_TOO_LARGE,
                                   f"frame exceeds the limit of {ev.limit} bytes; closing the connection",
                                   {"limit": ev.limit, "size_at_least": ev.size}))
        self._write(b"".join(out_buf))
        log.warning("frame_too_large", pid=self.call.pid, uid=self.call.uid, limit=ev.limit)
        self.close()

    def _overloaded(self) -> bytes:
        return error_frame(None, E.OVERLOADED, "server is shutting down")

    def _start_async(self, aw) -> None:
        """An async reply: run it, write it when done (_async_done)."""
        fut = asyncio.ensure_future(aw)
        self.inflight.add(fut)
        self.server.inflight.add(fut)
        fut.add_done_callback(self._async_done)

    def _set_reading(self, on: bool):
        if self.closing or on == self.reading:
            return
        self.reading = on
        if on:
            self.transport.resume_reading()
        else:
            self.transport.pause_reading()

    def _async_done(self, fut: asyncio.Future):
        self.inflight.discard(fut)
        self.server.inflight.discard(fut)
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            log.error("async_reply_failed", error=repr(exc))
            return
        out = fut.result()
        if out is not None:
            self._write(out)
        if self.backlog:
            self._process()

    def eof_received(self):
        # Client half-closed: answer what it sent, then close.
        if self.inflight or self.backlog:
            asyncio.ensure_future(self._close_after_inflight())
            return True
        return False

    async def _close_after_inflight(self):
        while (self.inflight or self.backlog) and not self.closing:
            if self.inflight:
                await asyncio.gather(*self.inflight, return_exceptions=True)
            else:
                await asyncio.sleep(0.01)
        self.close()

    def pause_writing(self):
        self.paused = True
        self.stalled_since = time.monotonic()
        self._set_reading(False)
        log.debug("reply_backpressure", pid=self.call.pid, uid=self.call.uid,
                  unsent=self.transport.get_write_buffer_size(), soft_limit=self.server.unsent_soft)

    def resume_writing(self):
        self.paused = False
        self.stalled_since = None
        self._count_unsent()
        self._flush_outbox()
        if not self.paused:
            self._process()

    def connection_lost(self, exc):
        self.closing = True
        self._count_unsent()
        for sub in self.subs.values():
            self.server.hub.remove(sub)
            self._drop_budget()
        self.subs.clear()
        self.outbox.clear()
        self.backlog.clear()
        # In-flight handlers run to completion (a half-done write is worse
        # than a reply nobody reads); their replies are dropped.
        for fn in self._close_hooks:
            try:
                fn()
            except Exception as e:  # noqa: BLE001
                log.error("close_hook_failed", error=repr(e))
        self._close_hooks.clear()
        self.server.forget(self)
        if not self.closed.done():
            self.closed.set_result(None)

    # -- used by handlers through Call
    def subscribe(self, topic, accept) -> str:
        budgets = self.server.dispatcher.budgets
        if budgets is not None:   # raises BUDGET_EXCEEDED past subscriptions_per_*
            budgets.hold("subscriptions", self.call.uid, self.call)
        sub = self.server.hub.add(self, topic, accept)
        self.subs[sub.id] = sub
        return sub.id

    def unsubscribe(self, sub_id: str) -> bool:
        sub = self.subs.pop(sub_id, None)
        if sub is None:
            return False
        self.server.hub.remove(sub)
        self._drop_budget()
        return True

    def _drop_budget(self) -> None:
        budgets = self.server.dispatcher.budgets
        if budgets is not None:
            budgets.drop("subscriptions", self.call.uid, self.call)

    def on_close(self, fn) -> None:
        self._close_hooks.append(fn)

    # -- output
    def _write(self, data: bytes, bounded: bool = False) -> None:
        """Hand `data` to the transport within the per-connection and total
        bounds: past the hard limit the connection is closed instead."""
        if self.closing:
            return
        server, t = self.server, self.transport
        if not bounded:
            unsent = t.get_write_buffer_size() + len(data)
            if unsent > server.unsent_hard:
                self.drop("reply_backlog_closed", unsent, limit=server.unsent_hard)
                return
        t.write(data)
        now = t.get_write_buffer_size()          # _count_unsent, inline: once per read
        if now != self.unsent:
            server.unsent_total += now - self.unsent
            self.unsent = now
        if server.unsent_total > server.unsent_total_max:
            server.shed()

    def _count_unsent(self) -> None:
        """Bring this connection's share of server.unsent_total up to date."""
        now = 0 if self.closing else self.transport.get_write_buffer_size()
        self.server.unsent_total += now - self.unsent
        self.unsent = now

    def drop(self, event: str, unsent: int, **why) -> None:
        """Abort a connection that holds too many unsent bytes (its buffer is
        freed now; it was not reading them) and say who it was."""
        if self.closing:
            return
        stalled = None if self.stalled_since is None else round(time.monotonic() - self.stalled_since, 3)
        log.warning(event, pid=self.call.pid, uid=self.call.uid, unsent=unsent, stalled_s=stalled, **why)
        self.server.backlog_closed_total += 1
        self.closing = True
        self._count_unsent()
        self.backlog.clear()
        self.outbox.clear()
        self.transport.abort()

    def notify(self, method: str, params: dict) -> bool:
        """A notification to this connection alone, outside any topic (a
        training run's train.command): written now, within the bounds a
        reply has.  False once the connection is closing."""
        if self.closing:
            return False
        self._write(codec.dumps({"jsonrpc": "2.0", "method": method, "params": params}))
        return not self.closing

    def push(self, sub: Subscription, frag) -> None:
        """Queue a notification; drop the oldest queued one when full."""
        if self.closing:
            return
        if len(self.outbox) >= self.server.outbox_max:
            old_sub, _ = self.outbox.popleft()
            old_sub.dropped += 1
            self.dropped_total += 1
            self.server.dropped_total += 1
        self.outbox.append((sub, frag))
        if not self.paused:
            self._flush_outbox()

    def _flush_outbox(self):
        while self.outbox and not self.paused and not self.closing:
            sub, frag = self.outbox.popleft()
            if sub.id not in self.subs:
                continue
            frame = codec.dumps({"jsonrpc": "2.0", "method": sub.topic.notify_method,
                                 "params": {"subscription": sub.id, "dropped": sub.dropped, "data": frag}})
            sub.dropped = 0
            self._write(frame)

    def close(self, flush_s: float = CLOSE_FLUSH_S):
        """Close after flushing what is buffered; abort if the peer does not
        take it within flush_s (a client that never reads)."""
        if self.closing:
            return
        self.closing = True
        t = self.transport
        t.close()
        if t.get_write_buffer_size() > 0:
            asyncio.get_running_loop().call_later(flush_s, t.abort)

    def idle_for(self, now: float) -> float:
        if self.subs or self.inflight:
            return 0.0
        return now - self.last_activity


class RpcServer:
    def __init__(self, dispatcher: Dispatcher, hub: Hub, *, max_connections: int,
                 idle_timeout_s: float, outbox_max_frames: int, group: str,
                 unsent_soft_bytes: int = UNSENT_SOFT, unsent_hard_bytes: int = UNSENT_HARD,
                 unsent_total_bytes: int = UNSENT_TOTAL):
        self.dispatcher = dispatcher
        self.hub = hub
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self.outbox_max = outbox_max_frames
        self.policy = AccessPolicy(group)
        self.conns: set[Connection] = set()
        self.inflight: set[asyncio.Future] = set()
        self.accepted_total = 0
        self.refused_total = 0
        self.dropped_total = 0
        self.unsent_soft, self.unsent_hard, self.unsent_total_max = \
            unsent_soft_bytes, unsent_hard_bytes, unsent_total_bytes
        self.unsent_total = 0         # sum of Connection.unsent (exact after shed())
        self.backlog_closed_total = 0
        self.stopping = False
        self._has_conns = asyncio.Event()    # set on admit: the idle reaper sleeps on it
        # Called when the first client connects (no connection before it):
        # app.py brings sensing back from its idle rate.
        self.on_first_connection = None
        self._server: asyncio.AbstractServer | None = None
        self._reaper: asyncio.Task | None = None

    def admit(self, conn: Connection) -> bool:
        if self.stopping or len(self.conns) >= self.max_connections:
            self.refused_total += 1
            log.warning("connection_refused", open=len(self.conns), max=self.max_connections,
                        stopping=self.stopping)
            return False
        first = not self.conns
        self.conns.add(conn)
        self.accepted_total += 1
        self._has_conns.set()
        if first and self.on_first_connection is not None:
            try:
                self.on_first_connection()
            except Exception as exc:  # noqa: BLE001 - a hook must not refuse the client
                log.error("first_connection_hook_failed", error=repr(exc))
        return True

    def forget(self, conn: Connection) -> None:
        self.conns.discard(conn)

    def set_unsent_limits(self, soft: int, hard: int, total: int) -> None:
        """Apply new limits (a reload) to every connection, open ones too."""
        self.unsent_soft, self.unsent_hard, self.unsent_total_max = soft, hard, total
        for c in list(self.conns):
            if not c.closing:
                c.transport.set_write_buffer_limits(high=soft - 1)

    def shed(self) -> None:
        """The total is over its limit: count it exactly (drained buffers are
        only seen on the next write), then close connections until it is under,
        the stalled ones (not reading) first, the biggest holders first, so
        that clients which read are served on."""
        for c in self.conns:
            c._count_unsent()
        if self.unsent_total <= self.unsent_total_max:
            return
        holders = sorted((c for c in self.conns if c.unsent and not c.closing),
                         key=lambda c: (c.stalled_since is None, -c.unsent))
        for c in holders:
            if self.unsent_total <= self.unsent_total_max:
                break
            c.drop("reply_backlog_shed", c.unsent, total=self.unsent_total, limit=self.unsent_total_max)

    async def start(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: Connection(self), sock=sock, backlog=1024)
        self._reaper = asyncio.ensure_future(self._reap_idle())

    async def _reap_idle(self):
        while True:
            if not self.conns:          # nothing to reap: no wake-ups until a client connects
                self._has_conns.clear()
                await self._has_conns.wait()
            # Re-read each round: a reload may change the timeout.
            await asyncio.sleep(max(0.05, min(5.0, self.idle_timeout_s / 4)))
            now = time.monotonic()
            for c in list(self.conns):
                if not c.closing and c.idle_for(now) > self.idle_timeout_s:
                    log.info("idle_close", pid=c.call.pid, idle_s=round(now - c.last_activity, 1))
                    c.close()

    def stats(self) -> dict:
        return {"open": len(self.conns), "max": self.max_connections,
                "accepted_total": self.accepted_total, "refused_total": self.refused_total,
                "dropped_total": self.dropped_total, "inflight": len(self.inflight)}

    async def stop(self, grace_s: float) -> None:
        """Stop accepting, let in-flight requests finish (bounded), close all."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        if self._reaper is not None:
            self._reaper.cancel()
        if self.inflight:
            _, pending = await asyncio.wait(list(self.inflight), timeout=grace_s)
            for p in pending:
                p.cancel()
            if pending:
                log.warning("stop_cancelled_inflight", count=len(pending))
        conns = list(self.conns)
        for c in conns:
            c.close(flush_s=1.0)
        if conns:
            # Let the last replies reach their clients (bounded by close()'s abort).
            await asyncio.wait([c.closed for c in conns], timeout=2.0)
