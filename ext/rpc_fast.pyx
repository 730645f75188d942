# cython: language_level=3
"""The JSON-RPC per-frame path for the common, well-formed request.

Why Cython: a pipelined client's 64 frames in one read each went through
LineFramer.feed, Dispatcher.handle_frame and _one in Python, 3.7 µs a frame
against the minimal line server's 1.1 µs (bench/rpc.py, bench/README.md).
Here the split is one memchr pass, the frame checks (size, bracket count,
19-digit runs) one byte pass, and the request's validation a handful of C
type checks.  Anything unusual — a batch, a notification, a parse error, a
bad member, an unknown method, too little access, a ledger writer, BigInts,
deep nesting, a reply too large — goes to the pure-Python reference
(`Dispatcher.handle_frame`, `LineFramer`) before anything has happened, so
the answer is the reference's own.  tests/test_rpc_fast_diff.py holds both
to the same bytes and counters (hypothesis).
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem, PyDict_Size
from cpython.object cimport PyObject
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.math cimport copysign, fabs, floor, fma
from libc.string cimport memchr
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

import orjson
from asyncio import get_running_loop as _get_running_loop

cdef object _loads = orjson.loads
cdef object _dumps = orjson.dumps
cdef object _OPT = orjson.OPT_APPEND_NEWLINE


cdef inline double _perf_counter() noexcept nogil:
    # time.perf_counter() on Linux: CLOCK_MONOTONIC, in seconds (the same
    # clock, so an async call's t0 is finished by protocol's perf_counter)
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline bint _odd(double r) noexcept nogil:
    # r (an integer-valued double, |r| < 2**52) is odd
    return floor(r * 0.5) * 2.0 != r


cdef double _R3_MAX = 4503599627370496.0 / 1000.0     # 2**52 / 1000


cpdef double round3(double x):
    """round(x, 3), without its decimal string round trip (dtoa, a printf
    and strtod: a fifth of a system.health call).  x*1000 is split exactly
    into hi + lo (fma); the nearest integer to that exact value, ties to
    even, is what dtoa rounds to, and dividing it by 1000 (both exact) is
    what strtod reads back.  Outside |x| < 2**52/1000, NaN or inf: round
    itself.  tests/test_rpc_conn_diff.py holds it to round(x, 3)."""
    cdef double hi, lo, r, d
    if not (fabs(x) < _R3_MAX):
        return round(x, 3)
    hi = x * 1000.0
    lo = fma(x, 1000.0, -hi)              # x*1000 == hi + lo exactly
    r = floor(hi)
    d = hi - r                            # exact, in [0, 1)
    # d is a multiple of ulp(hi) and |lo| <= ulp(hi)/2, so only a d of
    # exactly 0.5 needs lo (and a tie, lo == 0, goes to the even integer).
    if d > 0.5 or (d == 0.5 and (lo > 0.0 or (lo == 0.0 and _odd(r)))):
        r += 1.0
    r = r / 1000.0
    if r == 0.0:
        return copysign(0.0, x)
    return r


cdef inline bint _is_space(unsigned char c) noexcept nogil:
    # bytes.strip()'s ASCII whitespace
    return c == 32 or (9 <= c <= 13)


cdef bint _blank(const char* p, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        if not _is_space(<unsigned char>p[i]):
            return False
    return True


cdef class Framer:
    """LineFramer (aal_core.rpc.protocol) in C: splits on b'\\n', drops blank
    lines, a FrameTooLarge event past the limit, then nothing more."""

    cdef bytearray _buf
    cdef Py_ssize_t _limit
    cdef object _too_large

    def __init__(self, Py_ssize_t max_frame_bytes, too_large):
        self._buf = bytearray()
        self._limit = max_frame_bytes
        self._too_large = too_large

    @property
    def pending(self):
        return len(self._buf)

    def feed(self, bytes data):
        return self._feed(data)

    cdef list _feed(self, bytes data):
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data), old
        cdef const char* p
        if n == 0:
            return []
        old = len(self._buf)
        if old == 0:
            return self._split(PyBytes_AS_STRING(data), n, data)
        self._buf += data
        # No newline in what was pending: look only at the new bytes.
        p = <const char*>memchr(PyBytes_AS_STRING(data), 10, n)
        if p == NULL:
            if old + n > self._limit:
                self._buf = bytearray()
                return [self._too_large(old + n, self._limit)]
            return []
        joined = bytes(self._buf)
        self._buf = bytearray()
        return self._split(PyBytes_AS_STRING(joined), len(joined), joined)

    cdef list _split(self, const char* p, Py_ssize_t n, object keep):
        # keep: the object owning p, alive for the call
        cdef list frames = []
        cdef Py_ssize_t start = 0, nl, limit = self._limit
        cdef const char* q
        while True:
            q = <const char*>memchr(p + start, 10, n - start)
            if q == NULL:
                break
            nl = q - p
            if nl - start > limit:
                frames.append(self._too_large(nl - start, limit))
                return frames
            if not _blank(p + start, nl - start):
                frames.append(PyBytes_FromStringAndSize(p + start, nl - start))
            start = nl + 1
        if n - start > limit:
            frames.append(self._too_large(n - start, limit))
            return frames
        if start < n:
            self._buf = bytearray(p[start:n])
        return frames


cdef bint _plain(const char* p, Py_ssize_t n, Py_ssize_t max_depth) noexcept nogil:
    """No run of 19+ digits (a possible BigInt) and at most max_depth of
    '[' and '{' (so no nesting past the limit): what handle_frame checks
    with two counts and a translate+find, in one pass."""
    cdef Py_ssize_t i, run = 0, brackets = 0
    cdef unsigned char c
    for i in range(n):
        c = <unsigned char>p[i]
        if 48 <= c <= 57:
            run += 1
            if run >= 19:
                return False
        else:
            run = 0
            if c == 91 or c == 123:
                brackets += 1
    return brackets <= max_depth


cdef class Histogram:
    """metrics.Histogram for the RPC latencies, in C: observe() bumps one
    bucket of a C array; value() is the same dict."""

    cdef readonly tuple bounds
    cdef double* _b
    cdef long long* _c
    cdef Py_ssize_t _n
    cdef public double sum
    cdef public long long count

    def __cinit__(self, bounds):
        self.bounds = tuple(float(b) for b in bounds)
        self._n = len(self.bounds)
        self._b = <double*>PyMem_Malloc((self._n + 1) * sizeof(double))
        self._c = <long long*>PyMem_Malloc((self._n + 1) * sizeof(long long))
        if self._b == NULL or self._c == NULL:
            raise MemoryError()
        cdef Py_ssize_t i
        for i in range(self._n):
            self._b[i] = self.bounds[i]
        for i in range(self._n + 1):
            self._c[i] = 0
        self.sum = 0.0
        self.count = 0

    def __dealloc__(self):
        PyMem_Free(self._b)
        PyMem_Free(self._c)

    cdef inline void _observe(self, double value) noexcept:
        cdef Py_ssize_t lo = 0, hi = self._n, mid
        while lo < hi:                     # bisect_left: the first bound >= value
            mid = (lo + hi) >> 1
            if self._b[mid] < value:
                lo = mid + 1
            else:
                hi = mid
        self._c[lo] += 1
        self.sum += value
        self.count += 1

    def observe(self, double value):
        self._observe(value)

    @property
    def counts(self):
        return [self._c[i] for i in range(self._n + 1)]

    def value(self):
        buckets = []
        cdef long long running = 0
        cdef Py_ssize_t i
        for i in range(self._n):
            running += self._c[i]
            buckets.append([self.bounds[i], running])
        buckets.append(["+Inf", self.count])
        return {"buckets": buckets, "sum": self.sum, "count": self.count}


cdef class MethodCalls:
    """protocol.MethodCalls (the reference) in C: a counter per outcome and
    a latency Histogram."""

    cdef public long long ok, error, denied
    cdef readonly Histogram latency

    def __init__(self, bounds):
        self.ok = self.error = self.denied = 0
        self.latency = Histogram(bounds)

    cpdef done(self, bint ok, double seconds):
        if ok:
            self.ok += 1
        else:
            self.error += 1
        self.latency._observe(seconds)


cdef class _Entry:
    """What handle needs of one registry Method, read once (a Method is
    frozen; a re-registered name is a new Method, seen by identity)."""
    cdef object m
    cdef object handler
    cdef object bind
    cdef long access
    cdef bint writes
    cdef bint noreq

    def __init__(self, m):
        self.m = m
        self.handler = m.handler
        self.bind = m.params.bind
        self.noreq = not m.params.required     # ParamSpec.bind(None) is then a new {}
        self.access = int(m.access)
        self.writes = bool(m.writes_ledger)


cdef class FastDispatch:
    """`handle(frame, call)`: what `dispatcher.handle_frame(frame, call)`
    returns, computed here for a plain request object and by the dispatcher
    itself for everything else."""

    cdef object d
    cdef dict methods
    cdef dict calls
    cdef object map_exception
    cdef object isawaitable
    cdef dict entries
    cdef object limits
    cdef Py_ssize_t max_frame, max_depth, max_reply

    def __init__(self, dispatcher, methods, map_exception, isawaitable):
        self.entries = {}
        self.limits = None
        self.d = dispatcher
        self.methods = methods          # the registry's own dict: methods added later are seen
        self.calls = dispatcher.calls
        self.map_exception = map_exception
        self.isawaitable = isawaitable

    cpdef handle(self, bytes frame, call):
        cdef object d = self.d
        cdef Py_ssize_t n = PyBytes_GET_SIZE(frame), nk
        cdef PyObject* p
        cdef _Entry e
        limits = d.limits
        if limits is not self.limits:           # a reload replaces them
            self.max_frame, self.max_depth = limits.max_frame_bytes, limits.max_depth
            self.max_reply = limits.max_reply_bytes
            self.limits = limits
        if n > self.max_frame or not _plain(PyBytes_AS_STRING(frame), n, self.max_depth):
            return d.handle_frame(frame, call)
        try:
            msg = _loads(frame)
        except Exception:
            return d.handle_frame(frame, call)
        if type(msg) is not dict:
            return d.handle_frame(frame, call)
        p = PyDict_GetItem(msg, "id")
        if p == NULL:
            return d.handle_frame(frame, call)          # a notification
        id_ = <object>p
        t = type(id_)
        if not (t is str or t is int or t is float or id_ is None):
            return d.handle_frame(frame, call)
        p = PyDict_GetItem(msg, "jsonrpc")
        if p == NULL or type(<object>p) is not str or <object>p != "2.0":
            return d.handle_frame(frame, call)
        p = PyDict_GetItem(msg, "method")
        if p == NULL or type(<object>p) is not str:
            return d.handle_frame(frame, call)
        name = <object>p
        nk = PyDict_Size(msg)
        params = None
        if nk == 4:
            p = PyDict_GetItem(msg, "params")
            if p == NULL:
                return d.handle_frame(frame, call)
            params = <object>p
            if type(params) is not dict and type(params) is not list:
                return d.handle_frame(frame, call)
        elif nk != 3:
            return d.handle_frame(frame, call)
        p = PyDict_GetItem(self.methods, name)
        if p == NULL:
            return d.handle_frame(frame, call)
        m = <object>p
        p = PyDict_GetItem(self.entries, name)
        if p == NULL or (<_Entry>p).m is not m:
            e = _Entry(m)
            self.entries[name] = e
        else:
            e = <_Entry>p
        if <long>call.access < e.access or (e.writes and d.budgets is not None):
            return d.handle_frame(frame, call)
        p = PyDict_GetItem(self.calls, name)
        if p == NULL:
            return d.handle_frame(frame, call)          # its first call creates the counters
        stats = <object>p
        if type(stats) is not MethodCalls:
            return d.handle_frame(frame, call)
        cdef double t0 = _perf_counter()
        try:
            if params is None and e.noreq:
                result = e.handler({}, call)
            else:
                result = e.handler(e.bind(params), call)
        except Exception as exc:
            (<MethodCalls>stats).done(False, _perf_counter() - t0)
            return d._encode({"jsonrpc": "2.0", "id": id_, "error": self.map_exception(exc, name)})
        if type(result) is not dict and self.isawaitable(result):
            return d._await_one(d._finish_async(result, id_, False, name, None, stats, t0))
        (<MethodCalls>stats).done(True, _perf_counter() - t0)
        obj = {"jsonrpc": "2.0", "id": id_, "result": result}
        try:
            out = _dumps(obj, None, _OPT)
        except TypeError:
            return d._encode(obj)
        if PyBytes_GET_SIZE(out) > self.max_reply:
            return d._encode(obj)
        return out


def drain(conn, backlog, handle, call, list out, Py_ssize_t room, Py_ssize_t max_inflight, server):
    """The plain part of Connection._process's loop (aal_core.rpc.server,
    whose `_drain_ref` is the reference): `handle` is a FastDispatch or
    any callable of (frame, call).  Take bytes frames from the head of
    `backlog` while the connection takes more (not paused or closing, the
    server not stopping, fewer than max_inflight async calls, fewer than
    `room` bytes queued), append each reply to `out`, hand an awaitable to
    conn._start_async.  Stops at anything else, left at the head.  Returns
    the bytes queued."""
    cdef Py_ssize_t queued = 0
    inflight = conn.inflight
    while backlog and queued < room:
        if conn.paused or conn.closing or len(inflight) >= max_inflight or server.stopping:
            break
        ev = backlog[0]
        if type(ev) is not bytes:
            break
        backlog.popleft()
        if type(handle) is FastDispatch:      # a C call, not a Python one
            r = (<FastDispatch>handle).handle(ev, call)
        else:
            r = handle(ev, call)
        if type(r) is bytes:
            out.append(r)
            queued += PyBytes_GET_SIZE(r)
        elif r is not None:
            conn._start_async(r)
    return queued


cdef class ConnectionCore:
    """The per-read path of server.Connection in C: `data_received` and
    `_process` (flow control, the one bounded write per read, the yield to
    other clients after a long run of pipelined frames) with the
    connection's state in C fields, so a read costs no Python frame.
    References: server._data_received_ref and server._process_ref
    (tests/test_rpc_conn_diff.py holds both to the same writes and state).
    The rare turns (a frame too large, the server stopping) are the
    subclass's Python methods `_too_large(ev, out)` and `_overloaded()`."""

    cdef public object server, transport, framer, call, backlog
    cdef public set inflight
    cdef public bint closing, paused, reading
    cdef public Py_ssize_t unsent, max_inflight
    cdef public double last_activity

    def data_received(self, data):
        if self.closing:
            return
        self.last_activity = _perf_counter()       # time.monotonic()'s clock
        fr = self.framer
        if type(fr) is Framer and type(data) is bytes:
            frames = (<Framer>fr)._feed(<bytes>data)
        else:
            frames = fr.feed(data)
        if frames:
            self.backlog.extend(frames)
        self._process_c()

    def _process(self):
        """Handle backlog frames while the client keeps up; pause reading if not.
        Replies of one pass go out in one write (one syscall, not one each)."""
        self._process_c()

    cdef _process_c(self):
        cdef object server = self.server
        cdef object backlog = self.backlog
        cdef object first = None
        cdef list out = None
        cdef Py_ssize_t queued = 0, room, now, total, n
        cdef Py_ssize_t max_inflight = self.max_inflight
        cdef set inflight = self.inflight
        cdef object handle, call, r, ev, t
        if self.closing:
            room = 0
        else:
            room = <Py_ssize_t>server.unsent_soft - <Py_ssize_t>self.transport.get_write_buffer_size()
        handle = server.dispatcher.fast
        call = self.call
        while True:
            # The plain frames (what drain / server._drain_ref do).
            while backlog and queued < room:
                if self.paused or self.closing or len(inflight) >= max_inflight or server.stopping:
                    break
                ev = backlog[0]
                if type(ev) is not bytes:
                    break
                backlog.popleft()
                if type(handle) is FastDispatch:
                    r = (<FastDispatch>handle).handle(ev, call)
                else:
                    r = handle(ev, call)
                if type(r) is bytes:
                    if first is None:
                        first = r
                    else:
                        if out is None:
                            out = [first]
                        out.append(r)
                    queued += PyBytes_GET_SIZE(r)
                elif r is not None:
                    self._start_async(r)
            if not backlog or self.paused or self.closing or len(inflight) >= max_inflight \
                    or queued >= room:
                break
            ev = backlog.popleft()
            if out is None:
                out = [] if first is None else [first]
            if type(ev) is not bytes:
                self._too_large(ev, out)
                return
            # A bytes frame left: only while the server stops.
            out.append(self._overloaded())
        if (first is not None or out) and not self.closing:
            # Bounded by construction (soft limit + one reply): see server.py.
            t = self.transport
            if out is None:
                t.write(first)
            elif len(out) == 1:
                t.write(out[0])
            else:
                t.write(b"".join(out))
            now = t.get_write_buffer_size()
            if now != self.unsent:
                server.unsent_total = <Py_ssize_t>server.unsent_total + (now - self.unsent)
                self.unsent = now
            if server.unsent_total > server.unsent_total_max:
                server.shed()
        if backlog and queued and queued >= room and not self.paused and not self.closing:
            # A long run of pipelined frames: yield to other clients, then go on.
            _get_running_loop().call_soon(self._process)
        on = not backlog and not self.paused
        if on != self.reading:
            self._set_reading(on)
