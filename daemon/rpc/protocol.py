"""JSON-RPC 2.0 over newline-delimited frames, with no I/O (the h11 way).

`LineFramer` turns received bytes into frames; `Dispatcher` turns one frame
into the bytes of its reply (or None for notifications), calling handlers
from the registry.  The socket server feeds bytes in and writes bytes out;
tests do the same without a socket.
"""
from __future__ import annotations

import asyncio
import inspect
import json
from dataclasses import dataclass
from time import perf_counter

from .. import errors as E
from .. import rpc_fast
from ..errors import AalError, ConfigError, ParseError, RpcError, LedgerError, SourceError
from ..log import get_logger
from ..metrics import LATENCY_BUCKETS, Histogram, family, sample
from . import codec
from .budget import CHARGE
from .registry import Access, Registry

log = get_logger("rpc")


@dataclass(frozen=True)
class Limits:
    max_frame_bytes: int = 1 << 20
    max_depth: int = 64
    max_batch: int = 100
    # Largest reply (a batch's whole reply counts as one) the server will
    # buffer; a bigger result becomes a REPLY_TOO_LARGE error for its id
    # (errors are not replaced: they are bounded by the request's size).
    max_reply_bytes: int = 1 << 20


# --------------------------------------------------------------------- framing

class FrameTooLarge:
    """Event: the peer sent more than max_frame_bytes without a newline."""

    def __init__(self, size: int, limit: int):
        self.size = size
        self.limit = limit


def new_framer(max_frame_bytes: int):
    """The framer the server uses: LineFramer's compiled twin (ext/rpc_fast.pyx)."""
    return rpc_fast.Framer(max_frame_bytes, FrameTooLarge)


class LineFramer:
    """Splits a byte stream on b'\\n'.  Blank lines are ignored.  The
    pure-Python reference of rpc_fast.Framer (tests/test_rpc_fast_diff.py)."""

    __slots__ = ("_buf", "_limit")

    def __init__(self, max_frame_bytes: int):
        self._buf = bytearray()
        self._limit = max_frame_bytes

    def feed(self, data: bytes) -> list:
        """Return the complete frames in `data` (bytes), or a FrameTooLarge
        as the last event once the limit is passed; after that, stop feeding."""
        if not data:
            return []
        if not self._buf and len(data) - 1 <= self._limit and data.find(b"\n") == len(data) - 1:
            # Fast path: exactly one whole frame in this read.
            return [data[:-1]] if data.strip() else []
        buf = self._buf
        buf += data
        frames = []
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            if nl - start > self._limit:
                del buf[:]
                frames.append(FrameTooLarge(nl - start, self._limit))
                return frames
            frame = bytes(buf[start:nl])
            if frame.strip():
                frames.append(frame)
            start = nl + 1
        del buf[:start]
        if len(buf) > self._limit:
            size = len(buf)
            del buf[:]
            frames.append(FrameTooLarge(size, self._limit))
        return frames

    @property
    def pending(self) -> int:
        return len(self._buf)


# ------------------------------------------------------------------- the call

class Call:
    """What a handler knows about its caller.  The server passes the
    caller's connection as `conn`, which subscribe/unsubscribe and close
    hooks need; without one (tests, no socket) they do nothing or refuse."""

    __slots__ = ("pid", "uid", "gid", "access", "conn")

    def __init__(self, pid: int = 0, uid: int = 0, gid: int = 0,
                 access: Access = Access.ADMIN, conn=None):
        self.pid, self.uid, self.gid, self.access, self.conn = pid, uid, gid, access, conn

    def subscribe(self, topic, accept) -> str:
        if self.conn is None:
            raise RpcError(E.CONFLICT, "subscriptions need a connection")
        return self.conn.subscribe(topic, accept)

    def unsubscribe(self, sub_id: str) -> bool:
        return self.conn is not None and self.conn.unsubscribe(sub_id)

    def on_close(self, fn) -> None:
        """Run fn() when the caller's connection closes (e.g. release its jobs)."""
        if self.conn is not None:
            self.conn.on_close(fn)


# ------------------------------------------------------------------- dispatch

def _depth_exceeds(obj, limit: int) -> bool:
    stack = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if d > limit:
            return True
        if type(o) is dict:
            stack.extend((v, d + 1) for v in o.values() if type(v) in (dict, list))
        elif type(o) is list:
            stack.extend((v, d + 1) for v in o if type(v) in (dict, list))
    return False


_NO_ID = object()
_MEMBERS = frozenset(("jsonrpc", "method", "params", "id"))

# JSON integers the wire accepts: what fits in int64 or uint64.  orjson
# silently turns larger ones into (lossy) floats, so a frame with a run of
# 19+ digits is re-read exactly with the stdlib parser to tell.
INT_MIN, INT_MAX = -(1 << 63), (1 << 64) - 1
_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
_ZEROS = b"0" * 19


def _has_long_digit_run(frame: bytes) -> bool:
    """A run of 19+ digits somewhere (cheaper than a regex on the hot path)."""
    return frame.translate(_DIGITS_TO_ZERO).find(_ZEROS) >= 0


class BigInt:
    """An integer literal outside [INT_MIN, INT_MAX], kept as its text."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        t = self.text
        return t if len(t) <= 40 else f"{t[:20]}...({len(t)} digits)"


def _exact_int(text: str):
    v = int(text)
    return v if INT_MIN <= v <= INT_MAX else BigInt(text)


def _has_bigint(obj) -> BigInt | None:
    stack = [obj]
    while stack:
        o = stack.pop()
        t = type(o)
        if t is BigInt:
            return o
        if t is dict:
            stack.extend(o.values())
        elif t is list:
            stack.extend(o)
    return None


def _error(id_, code: int, message: str, data=None) -> dict:
    err = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": "2.0", "id": id_, "error": err}


def error_frame(id_, code: int, message: str, data=None) -> bytes:
    return codec.dumps(_error(id_, code, message, data))


def _valid_id(v) -> bool:
    t = type(v)
    return t is str or t is int or t is float or v is None


def _parse_error(frame: bytes, exc) -> bytes:
    """A -32700 reply that says what is wrong and where."""
    try:
        frame.decode("utf-8")
    except UnicodeDecodeError as ue:
        return error_frame(None, E.PARSE_ERROR, f"parse error: not valid UTF-8 (byte {ue.start})",
                           {"reason": "invalid UTF-8", "position": ue.start})
    reason = str(exc).split(": line ", 1)[0]
    data = {"reason": reason}
    pos = getattr(exc, "pos", None)
    if pos is not None:
        data.update(position=pos, line=exc.lineno, column=exc.colno)
    return error_frame(None, E.PARSE_ERROR, f"parse error: {reason}", data)


def map_exception(exc: BaseException, method: str) -> dict:
    """An exception from a handler → a JSON-RPC error object."""
    if isinstance(exc, RpcError):
        return exc.to_obj()
    if isinstance(exc, ParseError):
        return {"code": E.INVALID_PARAMS, "message": str(exc), "data": exc.to_data()}
    if isinstance(exc, LedgerError):
        obj = {"code": E.LEDGER_ERROR, "message": str(exc)}
        if exc.index is not None:
            obj["data"] = {"index": exc.index}
        return obj
    if isinstance(exc, SourceError):
        return {"code": E.SOURCE_ABSENT, "message": str(exc)}
    if isinstance(exc, ConfigError):
        return {"code": E.CONFIG_INVALID, "message": str(exc)}
    if isinstance(exc, AalError):
        return {"code": E.INTERNAL_ERROR, "message": str(exc),
                "data": {"method": method, "exception": type(exc).__name__}}
    log.error("handler_crash", method=method, error=repr(exc), exc_info=exc)
    return {"code": E.INTERNAL_ERROR, "message": "internal error",
            "data": {"method": method, "exception": type(exc).__name__}}


class Dispatcher:
    """Frame in, reply bytes out.  Never raises for anything a peer sends."""

    def __init__(self, registry: Registry, limits: Limits = Limits(), budgets=None):
        self.registry = registry
        self.limits = limits
        # budget.Budgets, or None (no budgets: tests of the protocol alone).
        self.budgets = budgets
        # Per registered method (a bounded set): calls by outcome and latency,
        # for system.metrics.  Unknown method names are only counted.
        self.calls: dict[str, MethodCalls] = {}
        self.unknown_methods = 0
        # handle_frame's answer, computed in C for a plain request (ext/rpc_fast.pyx)
        # and by handle_frame itself for anything else: what the server calls.
        self.fast = rpc_fast.FastDispatch(self, registry.table(), map_exception, inspect.isawaitable)
        self.handle = self.fast.handle

    # Result of handle_frame: bytes (reply), None (nothing to send), or an
    # awaitable giving bytes/None (some handler was async).
    def handle_frame(self, frame: bytes, call: Call):
        limits = self.limits
        if len(frame) > limits.max_frame_bytes:
            return error_frame(None, E.FRAME_TOO_LARGE,
                               f"frame of {len(frame)} bytes exceeds the limit of {limits.max_frame_bytes}",
                               {"limit": limits.max_frame_bytes, "size": len(frame)})
        try:
            msg = codec.loads(frame)
        except codec.JSONDecodeError as exc:
            if "depth limit" in str(exc):
                return self._too_deep()
            return _parse_error(frame, exc)
        limit = limits.max_depth
        if (frame.count(b"[") + frame.count(b"{")) > limit and _depth_exceeds(msg, limit):
            return self._too_deep()
        # Rare: re-read exactly so out-of-range integers are reported, not
        # rounded.  Only such a frame can hold a BigInt.
        exact = _has_long_digit_run(frame)
        if exact:
            msg = json.loads(frame, parse_int=_exact_int)
        if type(msg) is list:
            return self._batch(msg, call, exact)
        out = self._one(msg, call, exact)
        if out is None or type(out) is dict:
            return None if out is None else self._encode(out)
        return self._await_one(out)

    def _too_deep(self) -> bytes:
        limit = self.limits.max_depth
        return error_frame(None, E.INVALID_REQUEST, f"nesting deeper than {limit} levels",
                           {"max_depth": limit})

    async def _await_one(self, aw):
        out = await aw
        return None if out is None else self._encode(out)

    def _batch(self, msgs: list, call: Call, exact: bool):
        if not msgs:
            return error_frame(None, E.INVALID_REQUEST, "empty batch", {"size": 0})
        if len(msgs) > self.limits.max_batch:
            return error_frame(None, E.INVALID_REQUEST,
                               f"batch of {len(msgs)} exceeds the limit of {self.limits.max_batch}",
                               {"max_batch": self.limits.max_batch, "size": len(msgs)})
        # Each synchronous member is encoded as soon as it returns, so the
        # batch never holds more than max_reply_bytes of results at once.
        budget = _ReplyBudget(self.limits.max_reply_bytes)
        outs = []
        is_async = False
        for m in msgs:
            o = self._one(m, call, exact)
            if o is not None and type(o) is dict:
                o = budget.take(o, self._encode_member(o))
            elif o is not None:
                is_async = True
            outs.append(o)
        if is_async:
            return self._await_batch(outs, budget)
        return budget.frame(outs)

    async def _await_batch(self, outs, budget: "_ReplyBudget"):
        # The async members run concurrently; replies keep the batch order.
        pending = [(i, o) for i, o in enumerate(outs) if o is not None and type(o) is not bytes]
        results = await asyncio.gather(*(o for _, o in pending))
        for (i, _), r in zip(pending, results):
            outs[i] = None if r is None else budget.take(r, self._encode_member(r))
        return budget.frame(outs)

    def _encode(self, obj: dict) -> bytes:
        """One reply's frame, or REPLY_TOO_LARGE for its id past max_reply_bytes."""
        try:
            out = codec.dumps(obj)
        except TypeError as exc:
            log.error("encode_failed", error=repr(exc))
            out = codec.dumps(self._encode_fallback(obj))
        limit = self.limits.max_reply_bytes
        if len(out) > limit and "result" in obj:
            return codec.dumps(_reply_too_large(obj.get("id"), len(out), limit))
        return out

    def _encode_member(self, obj: dict) -> bytes:
        """One batch member's JSON (no newline)."""
        try:
            return codec.dumps_value(obj)
        except TypeError as exc:
            log.error("encode_failed", error=repr(exc))
            return codec.dumps_value(self._encode_fallback(obj))

    def _encode_fallback(self, o: dict) -> dict:
        try:
            codec.dumps(o)
            return o
        except TypeError as exc:
            id_ = o.get("id")
            try:
                codec.dumps(id_)
            except TypeError:
                id_ = None
            return _error(id_, E.INTERNAL_ERROR, "result could not be encoded as JSON",
                          {"reason": str(exc)})

    def _one(self, msg, call: Call, exact: bool):
        """One request → response dict, None (notification), or an awaitable.
        `exact`: the frame was re-read exactly, so it may hold BigInts."""
        if type(msg) is not dict:
            return _error(None, E.INVALID_REQUEST, "request must be a JSON object",
                          {"got": _kind(msg)})
        id_ = msg.get("id", _NO_ID)
        if id_ is not _NO_ID and not _valid_id(id_):
            if type(id_) is BigInt:
                return _error(None, E.INVALID_REQUEST, "id is an integer outside the 64-bit range",
                              {"id": repr(id_), "min": INT_MIN, "max": INT_MAX})
            return _error(None, E.INVALID_REQUEST, "id must be a string, a number or null",
                          {"got": _kind(id_)})
        rid = None if id_ is _NO_ID else id_
        if msg.get("jsonrpc") != "2.0":
            got = msg.get("jsonrpc", _NO_ID)
            return _error(rid, E.INVALID_REQUEST, 'missing or wrong "jsonrpc" member: must be exactly "2.0"',
                          {"expected": "2.0", "got": "missing" if got is _NO_ID else
                           (got if type(got) is str and len(got) <= 16 else _kind(got))})
        name = msg.get("method")
        if type(name) is not str:
            return _error(rid, E.INVALID_REQUEST, '"method" must be a string',
                          {"got": _kind(name)})
        if len(msg) > 4 or not _MEMBERS.issuperset(msg):
            unknown = set(msg).difference(_MEMBERS)
            return _error(rid, E.INVALID_REQUEST,
                          f"unknown request member(s): {', '.join(sorted(unknown))}",
                          {"unknown": sorted(unknown)})
        params = msg.get("params")
        if "params" in msg and type(params) not in (list, dict):
            return _error(rid, E.INVALID_REQUEST, '"params" must be an array or an object',
                          {"got": _kind(params)})
        notify = id_ is _NO_ID
        m = self.registry.get(name)
        if m is None:
            self.unknown_methods += 1
            return None if notify else _error(id_, E.METHOD_NOT_FOUND, f"method not found: {name}",
                                              {"method": name})
        stats = self.calls.get(name)
        if stats is None:
            stats = self.calls[name] = new_method_calls()
        if call.access < m.access:
            stats.denied += 1
            return None if notify else _error(
                id_, E.PERMISSION_DENIED,
                f"{name} needs {m.access.name.lower()} access; peer uid {call.uid} has {call.access.name.lower()}"
                + (" (admin: root or the daemon's user only)" if m.access is Access.ADMIN else
                   " (write: members of the socket's group)"),
                {"method": name, "required": m.access.name.lower(), "granted": call.access.name.lower(),
                 "peer_uid": call.uid})
        if exact and params is not None:
            big = _has_bigint(params)
            if big is not None:
                return None if notify else _error(
                    id_, E.INVALID_PARAMS, f"params contain an integer outside the 64-bit range: {big!r}",
                    {"integer": repr(big), "min": INT_MIN, "max": INT_MAX})
        charge = None
        t0 = perf_counter()
        try:
            bound = m.params.bind(params)
            if m.writes_ledger and self.budgets is not None:
                # The rate and byte budgets, for every ledger-writing method
                # here; the ledger charges the bytes through CHARGE.
                charge = self.budgets.ledger_call(call.uid)
                token = CHARGE.set(charge)
                try:
                    result = m.handler(bound, call)
                finally:
                    CHARGE.reset(token)
            else:
                result = m.handler(bound, call)
        except Exception as exc:  # noqa: BLE001 - every error becomes a reply
            stats.done(False, perf_counter() - t0)
            return None if notify else {"jsonrpc": "2.0", "id": id_, "error": map_exception(exc, name)}
        if type(result) is not dict and inspect.isawaitable(result):
            return self._finish_async(result, id_, notify, name, charge, stats, t0)
        stats.done(True, perf_counter() - t0)
        return None if notify else {"jsonrpc": "2.0", "id": id_, "result": result}

    async def _finish_async(self, aw, id_, notify: bool, name: str, charge=None, stats=None, t0=0.0):
        token = CHARGE.set(charge) if charge is not None else None
        try:
            result = await aw
        except Exception as exc:  # noqa: BLE001 - not CancelledError (a BaseException): cancellation propagates
            if stats is not None:
                stats.done(False, perf_counter() - t0)
            return None if notify else {"jsonrpc": "2.0", "id": id_, "error": map_exception(exc, name)}
        finally:
            if token is not None:
                CHARGE.reset(token)
        if stats is not None:
            stats.done(True, perf_counter() - t0)
        return None if notify else {"jsonrpc": "2.0", "id": id_, "result": result}

    def metrics(self) -> list[dict]:
        """Requests by method and outcome, and their latency, for system.metrics."""
        req, lat = [], []
        for name in sorted(self.calls):
            c = self.calls[name]
            for outcome, n in (("ok", c.ok), ("error", c.error), ("denied", c.denied)):
                req.append(sample(float(n), {"method": name, "outcome": outcome}))
            lat.append(sample(c.latency.value(), {"method": name}))
        return [family("aal_core_rpc_requests_total", "counter",
                       "Requests by method and outcome (ok, error, denied: access level too low).", req),
                family("aal_core_rpc_request_duration_seconds", "histogram",
                       "From dispatch to result, per method (an async handler's await included).", lat),
                family("aal_core_rpc_unknown_method_requests_total", "counter",
                       "Requests naming a method that does not exist.", float(self.unknown_methods))]


def new_method_calls():
    """The counters the dispatcher keeps: MethodCalls' compiled twin."""
    return rpc_fast.MethodCalls(LATENCY_BUCKETS)


class MethodCalls:
    """One method's calls: a counter per outcome and a latency histogram.
    The pure-Python reference of rpc_fast.MethodCalls (tests/test_rpc_fast_diff.py)."""

    __slots__ = ("ok", "error", "denied", "latency")

    def __init__(self):
        self.ok = self.error = self.denied = 0
        self.latency = Histogram()

    def done(self, ok: bool, seconds: float) -> None:
        if ok:
            self.ok += 1
        else:
            self.error += 1
        self.latency.observe(seconds)


def _reply_too_large(id_, size: int, limit: int, batch_bytes: int | None = None) -> dict:
    data = {"limit": limit, "size": size}
    where = ""
    if batch_bytes is not None:
        data["batch_bytes"] = batch_bytes
        where = f" with the {batch_bytes} bytes of the batch's earlier replies"
    return _error(id_, E.REPLY_TOO_LARGE,
                  f"reply of {size} bytes{where} exceeds the limit of {limit} bytes (rpc.max_reply_bytes); "
                  "the call was made, its result is not sent: ask for less or split the batch", data)


class _ReplyBudget:
    """The bytes a batch's reply may still take.  A member that does not fit
    is replaced by a (small) REPLY_TOO_LARGE error naming its size, so the
    whole reply stays within max_reply_bytes plus one short error per member."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int):
        self.limit, self.used = limit, 2       # the brackets

    def take(self, reply: dict, member: bytes) -> bytes:
        """`member` (the encoded `reply`), or the error that replaces it.
        Errors are never replaced: their size is bounded by the request's."""
        size = len(member) + 1                 # its comma
        if self.used + size > self.limit and "result" in reply:
            return codec.dumps_value(_reply_too_large(reply.get("id"), len(member), self.limit, self.used - 2))
        self.used += size
        return member

    @staticmethod
    def frame(outs: list) -> bytes | None:
        parts = [o for o in outs if o is not None]
        return b"[" + b",".join(parts) + b"]\n" if parts else None


def _kind(value) -> str:
    """The JSON type of a value, for error data."""
    if value is None:
        return "null"
    t = type(value)
    if t is bool:
        return "boolean"
    if t is int or t is float:
        return "number"
    if t is BigInt:
        return "integer beyond 64 bits"
    return {str: "string", list: "array", dict: "object"}.get(t, t.__name__)
