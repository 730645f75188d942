"""The compiled per-read path (rpc_fast.ConnectionCore: data_received and
_process) against its pure-Python reference (server._data_received_ref,
_process_ref), and rpc_fast.round3 against round(x, 3) (hypothesis).

Each connection gets a transport that behaves as asyncio's does where the
per-read path looks (write buffer size, pause_writing past the high-water
mark and resume_writing once drained below a quarter of it, pause and
resume of reading, close, abort): the transport is the one part faked,
the Connection, RpcServer and (in the second test) the Dispatcher are
real.  Both sides get the same reads and drains; after each step their
writes, transport calls, flow-control state, backlog, unsent counts and
the handlers' calls must be the same."""
from __future__ import annotations

import asyncio
import json
import math

from hypothesis import HealthCheck, example, given, settings, strategies as st

from aal_core.rpc import Access, Call, Dispatcher, Limits
from aal_core.rpc.protocol import FrameTooLarge, new_method_calls
from aal_core.rpc.server import Connection, Hub, RpcServer, _data_received_ref, _process_ref
from aal_core.rpc_fast import ConnectionCore, round3

from rpc_fixtures import make_registry

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAX_FRAME = 64


class RefConnection(Connection):
    """The same Connection with the reference per-read path."""
    data_received = _data_received_ref
    _process = _process_ref


class Transport:
    """`kernel` bytes fit in the socket (sent at once, as asyncio's write
    does when it can); the rest is buffered and counted."""

    def __init__(self, conn, high, kernel=0):
        self.conn, self.high, self.buf = conn, high, 0
        self.kernel = self.kernel_max = kernel
        self.writes: list[bytes] = []
        self.log: list = []
        self.write_paused = False
        self.reading = True      # asyncio delivers no data while reading is paused

    def write(self, data):
        self.writes.append(bytes(data))
        sent = 0 if self.buf else min(len(data), self.kernel)
        self.kernel -= sent
        self.buf += len(data) - sent
        if self.buf > self.high and not self.write_paused:
            self.write_paused = True
            self.log.append("pause_writing")
            self.conn.pause_writing()

    def get_write_buffer_size(self):
        return self.buf

    def set_write_buffer_limits(self, high=None, low=None):
        self.high = high

    def drain(self, n):
        """The peer read n bytes."""
        moved = min(self.buf, n)
        self.buf -= moved
        self.kernel = min(self.kernel_max, self.kernel + n - moved)
        if self.write_paused and self.buf <= self.high // 4:
            self.write_paused = False
            self.log.append("resume_writing")
            self.conn.resume_writing()

    def pause_reading(self):
        self.log.append("pause_reading")
        self.reading = False

    def resume_reading(self):
        self.log.append("resume_reading")
        self.reading = True

    def close(self):
        self.log.append("close")

    def abort(self):
        self.log.append("abort")
        self.buf = 0

    def is_closing(self):
        return False

    def get_extra_info(self, name, default=None):
        return default


def _server(dispatcher, soft, hard, total):
    return RpcServer(dispatcher, Hub(), max_connections=10, idle_timeout_s=300, outbox_max_frames=8,
                     group="nogroup-aal-test", unsent_soft_bytes=soft, unsent_hard_bytes=hard,
                     unsent_total_bytes=total)


def _connect(cls, server, max_inflight, kernel=0):
    conn = cls(server)
    t = Transport(conn, server.unsent_soft - 1, kernel)
    conn.transport = t
    conn.call = Call(pid=1, uid=1000, gid=1000, access=Access.WRITE, conn=conn)
    conn.max_inflight = max_inflight
    server.admit(conn)
    return conn, t


def _state(conn, t, server):
    return {"writes": b"".join(t.writes), "log": list(t.log), "closing": conn.closing, "paused": conn.paused,
            "reading": conn.reading, "unsent": conn.unsent, "unsent_total": server.unsent_total,
            "backlog": [("too large", e.size, e.limit) if isinstance(e, FrameTooLarge) else e
                        for e in conn.backlog],
            "inflight": len(conn.inflight), "pending": conn.framer.pending, "stopping": server.stopping,
            "closed_total": server.backlog_closed_total}


async def _settle():
    for _ in range(6):          # call_soon'd _process, async replies (one sleep(0) each)
        await asyncio.sleep(0)


class ScriptedDispatcher:
    """What the per-read path reads of a Dispatcher (`fast`, `limits`),
    with a handle whose frames say what the handler does: bN a reply of N
    bytes, none a notification, async a reply after one loop turn, pause
    (the transport filled up), close (the handler closes the connection),
    stop (the server starts stopping)."""

    def __init__(self):
        self.limits = Limits(max_frame_bytes=MAX_FRAME)
        self.budgets = None
        self.conn = self.server = None
        self.handled: list = []

    def fast(self, frame, call):
        self.handled.append(frame)
        e = frame.decode()
        if e == "none":
            return None
        if e == "async":
            async def later(n=len(self.handled)):
                await asyncio.sleep(0)
                return b"a%d\n" % n
            return later()
        if e == "pause":
            self.conn.transport.write(b"")
            self.conn.pause_writing()
        elif e == "close":
            self.conn.close()
        elif e == "stop":
            self.server.stopping = True
        # (b99 replies are 100 bytes: a soft limit of 200..600 is then met exactly)
        return b"r" * (int(e[1:]) if e[0] == "b" else 3) + b"\n"


event = st.sampled_from(["b1", "b99", "b99", "b199", "b40", "b200", "b900", "none", "async", "async", "pause", "close", "stop",
                         "blank", "too_large"])
step = st.one_of(st.tuples(st.just("read"), st.integers(min_value=1, max_value=300)),
                 st.tuples(st.just("drain"), st.integers(min_value=0, max_value=3000)))


def _wire(events):
    out = b""
    for e in events:
        out += b"  \n" if e == "blank" else b"x" * (MAX_FRAME + 1) + b"\n" if e == "too_large" else \
            e.encode() + b"\n"
    return out


@SETTINGS
# A read whose replies fill the room exactly, the socket taking them all:
# the rest of the read waits one loop turn (call_soon), reading paused.
@example(["b199", "b1"], [("read", 100)], 200, 4, False, 1 << 20)
@example(["b99", "b99", "b99", "async", "b1"], [("read", 9), ("drain", 50), ("read", 300)], 300, 1, True, 1000)
@given(st.lists(event, min_size=1, max_size=40), st.lists(step, min_size=1, max_size=30),
       st.one_of(st.integers(min_value=200, max_value=4000), st.sampled_from([200, 300, 400, 600])),
       st.integers(min_value=1, max_value=4), st.booleans(), st.sampled_from([0, 0, 100, 1000, 1 << 20]))
def test_connection_core_as_the_reference(events, steps, soft, max_inflight, tight_total, kernel):
    wire = _wire(events)

    async def run(cls):
        d = ScriptedDispatcher()
        server = _server(d, soft, soft * 4, soft * 2 if tight_total else soft * 40)
        conn, t = _connect(cls, server, max_inflight, kernel)
        d.conn, d.server = conn, server
        states = []
        pos = 0
        for kind, n in steps + [("read", len(wire)), ("drain", 1 << 30)] * 3:
            if kind == "read":
                if pos < len(wire) and t.reading:
                    conn.data_received(wire[pos:pos + n])
                    pos += n
            else:
                t.drain(n)
            await _settle()
            states.append(_state(conn, t, server))
        return states, d.handled

    async def both():
        return await run(Connection), await run(RefConnection)

    got, want = asyncio.run(both())
    assert got == want


frame_obj = st.one_of(
    st.fixed_dictionaries({"jsonrpc": st.just("2.0"), "id": st.integers(min_value=0, max_value=99),
                           "method": st.sampled_from(["echo", "aecho", "crash", "acrash", "app_error",
                                                      "unencodable", "admin_op", "write_op", "nope"]),
                           "params": st.fixed_dictionaries({"text": st.text(max_size=300)})}),
    st.fixed_dictionaries({"jsonrpc": st.just("2.0"), "method": st.just("echo"),
                           "params": st.fixed_dictionaries({"text": st.text(max_size=5)})}),
    st.lists(st.fixed_dictionaries({"jsonrpc": st.just("2.0"), "id": st.integers(0, 9),
                                    "method": st.sampled_from(["echo", "aecho"]),
                                    "params": st.fixed_dictionaries({"text": st.text(max_size=20)})}),
             max_size=3),
    st.just("not json"), st.text(max_size=6))


@SETTINGS
@given(st.lists(frame_obj, min_size=1, max_size=25), st.lists(st.integers(min_value=1, max_value=400),
                                                              min_size=1, max_size=20),
       st.integers(min_value=300, max_value=3000), st.integers(min_value=0, max_value=2000),
       st.sampled_from([0, 500, 1 << 20]))
def test_connection_core_with_the_real_dispatcher(objs, cuts, soft, drain_each, kernel):
    """Real frames through the real Dispatcher (fast path, reference
    fallbacks, async methods, errors), read in pieces."""
    wire = b"".join((o if isinstance(o, str) else json.dumps(o)).encode()[:2 * MAX_FRAME * 16] + b"\n"
                    for o in objs)

    async def run(cls):
        reg, seen = make_registry()
        d = Dispatcher(reg, Limits(max_frame_bytes=MAX_FRAME * 16, max_batch=4))
        for name in reg.names():
            d.calls[name] = new_method_calls()
        server = _server(d, soft, soft * 4, soft * 40)
        conn, t = _connect(cls, server, 2, kernel)
        states = []
        pos = 0
        for n in cuts + [len(wire)] * 3:
            if pos < len(wire) and t.reading:
                conn.data_received(wire[pos:pos + n])
                pos += n
            for _ in range(3):
                await asyncio.sleep(0)
            t.drain(drain_each)
            await _settle()
            states.append(_state(conn, t, server))
        return states, seen["calls"], {n: (c.ok, c.error, c.denied, c.latency.count) for n, c in d.calls.items()}

    async def both():
        return await run(Connection), await run(RefConnection)

    got, want = asyncio.run(both())
    assert got == want


def test_the_compiled_path_is_the_one_connections_use():
    assert Connection.data_received is ConnectionCore.data_received
    assert Connection._process is ConnectionCore._process
    assert RefConnection.data_received is not ConnectionCore.data_received


# -- round3: system.health's uptime_s
near_ties = st.builds(lambda k, e: k / 1000 + e, st.integers(min_value=-10**12, max_value=10**12),
                      st.sampled_from([0.0, 0.0005, -0.0005, 0.00049999999, 0.00050000001, 1e-12, -1e-12]))


@settings(max_examples=3000, deadline=None)
@given(st.one_of(st.floats(), near_ties, st.floats(min_value=-1e7, max_value=1e7),
                 st.integers(min_value=-2**53, max_value=2**53).map(lambda i: i / 2000)))
def test_round3_is_round_to_three_places(x):
    want, got = round(x, 3), round3(x)
    if math.isnan(want):
        assert math.isnan(got)
    else:
        assert got == want and math.copysign(1.0, got) == math.copysign(1.0, want), x
