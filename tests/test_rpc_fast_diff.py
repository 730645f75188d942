"""The compiled per-frame path (ext/rpc_fast.pyx) against its pure-Python
reference: `Dispatcher.handle` vs `Dispatcher.handle_frame`, and
`rpc_fast.Framer` vs `LineFramer`, on the same frames (hypothesis): the
same reply bytes, the same handler calls, the same per-method counters."""
from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from aal_core import rpc_fast
from aal_core.rpc import Access, Call, Dispatcher, Limits, LineFramer
from aal_core.rpc.protocol import FrameTooLarge, new_framer, new_method_calls

from rpc_fixtures import make_registry

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LIMITS = [Limits(max_frame_bytes=2048, max_depth=6, max_batch=4),
          Limits(max_frame_bytes=2048, max_depth=64, max_batch=4, max_reply_bytes=60)]
# wait_gate/open_gate/sleep test concurrency across calls (a gate shared
# between loops, real sleeps): not what is compared here.
METHODS = [n for n in make_registry()[0].names() if n not in ("wait_gate", "open_gate", "sleep")] + ["nope", ""]

scalar = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                   st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12))
value = st.recursive(scalar, lambda kids: st.one_of(
    st.lists(kids, max_size=3), st.dictionaries(st.text(max_size=5), kids, max_size=3)), max_leaves=10)
echo_params = st.fixed_dictionaries({"text": st.one_of(st.text(max_size=30), value)}, optional={
    "n": st.one_of(st.integers(min_value=-2**40, max_value=2**40), value),
    "x": st.floats(allow_nan=False, allow_infinity=False), "tags": st.lists(st.text(max_size=4), max_size=3),
    "flag": st.booleans(), "u": st.integers(min_value=-5, max_value=2**64 + 5)})
request = st.fixed_dictionaries(
    {"jsonrpc": st.sampled_from(["2.0", "2.0", "2.0", "2.0", "1.0", 2, None])},
    optional={"id": st.one_of(st.integers(min_value=-2**63, max_value=2**64 - 1), st.text(max_size=6),
                              st.floats(allow_nan=False, allow_infinity=False), st.none(), st.booleans(),
                              st.integers(min_value=2**64, max_value=2**80), st.lists(st.integers(), max_size=1)),
              "method": st.one_of(st.sampled_from(METHODS), scalar),
              "params": st.one_of(echo_params, echo_params, st.lists(value, max_size=4), value),
              "extra": scalar})
# Mostly the well-formed request the fast path is for, so it is exercised.
# (with each member sometimes just off: the checks the fast path makes)
ids = st.one_of(st.integers(min_value=-2**63, max_value=2**64 - 1), st.text(max_size=6),
                st.floats(allow_nan=False, allow_infinity=False), st.none(), st.booleans(),
                st.integers(min_value=2**64, max_value=2**80), st.lists(st.integers(), max_size=1))
plain = st.fixed_dictionaries({"jsonrpc": st.sampled_from(["2.0"] * 6 + ["1.0", 2]), "id": ids,
                               "method": st.one_of(st.sampled_from(METHODS), st.sampled_from(METHODS),
                                                   scalar)},
                              optional={"params": st.one_of(echo_params, echo_params, st.lists(value, max_size=4),
                                                            value)})
frame_obj = st.one_of(plain, plain, request, st.lists(request, max_size=5), value)
access = st.sampled_from([Access.READ, Access.WRITE, Access.ADMIN])


def _pair(limits: Limits):
    """Two dispatchers on twin registries, every method's counters made (as
    after a first call), so the fast path is taken from the first frame."""
    (ra, sa), (rb, sb) = make_registry(), make_registry()
    a, b = Dispatcher(ra, limits), Dispatcher(rb, limits)
    for d in (a, b):
        for name in d.registry.names():
            d.calls[name] = new_method_calls()
    return a, sa, b, sb


def _run(out):
    if out is None or type(out) is bytes:
        return out
    return asyncio.run(asyncio.wait_for(out, 5))


def _counters(d: Dispatcher) -> dict:
    return {n: (c.ok, c.error, c.denied, c.latency.count) for n, c in d.calls.items()} | \
        {"unknown": d.unknown_methods}


@SETTINGS
@given(st.lists(st.tuples(frame_obj, st.one_of(st.just(b""), st.just(b""), st.just(b""), st.binary(max_size=4)),
                          st.integers(min_value=0, max_value=80), access),
                min_size=1, max_size=6), st.sampled_from(LIMITS))
def test_fast_dispatch_answers_as_the_reference(frames, limits):
    ref, seen_ref, fast, seen_fast = _pair(limits)
    for obj, junk, at, acc in frames:
        frame = json.dumps(obj).encode()
        if junk:
            frame = frame[:at] + junk + frame[at:]
        call = Call(pid=1, uid=1000, gid=1000, access=acc)
        want = _run(ref.handle_frame(frame, call))
        got = _run(fast.handle(frame, call))
        assert got == want, frame
    assert seen_fast["calls"] == seen_ref["calls"]
    assert _counters(fast) == _counters(ref)


def test_the_fast_path_is_taken_for_a_plain_request():
    """A plain request is answered without handle_frame (which would count)."""
    ref, _, fast, _ = _pair(LIMITS[0])
    frame = b'{"jsonrpc":"2.0","id":7,"method":"echo","params":{"text":"hi"}}'
    called = []
    orig = fast.handle_frame
    fast.handle_frame = lambda *a: called.append(a) or orig(*a)
    assert json.loads(fast.handle(frame, Call())) == {"jsonrpc": "2.0", "id": 7, "result": {"text": "hi"}}
    assert called == []
    fast.handle(b'{"jsonrpc":"2.0","method":"echo","params":{"text":"hi"}}', Call())   # notification
    assert len(called) == 1


@SETTINGS
@given(st.lists(st.binary(max_size=90), max_size=8), st.lists(st.integers(min_value=1, max_value=120), max_size=10),
       st.sampled_from([8, 64, 1000]))
def test_framer_splits_as_the_reference(lines, cuts, limit):
    stream = b"".join(ln.replace(b"\n", b" ")[:limit + 8] + b"\n" for ln in lines) + b"tail"
    ref, fast = LineFramer(limit), new_framer(limit)
    pos = 0
    for c in cuts + [len(stream)]:
        chunk = stream[pos:pos + c]
        pos += c
        want, got = ref.feed(chunk), fast.feed(chunk)
        assert [_ev(x) for x in got] == [_ev(x) for x in want]
        assert fast.pending == ref.pending
        if any(isinstance(x, FrameTooLarge) for x in want):
            break          # the connection closes: nothing more is fed


def test_framer_blank_lines_and_a_frame_too_large():
    f = rpc_fast.Framer(4, FrameTooLarge)
    assert f.feed(b" \t\r\n\nab\n") == [b"ab"]
    ev = f.feed(b"12345\n")
    assert [_ev(x) for x in ev] == [("too large", 5, 4)]
    f = rpc_fast.Framer(4, FrameTooLarge)
    assert f.feed(b"123") == [] and f.pending == 3
    assert [_ev(x) for x in f.feed(b"45")] == [("too large", 5, 4)]
    assert f.pending == 0


@SETTINGS
@given(st.lists(st.tuples(st.booleans(), st.one_of(st.floats(min_value=0, max_value=20),
                                                   st.sampled_from([0.0005, 0.001, 0.1, 10.0, 10.5]))),
                max_size=30))
def test_counters_as_method_calls_done(obs):
    """The compiled MethodCalls/Histogram: same counts, buckets, sum, value()."""
    from aal_core.metrics import LATENCY_BUCKETS
    from aal_core.rpc.protocol import MethodCalls
    a, b = MethodCalls(), rpc_fast.MethodCalls(LATENCY_BUCKETS)
    for ok, s in obs:
        a.done(ok, s)
        b.done(ok, s)
    assert (a.ok, a.error, a.denied, a.latency.counts, a.latency.count) == \
        (b.ok, b.error, b.denied, b.latency.counts, b.latency.count)
    assert a.latency.sum == b.latency.sum
    assert a.latency.value() == b.latency.value()


def _ev(x):
    return ("too large", x.size, x.limit) if isinstance(x, FrameTooLarge) else x


class _Conn:
    """What drain reads of a Connection, and what it hands async replies to."""

    def __init__(self):
        self.inflight, self.paused, self.closing, self.started = set(), False, False, []

    def _start_async(self, aw):
        self.started.append(aw)
        self.inflight.add(aw)


class _Server:
    stopping = False


# Per frame: what the handler returns and does (b: reply bytes of that size;
# none: a notification; async: an awaitable; pause/close/stop: the handler
# makes the connection pause or close, or the server stop, then replies).
actions = st.sampled_from(["b1", "b40", "b200", "none", "async", "pause", "close", "stop"])


@SETTINGS
@given(st.lists(st.one_of(actions, st.just("too_large")), max_size=12),
       st.integers(min_value=-5, max_value=600), st.integers(min_value=0, max_value=4))
def test_drain_as_the_reference(events, room, max_inflight):
    from collections import deque

    from aal_core.rpc.server import _drain_ref

    def run(fn):
        conn, server = _Conn(), _Server()
        backlog = deque(FrameTooLarge(9, 8) if e == "too_large" else e.encode() for e in events)

        def handle(ev, call):
            e = ev.decode()
            if e == "pause":
                conn.paused = True
            elif e == "close":
                conn.closing = True
            elif e == "stop":
                server.stopping = True
            elif e == "none":
                return None
            elif e == "async":
                return ("aw", len(conn.started))
            return b"x" * (int(e[1:]) if e[0] == "b" else 3)

        out: list = []
        queued = fn(conn, backlog, handle, None, out, room, max_inflight, server)
        return (queued, out, [_ev(x) for x in backlog], conn.started, conn.paused, conn.closing, server.stopping)

    assert run(rpc_fast.drain) == run(_drain_ref)


DEEP = {"text": "x", "n": [[[[[[[[1]]]]]]]]}
CASES = [  # one of each thing the fast path hands to the reference, and the plain ones it keeps
    {"jsonrpc": "2.0", "id": 1, "method": "echo", "params": {"text": "hi"}},
    {"jsonrpc": "2.0", "id": "a", "method": "echo", "params": ["hi", 3]},
    {"jsonrpc": "2.0", "id": 1.5, "method": "fragment"},
    {"jsonrpc": "2.0", "id": None, "method": "echo", "params": {"text": "hi"}},
    {"jsonrpc": "2.0", "id": 2, "method": "echo", "params": DEEP},
    {"jsonrpc": "2.0", "id": 2, "method": "echo", "params": {"text": "x", "u": 2**64 + 1}},
    {"jsonrpc": "2.0", "id": 2**64 + 1, "method": "echo", "params": {"text": "x"}},
    {"jsonrpc": "2.0", "method": "echo", "params": {"text": "hi"}},
    [{"jsonrpc": "2.0", "id": 1, "method": "echo", "params": {"text": "hi"}}],
    {"jsonrpc": "2.0", "id": True, "method": "echo", "params": {"text": "hi"}},
    {"jsonrpc": "1.0", "id": 1, "method": "echo", "params": {"text": "hi"}},
    {"jsonrpc": "2.0", "id": 1, "method": "echo", "params": {"text": "hi"}, "x": 1},
    {"jsonrpc": "2.0", "id": 1, "method": "echo", "params": 5},
    {"jsonrpc": "2.0", "id": 1, "method": "nope"},
    {"jsonrpc": "2.0", "id": 1, "method": "write_op"},
    {"jsonrpc": "2.0", "id": 1, "method": "admin_op"},
    {"jsonrpc": "2.0", "id": 1, "method": "echo", "params": {"text": "y" * 100}},
    {"jsonrpc": "2.0", "id": 1, "method": "unencodable"},
    {"jsonrpc": "2.0", "id": 1, "method": "huge_int"},
    {"jsonrpc": "2.0", "id": 1, "method": "crash"},
    {"jsonrpc": "2.0", "id": 1, "method": "app_error", "params": {"text": "ledger"}},
    {"jsonrpc": "2.0", "id": 1, "method": "aecho", "params": {"text": "hi"}},
    {"jsonrpc": "2.0", "id": 1, "method": "acrash"},
    {"jsonrpc": "2.0", "id": 1, "method": "echo", "params": {"nope": 1}},
]


@pytest.mark.parametrize("limits", LIMITS)
@pytest.mark.parametrize("acc", [Access.READ, Access.WRITE])
@pytest.mark.parametrize("obj", CASES, ids=range(len(CASES)))
def test_each_case_as_the_reference(obj, acc, limits):
    ref, seen_ref, fast, seen_fast = _pair(limits)
    frame = json.dumps(obj).encode()
    call = Call(pid=1, uid=1000, gid=1000, access=acc)
    assert _run(fast.handle(frame, call)) == _run(ref.handle_frame(frame, call))
    assert seen_fast["calls"] == seen_ref["calls"] and _counters(fast) == _counters(ref)
