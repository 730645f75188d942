# cython: language_level=3
"""Compiled RFC 8785 canonical JSON for ledger entries, and the record an
append writes: the same rules, same bytes, as the pure-Python reference
aal_core.ledger.canonical (which has the full description);
tests/test_ledger_canonical.py and tests/test_ledger_record.py run both on
the same hypothesis-generated values.

Why compiled: canonicalising `data` was two thirds of an append's cost.
The encoder writes into one reused C buffer (no Python object per value).
It handles the common case in C: dicts with ASCII keys, str without lone
surrogates, bool/None, int within +-2**53, finite floats (shortest
round-trip digits from CPython's own repr, PyOS_double_to_string, put in
ECMAScript form), lists and tuples.  Anything else (a non-ASCII key, a big
integer, NaN, a lone surrogate, a foreign type, nesting past 64) is handed
to the list-of-str encoder below, kept from the first compiled version,
which either writes the same bytes or raises the reference's EntryError.

`record()` / `record_canonical()` build a whole framed record in that
buffer (u32 length, u32 ~length, the preimage {"data":..,"index":..,
"previous_hash":"..","timestamp":..}, SHA3-256 of it), hash it with the
ledger's libcrypto and stage its leaf in the Merkle tree: one bytes object
for the record and one for its hash per append.
"""
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.dict cimport PyDict_Next, PyDict_Size
from cpython.float cimport PyFloat_AS_DOUBLE
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.ref cimport PyObject
from libc.math cimport fabs, floor, isfinite
from libc.stdint cimport uint8_t, uint32_t
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcmp, memcpy

from aal_core.ledger_core cimport MerkleTree, need_ctx, digest
from openssl cimport EVP_MD_CTX

from json.encoder import encode_basestring as _quote

from aal_core.ledger.canonical import EntryError, format_number

cdef extern from "Python.h":
    const char *PyUnicode_AsUTF8AndSize(object s, Py_ssize_t *size)
    Py_ssize_t PyUnicode_GET_LENGTH(object s)
    char *PyOS_double_to_string(double val, char format_code, int precision, int flags, int *ptype)
    void PyMem_Free(void *p)
    void PyErr_Clear()
    Py_ssize_t PyList_GET_SIZE(object o)
    PyObject *PyList_GET_ITEM(object o, Py_ssize_t i)
    Py_ssize_t PyTuple_GET_SIZE(object o)
    PyObject *PyTuple_GET_ITEM(object o, Py_ssize_t i)

cdef enum:
    MAX_DEPTH = 64
    HEADER_LEN = 8
    HASH_LEN = 32
    MAX_RECORD = 16 * 1024 * 1024
    STACK_KEYS = 32
    SLOW = 1            # emit(): not the common case, use the slow encoder

cdef object MAX_SAFE = 2 ** 53
cdef long long MAX_SAFE_C = 9007199254740992
cdef const char *HEX = b"0123456789abcdef"


# -- the reused output buffer -------------------------------------------

cdef struct Buf:
    char *p
    Py_ssize_t n
    Py_ssize_t cap

cdef Buf OUT
OUT.p = NULL
OUT.n = 0
OUT.cap = 0


cdef int reserve(Buf *b, Py_ssize_t extra) except -1:
    cdef Py_ssize_t need = b.n + extra, cap = b.cap
    cdef char *p
    if need <= cap:
        return 0
    cap = cap * 2 if cap else 4096
    while cap < need:
        cap *= 2
    p = <char *>realloc(b.p, cap)
    if p == NULL:
        raise MemoryError("ledger: cannot grow the record buffer")
    b.p = p
    b.cap = cap
    return 0


cdef inline int put(Buf *b, const char *s, Py_ssize_t n) except -1:
    if b.n + n > b.cap:
        reserve(b, n)
    memcpy(b.p + b.n, s, n)
    b.n += n
    return 0


cdef inline int putc(Buf *b, char c) except -1:
    if b.n + 1 > b.cap:
        reserve(b, 1)
    b.p[b.n] = c
    b.n += 1
    return 0


cdef int put_i64(Buf *b, long long v) except -1:
    cdef char tmp[24]
    cdef int i = 24
    cdef unsigned long long u
    if v < 0:
        putc(b, 45)
        u = <unsigned long long>(-(v + 1)) + 1
    else:
        u = <unsigned long long>v
    while True:
        i -= 1
        tmp[i] = <char>(48 + u % 10)
        u //= 10
        if u == 0:
            break
    return put(b, tmp + i, 24 - i)


cdef int put_str(Buf *b, const char *s, Py_ssize_t n) except -1:
    """A JSON string literal of UTF-8 s[0:n] with RFC 8785's escaping: only
    `"`, `\\` and U+0000..U+001F (as \\b \\t \\n \\f \\r or \\u00xx)."""
    cdef Py_ssize_t i, start = 0
    cdef unsigned char c
    reserve(b, n + 2)
    b.p[b.n] = 34
    b.n += 1
    for i in range(n):
        c = <unsigned char>s[i]
        if c >= 32 and c != 34 and c != 92:
            continue
        put(b, s + start, i - start)
        start = i + 1
        if c == 34:
            put(b, b'\\"', 2)
        elif c == 92:
            put(b, b"\\\\", 2)
        elif c == 8:
            put(b, b"\\b", 2)
        elif c == 9:
            put(b, b"\\t", 2)
        elif c == 10:
            put(b, b"\\n", 2)
        elif c == 12:
            put(b, b"\\f", 2)
        elif c == 13:
            put(b, b"\\r", 2)
        else:
            put(b, b"\\u00", 4)
            putc(b, HEX[c >> 4])
            putc(b, HEX[c & 15])
    put(b, s + start, n - start)
    return putc(b, 34)


cdef int put_double(Buf *b, double x) except -1:
    """ECMAScript Number.toString of a finite double (the reference's
    format_number): the shortest round-trip digits of repr, placed as
    plain or exponent notation."""
    cdef char *r
    cdef char digits[40]
    cdef int k = 0, point = 0, i = 0, e = 0, lead, end, n, j
    cdef bint frac = False, eneg = False
    if x == 0:
        return putc(b, 48)
    if x == floor(x) and fabs(x) < 9007199254740992.0:
        return put_i64(b, <long long>x)         # integral: its exact digits are the shortest
    r = PyOS_double_to_string(fabs(x), b'r', 0, 0, NULL)
    if r == NULL:
        raise MemoryError()
    while r[i] != 0 and r[i] != 101:            # up to 'e'
        if r[i] == 46:
            frac = True
        elif k < 40:
            digits[k] = r[i]
            k += 1
            if not frac:
                point += 1
        i += 1
    if r[i] == 101:
        i += 1
        if r[i] == 45:
            eneg = True
            i += 1
        elif r[i] == 43:
            i += 1
        while r[i] != 0:
            e = e * 10 + (r[i] - 48)
            i += 1
    PyMem_Free(r)
    point += -e if eneg else e
    lead = 0
    while lead < k and digits[lead] == 48:
        lead += 1
    point -= lead
    end = k
    while end > lead and digits[end - 1] == 48:
        end -= 1
    k = end - lead
    n = point
    if x < 0:
        putc(b, 45)
    if k <= n <= 21:
        put(b, digits + lead, k)
        for j in range(n - k):
            putc(b, 48)
    elif 0 < n <= 21:
        put(b, digits + lead, n)
        putc(b, 46)
        put(b, digits + lead + n, k - n)
    elif -6 < n <= 0:
        put(b, b"0.", 2)
        for j in range(-n):
            putc(b, 48)
        put(b, digits + lead, k)
    else:
        e = n - 1
        putc(b, digits[lead])
        if k > 1:
            putc(b, 46)
            put(b, digits + lead + 1, k - 1)
        putc(b, 101)
        putc(b, 43 if e >= 0 else 45)
        put_i64(b, e if e >= 0 else -e)
    return 0


cdef struct Key:
    const char *s
    Py_ssize_t n
    PyObject *value


cdef inline bint key_lt(Key *a, Key *b) noexcept nogil:
    cdef Py_ssize_t m = a.n if a.n < b.n else b.n
    cdef int c = memcmp(a.s, b.s, m)
    return c < 0 or (c == 0 and a.n < b.n)


cdef int emit_dict(object d, Buf *b, int depth) except -1:
    cdef Py_ssize_t size = PyDict_Size(d), pos = 0, i, j, n, count = 0
    cdef PyObject *kp
    cdef PyObject *vp
    cdef Key stack_keys[STACK_KEYS]
    cdef Key *keys = stack_keys
    cdef Key tmp
    cdef const char *s
    cdef int rc = 0
    if size == 0:
        return put(b, b"{}", 2)
    if size > STACK_KEYS:
        keys = <Key *>malloc(size * sizeof(Key))
        if keys == NULL:
            raise MemoryError()
    try:
        while PyDict_Next(d, &pos, &kp, &vp):
            if type(<object>kp) is not str:
                return SLOW
            s = PyUnicode_AsUTF8AndSize(<object>kp, &n)
            if s == NULL:
                PyErr_Clear()
                return SLOW
            if n != PyUnicode_GET_LENGTH(<object>kp):     # not ASCII: UTF-16 order, slow path
                return SLOW
            keys[count].s = s
            keys[count].n = n
            keys[count].value = vp
            count += 1
        for i in range(1, count):               # insertion sort: entries have few keys
            tmp = keys[i]
            j = i - 1
            while j >= 0 and key_lt(&tmp, &keys[j]):
                keys[j + 1] = keys[j]
                j -= 1
            keys[j + 1] = tmp
        for i in range(count):
            putc(b, 123 if i == 0 else 44)
            put_str(b, keys[i].s, keys[i].n)
            putc(b, 58)
            rc = emit(<object>keys[i].value, b, depth + 1)
            if rc:
                return rc
        return putc(b, 125)
    finally:
        if keys != stack_keys:
            free(keys)


cdef int emit(object v, Buf *b, int depth) except -1:
    """Write the canonical form of v; SLOW (nothing usable written) when v
    is not the common case."""
    cdef type t = type(v)
    cdef const char *s
    cdef Py_ssize_t n, i
    cdef long long iv
    cdef int overflow = 0, rc
    cdef double x
    if t is str:
        s = PyUnicode_AsUTF8AndSize(v, &n)
        if s == NULL:                           # a lone surrogate
            PyErr_Clear()
            return SLOW
        return put_str(b, s, n)
    if t is dict:
        if depth >= MAX_DEPTH:
            return SLOW
        return emit_dict(v, b, depth)
    if t is list or t is tuple:
        if depth >= MAX_DEPTH:
            return SLOW
        n = PyList_GET_SIZE(v) if t is list else PyTuple_GET_SIZE(v)
        if n == 0:
            return put(b, b"[]", 2)
        i = 0
        while i < n:                            # (a list cannot change here: no Python code runs)
            putc(b, 91 if i == 0 else 44)
            rc = emit(<object>(PyList_GET_ITEM(v, i) if t is list else PyTuple_GET_ITEM(v, i)), b, depth + 1)
            if rc:
                return rc
            i += 1
        return putc(b, 93)
    if v is True:
        return put(b, b"true", 4)
    if v is False:
        return put(b, b"false", 5)
    if v is None:
        return put(b, b"null", 4)
    if t is int:
        iv = PyLong_AsLongLongAndOverflow(v, &overflow)
        if overflow or iv > MAX_SAFE_C or iv < -MAX_SAFE_C:
            return SLOW
        return put_i64(b, iv)
    if t is float:
        x = PyFloat_AS_DOUBLE(v)
        if not isfinite(x):
            return SLOW
        return put_double(b, x)
    return SLOW


# -- the slow path: every case, the reference's errors -------------------

cdef bytes _utf16(str s):
    return s.encode("utf-16-be", "surrogatepass")


cdef void _emit_slow(object v, list out, int depth) except *:
    cdef type t = type(v)
    cdef list keys
    cdef bint first
    cdef object k
    if t is str:
        out.append(_quote(v))
    elif t is dict:
        if depth >= MAX_DEPTH:
            raise EntryError(f"entry data nested deeper than {MAX_DEPTH} levels")
        if not v:
            out.append("{}")
            return
        keys = list(<dict>v)
        ascii_only = True
        for k in keys:
            if type(k) is not str:
                raise EntryError(f"object keys must be strings, got {type(k).__name__} {k!r}")
            if ascii_only and not (<str>k).isascii():
                ascii_only = False
        if ascii_only:
            keys.sort()
        else:
            keys.sort(key=_utf16)
        first = True
        for k in keys:
            out.append("{" if first else ",")
            first = False
            out.append(_quote(k))
            out.append(":")
            _emit_slow((<dict>v)[k], out, depth + 1)
        out.append("}")
    elif t is list or t is tuple:
        if depth >= MAX_DEPTH:
            raise EntryError(f"entry data nested deeper than {MAX_DEPTH} levels")
        if not v:
            out.append("[]")
            return
        first = True
        for item in v:
            out.append("[" if first else ",")
            first = False
            _emit_slow(item, out, depth + 1)
        out.append("]")
    elif v is True:
        out.append("true")
    elif v is False:
        out.append("false")
    elif v is None:
        out.append("null")
    elif t is int:
        if -MAX_SAFE <= v <= MAX_SAFE:
            out.append(str(v))
        else:
            out.append(format_number(v))
    elif t is float:
        out.append(format_number(v))
    else:
        raise EntryError(f"{t.__name__} is not a JSON value")


cdef bytes _canonical_slow(value):
    cdef list out = []
    _emit_slow(value, out, 0)
    try:
        return "".join(out).encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start:exc.end]
        raise EntryError(f"string contains a lone surrogate {bad!r}; not valid UTF-8") from None


def canonical(value) -> bytes:
    """RFC 8785 canonical JSON of a JSON value, as UTF-8 bytes."""
    OUT.n = 0
    if emit(value, &OUT, 0) == 0:
        return PyBytes_FromStringAndSize(OUT.p, OUT.n)
    return _canonical_slow(value)


# -- records ------------------------------------------------------------

cdef bytes _number_text(object x):
    """None for a finite float (written in C), else format_number(x): an
    int, or the reference's refusal of NaN/inf.  Called before the buffer
    is filled: Python code may run here (and another thread with it)."""
    if type(x) is float and isfinite(PyFloat_AS_DOUBLE(x)):
        return None
    return format_number(x).encode()


cdef tuple finish(Buf *b, unsigned long long index, bytes prev, object timestamp, bytes ts_text,
                  MerkleTree tree):
    """Close the preimage started at b[HEADER_LEN] with index, previous
    hash and timestamp; frame it, hash it, stage its leaf → (record, hash)."""
    cdef Py_ssize_t L, i
    cdef const uint8_t *ph
    cdef uint8_t *h
    cdef uint32_t n32
    cdef int rc
    cdef EVP_MD_CTX *ctx
    if len(prev) != HASH_LEN:
        raise ValueError("previous hash is 32 bytes")
    put(b, b',"index":', 9)
    put_i64(b, <long long>index)
    put(b, b',"previous_hash":"', 18)
    reserve(b, 2 * HASH_LEN)
    ph = <const uint8_t *><char *>prev
    for i in range(HASH_LEN):
        b.p[b.n + 2 * i] = HEX[ph[i] >> 4]
        b.p[b.n + 2 * i + 1] = HEX[ph[i] & 15]
    b.n += 2 * HASH_LEN
    put(b, b'","timestamp":', 14)
    if ts_text is None:
        put_double(b, PyFloat_AS_DOUBLE(timestamp))
    else:
        put(b, ts_text, len(ts_text))
    putc(b, 125)
    L = b.n - HEADER_LEN
    if L > MAX_RECORD:
        raise ValueError("record over 16 MiB")
    n32 = <uint32_t>L
    for i in range(4):                          # u32 length, u32 ~length, little-endian
        b.p[i] = <char>((n32 >> (8 * i)) & 0xFF)
        b.p[4 + i] = <char>(((~n32) >> (8 * i)) & 0xFF)
    reserve(b, HASH_LEN)
    h = <uint8_t *>(b.p + b.n)
    ctx = need_ctx()
    if not digest(ctx, <const uint8_t *>(b.p + HEADER_LEN), L, NULL, 0, h):
        raise RuntimeError("ledger: OpenSSL SHA3-256 failed")
    b.n += HASH_LEN
    rc = tree.push(ctx, h)
    if rc == -1:
        raise MemoryError("merkle tree: out of memory")
    if rc < 0:
        raise RuntimeError("ledger: OpenSSL SHA3-256 failed")
    return PyBytes_FromStringAndSize(b.p, b.n), PyBytes_FromStringAndSize(b.p + b.n - HASH_LEN, HASH_LEN)


def record(data, unsigned long long index, bytes prev, timestamp, Py_ssize_t max_data_bytes, MerkleTree tree):
    """The framed record of entry `index` with `data` (a JSON object,
    canonicalised here) after `prev` (raw hash) at `timestamp`, its leaf
    staged in `tree` → (record bytes, raw hash).  EntryError for data that
    cannot be an entry or whose canonical form is over max_data_bytes."""
    cdef Buf *b = &OUT
    cdef Py_ssize_t start, n
    cdef bytes c
    if type(data) is not dict:
        raise EntryError(f"entry data must be a JSON object, got {type(data).__name__}")
    ts_text = _number_text(timestamp)
    b.n = 0
    reserve(b, 256)
    b.n = HEADER_LEN
    put(b, b'{"data":', 8)
    start = b.n
    if emit(data, b, 0) != 0:
        c = _canonical_slow(data)      # Python code ran: fill the buffer again after it
        b.n = 0
        reserve(b, len(c) + 256)
        b.n = HEADER_LEN
        put(b, b'{"data":', 8)
        put(b, c, len(c))
    n = b.n - start
    if n > max_data_bytes:
        raise EntryError(f"entry data is {n} bytes in canonical JSON, over the "
                         f"{max_data_bytes}-byte limit (ledger.max_entry_bytes)")
    return finish(b, index, prev, timestamp, ts_text, tree)


def record_canonical(bytes data_c, unsigned long long index, bytes prev, timestamp, MerkleTree tree):
    """record() for data already in canonical form (the group committer's
    queue holds those) → (record bytes, raw hash)."""
    cdef Buf *b = &OUT
    ts_text = _number_text(timestamp)
    b.n = 0
    reserve(b, len(data_c) + 256)
    b.n = HEADER_LEN
    put(b, b'{"data":', 8)
    put(b, data_c, len(data_c))
    return finish(b, index, prev, timestamp, ts_text, tree)
