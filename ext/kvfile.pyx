# cython: language_level=3
"""Readers for the kernel's "key value" files, kept open: /proc/meminfo,
/proc/vmstat, a cgroup's memory.stat / memory.events / memory.oom_control,
and single-value files (memory.max, memory.current, limit_in_bytes).

Why Cython: the sensing loop reads meminfo 10 times a second or faster
(earlyoom-style, faster as headroom shrinks).  A read is one pread() into a
buffer and one pass over it in C; no Python object is created until the
handful of wanted values is returned.  The grammar, and a pure-Python
reference, is in aal_core.sources._ref (parse_keyed, parse_value);
tests/test_sense_diff.py checks both agree.  The cdef API is in
ext/aal_core/kvfile.pxd.
"""
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memcmp, memcpy, memset
from cpython.long cimport PyLong_FromUnsignedLongLong
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM, PyTuple_GET_ITEM
from libc.errno cimport errno
from posix.fcntl cimport open as c_open, O_RDONLY, O_CLOEXEC
from posix.unistd cimport close as c_close

from scan cimport is_ws, parse_u64, pread_whole

import os
from sys import intern as _intern


cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    /* 0x80 in bit 8k+7 for each byte k of b[0:8] that is a newline, 0 elsewhere.
       Little-endian (x86_64, aarch64): one load and the exact zero-byte test
       on w ^ 0x0a..0a (no false marks, unlike the borrow-based one); other
       byte orders: the same mask byte by byte. */
    #if defined(__SSE2__)
    #include <emmintrin.h>
    #endif
    /* Bit k set for each byte k of b[0:16] that is a newline.  x86_64: SSE2
       (always there), one compare of 16 bytes.  Elsewhere: per 8 bytes the
       exact zero-byte test on w ^ 0x0a..0a (no false marks, unlike the
       borrow-based one) when little-endian (aarch64), byte by byte otherwise,
       the 0x80 marks packed into 8 bits by one multiply. */
    static inline uint64_t aal_nl8(const char *b) {
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        uint64_t w, x, y;
        memcpy(&w, b, 8);
        x = w ^ 0x0a0a0a0a0a0a0a0aULL;
        y = (x & 0x7f7f7f7f7f7f7f7fULL) + 0x7f7f7f7f7f7f7f7fULL;
        y = ~(y | x | 0x7f7f7f7f7f7f7f7fULL);
        return ((y >> 7) * 0x0102040810204080ULL) >> 56;
    #else
        uint64_t m = 0;
        int k;
        for (k = 0; k < 8; k++)
            if (b[k] == 10)
                m |= 1ULL << k;
        return m;
    #endif
    }
    static inline unsigned int aal_nl_mask16(const char *b) {
    #if defined(__SSE2__)
        __m128i v = _mm_loadu_si128((const __m128i *)b);
        return (unsigned int)_mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8(10)));
    #else
        return (unsigned int)(aal_nl8(b) | (aal_nl8(b + 8) << 8));
    #endif
    }
    static inline uint64_t aal_load8(const char *b) {
        uint64_t w;
        memcpy(&w, b, 8);
        return w;
    }
    static inline int aal_ctz64(uint64_t m) {
    #if defined(__GNUC__)
        return __builtin_ctzll(m);
    #else
        int k = 0;
        while (!(m & 1)) { m >>= 1; k++; }
        return k;
    #endif
    }
    """
    unsigned int aal_nl_mask16(const char* b) noexcept nogil
    unsigned long long aal_load8(const char* b) noexcept nogil
    int aal_ctz64(unsigned long long m) noexcept nogil


cdef inline bint is_sep(char c) noexcept nogil:
    """What ends a key and comes before its value: ':' space tab."""
    return c == 58 or c == 32 or c == 9


cdef inline bint key_at(const char* b, Py_ssize_t n, Py_ssize_t i, const KeyCand* kc) noexcept nogil:
    """The candidate's key bytes at b[i:] (the first eight as one masked compare)."""
    if i + 8 <= n:
        if (aal_load8(b + i) & kc.mask8) != kc.head8:
            return False
        return kc.length <= 8 or memcmp(b + i + 8, kc.ptr + 8, kc.length - 8) == 0
    return memcmp(b + i, kc.ptr, kc.length) == 0


cdef bint try_line(const char* b, Py_ssize_t n, Py_ssize_t i, KeyTable* t, int c,
                   Py_ssize_t* found) noexcept nogil:
    """The line starting at i, whose first byte starts the candidates chained
    from c: its value when its key is a wanted one not yet seen.  True once
    every key that can match has been found."""
    cdef const KeyCand* kc
    cdef Py_ssize_t L, j, e
    cdef unsigned long long v
    while c >= 0:
        kc = &t.cands[c]
        L = kc.length
        if i + L < n and is_sep(b[i + L]) and key_at(b, n, i, kc):
            if t.seen[kc.k]:
                return False
            j = i + L + 1
            while j < n and is_sep(b[j]):
                j += 1
            e = parse_u64(b, j, n, &v)
            if e >= 0 and (e == n or b[e] == 10 or b[e] == 32 or b[e] == 9):
                t.vals[kc.k] = v
                t.seen[kc.k] = 1
                found[0] += 1
                return found[0] == t.nmatch
            return False
        c = kc.next
    return False


cdef Py_ssize_t parse_keyed_c(const char* b, Py_ssize_t n, KeyTable* t) noexcept nogil:
    """One pass over b[0:n]; fills t.vals/t.seen for the keys found; returns how many.

    Line starts are found sixteen bytes a step (a mask of the newlines
    in them, walked bit by bit), so the lines are independent of each
    other and the CPU overlaps them; a line is looked at only when its
    first byte starts a wanted key (t.first), and a candidate matches when
    its bytes are there and a separator follows: the reference's "key up to
    the first ':' space tab".  Keys are distinct in the table, so at most
    one candidate can match a line."""
    cdef Py_ssize_t i = 0, p, found = 0
    cdef unsigned long long m
    cdef int c
    memset(t.seen, 0, t.n)
    if t.nmatch == 0 or n == 0:
        return 0
    c = t.first[<unsigned char>b[0]]
    if c >= 0 and try_line(b, n, 0, t, c, &found):
        return found
    while i + 16 <= n:
        m = aal_nl_mask16(b + i)
        while m:
            p = i + aal_ctz64(m) + 1
            m &= m - 1
            if p < n:
                c = t.first[<unsigned char>b[p]]
                if c >= 0 and try_line(b, n, p, t, c, &found):
                    return found
        i += 16
    while i < n:
        if b[i] == 10 and i + 1 < n:
            c = t.first[<unsigned char>b[i + 1]]
            if c >= 0 and try_line(b, n, i + 1, t, c, &found):
                return found
        i += 1
    return found


cdef class _Keys:
    """Wanted keys as a C table (the bytes objects are kept alive here).

    Like the reference (a dict from key to position), a key given twice is
    looked up at its last position and the earlier ones stay None, and a key
    holding a separator or a newline never matches.  The last result is kept:
    a value that did not change is returned as the same int object, and a
    sample where nothing changed as the same tuple (meminfo's totals, and
    most of vmstat, do not move between samples)."""

    def __cinit__(self, keys):
        cdef Py_ssize_t k, m, n
        cdef bytes kb
        cdef int c, prev
        cdef KeyCand* kc
        self.keys = tuple([bytes(x) for x in keys])
        self.last = None
        n = len(self.keys)
        self.t.n = n
        self.t.nmatch = 0
        self.t.vals = <unsigned long long*>calloc(n + 1, sizeof(unsigned long long))
        self.t.seen = <char*>calloc(n + 1, 1)
        self.t.cands = <KeyCand*>calloc(n + 1, sizeof(KeyCand))
        self.last_vals = <unsigned long long*>calloc(n + 1, sizeof(unsigned long long))
        self.last_seen = <char*>calloc(n + 1, 1)
        if not (self.t.vals and self.t.seen and self.t.cands and self.last_vals and self.last_seen):
            raise MemoryError()
        for c in range(256):
            self.t.first[c] = -1
        index = {}
        for k in range(n):
            kb = self.keys[k]
            if not kb:
                raise ValueError("empty key")
            index[kb] = k                     # the last position of a repeated key
        # candidates per first byte, in key order (a chain through .next)
        for k in range(n):
            kb = self.keys[k]
            if index[kb] != k or b":" in kb or b" " in kb or b"\t" in kb or b"\n" in kb:
                continue
            m = self.t.nmatch
            kc = &self.t.cands[m]
            kc.k = <int>k
            kc.next = -1
            kc.ptr = kb
            kc.length = len(kb)
            head = kb[:8].ljust(8, b"\0")      # its first eight bytes, and which of them count
            memcpy(&kc.head8, <const char*>head, 8)
            msk = (b"\xff" * min(8, len(kb))).ljust(8, b"\0")
            memcpy(&kc.mask8, <const char*>msk, 8)
            c = <unsigned char>kb[0]
            if self.t.first[c] < 0:
                self.t.first[c] = <int>m
            else:
                prev = self.t.first[c]
                while self.t.cands[prev].next >= 0:
                    prev = self.t.cands[prev].next
                self.t.cands[prev].next = <int>m
            self.t.nmatch += 1

    def __dealloc__(self):
        free(self.t.vals)
        free(self.t.seen)
        free(self.t.cands)
        free(self.last_vals)
        free(self.last_seen)

    cdef tuple result(self):
        """The values as a tuple, None where absent; unchanged ones reused."""
        cdef Py_ssize_t k, n = self.t.n
        cdef tuple last = self.last
        cdef bint same = last is not None
        cdef object o
        cdef tuple out
        if same:
            for k in range(n):
                if self.t.seen[k] != self.last_seen[k] or (self.t.seen[k] and self.t.vals[k] != self.last_vals[k]):
                    same = False
                    break
            if same:
                return last
        out = PyTuple_New(n)
        for k in range(n):
            if not self.t.seen[k]:
                o = None
            elif last is not None and self.last_seen[k] and self.t.vals[k] == self.last_vals[k]:
                o = <object>PyTuple_GET_ITEM(last, k)
            else:
                o = PyLong_FromUnsignedLongLong(self.t.vals[k])
            Py_INCREF(o)
            PyTuple_SET_ITEM(out, k, o)
        memcpy(self.last_vals, self.t.vals, n * sizeof(unsigned long long))
        memcpy(self.last_seen, self.t.seen, n)
        self.last = out
        return out


# parse_keyed(data, keys) called again with the same tuple of keys reuses its
# table (a tuple of bytes cannot change; holding it keeps its identity ours).
cdef object _last_keys = None
cdef _Keys _last_table = None


def parse_keyed(const unsigned char[:] data, keys):
    """Values of `keys` (bytes) in `data`, None where absent (see _ref.parse_keyed)."""
    global _last_keys, _last_table
    cdef _Keys ks
    cdef Py_ssize_t n = data.shape[0]
    if keys is _last_keys:
        ks = _last_table
    else:
        ks = _Keys(keys)
        if type(keys) is tuple and all([type(x) is bytes for x in keys]):
            _last_keys, _last_table = keys, ks
    if n:
        parse_keyed_c(<const char*>&data[0], n, &ks.t)
    else:
        memset(ks.t.seen, 0, ks.t.n)
    return ks.result()


cdef long long parse_value_c(const char* b, Py_ssize_t n, bint* ok) noexcept nogil:
    cdef Py_ssize_t i = 0, e
    cdef unsigned long long v
    ok[0] = False
    while n > 0 and is_ws(b[n - 1]):
        n -= 1
    while i < n and is_ws(b[i]):
        i += 1
    if n - i == 3 and b[i] == 109 and b[i + 1] == 97 and b[i + 2] == 120:  # "max"
        ok[0] = True
        return -1
    e = parse_u64(b, i, n, &v)
    if e < 0 or e != n or v > 9223372036854775807ULL:
        return 0
    ok[0] = True
    return <long long>v


def parse_value(const unsigned char[:] data):
    """A single-value file: its integer, -1 for "max", None when malformed.
    (Values above 2**63-1 are treated as malformed: no such limit exists.)"""
    cdef bint ok = False
    cdef long long v
    if data.shape[0] == 0:
        return None
    v = parse_value_c(<const char*>&data[0], data.shape[0], &ok)
    return v if ok else None


cdef class _OpenFile:
    """A file kept open; read_all() re-reads it from offset 0."""

    def __cinit__(self, path, *args, **kwargs):
        self.path = os.fsdecode(path)
        self.fd = -1
        self.cap = 4096          # grows on the first read if the file is bigger
        self.buf = <char*>malloc(self.cap)
        if self.buf == NULL:
            raise MemoryError()
        bpath = os.fsencode(path)
        self.fd = c_open(bpath, O_RDONLY | O_CLOEXEC)
        if self.fd < 0:
            e = errno
            raise OSError(e, os.strerror(e), self.path)

    def __dealloc__(self):
        if self.fd >= 0:
            c_close(self.fd)
        free(self.buf)

    cdef Py_ssize_t read_all(self) except -1:
        cdef Py_ssize_t n
        if self.fd < 0:
            raise ValueError(f"{self.path}: reader is closed")
        with nogil:
            n = pread_whole(self.fd, &self.buf, &self.cap)
        if n < 0:
            e = errno
            raise OSError(e, os.strerror(e), self.path)
        return n

    def raw(self):
        """The file's current bytes (for tests and the benchmark floor)."""
        cdef Py_ssize_t n = self.read_all()
        return self.buf[:n]

    def close(self):
        if self.fd >= 0:
            c_close(self.fd)
            self.fd = -1

    def fileno(self):
        return self.fd


cdef class KeyedFile(_OpenFile):
    """A "key value" file kept open; read() → the values of `keys` in order
    (None where absent).  Raises OSError naming the path when the read fails."""

    def __init__(self, path, keys):
        self._keys = _Keys(keys)

    @property
    def keys(self):
        return self._keys.keys

    cpdef tuple read(self):
        cdef _Keys ks = self._keys
        cdef Py_ssize_t n
        if self.fd < 0:
            raise ValueError(f"{self.path}: reader is closed")
        with nogil:                     # one GIL release for the read and the parse
            n = pread_whole(self.fd, &self.buf, &self.cap)
            if n >= 0:
                parse_keyed_c(self.buf, n, &ks.t)
        if n < 0:
            e = errno
            raise OSError(e, os.strerror(e), self.path)
        return ks.result()


cdef class ValueFile(_OpenFile):
    """A single-value file kept open; read() → int, -1 for "max", None when malformed."""

    def __init__(self, path):
        pass

    cpdef object read(self):
        cdef Py_ssize_t n = self.read_all()
        cdef bint ok = False
        cdef long long v = parse_value_c(self.buf, n, &ok)
        return v if ok else None


cdef extern from *:
    """
    /* object.__new__(cls) without the call: the base type's tp_new, which a
       dataclass without __new__ inherits. */
    static PyObject *aal_object_new(PyObject *cls) {
        static PyObject *empty = NULL;
        if (empty == NULL && (empty = PyTuple_New(0)) == NULL)
            return NULL;
        return PyBaseObject_Type.tp_new((PyTypeObject *)cls, empty, NULL);
    }
    """
    object aal_object_new(object cls)
    int PyObject_GenericSetAttr(object o, object name, object value) except -1

# Meminfo's fields in the order MeminfoFile fills them, with the KEYS
# position each comes from (-1: computed).  Keep in step with
# aal_core.sources.meminfo.KEYS and Meminfo.
_MI_FIELDS = ("total", "available", "free", "buffers", "cached", "swap_total", "swap_free", "shmem",
              "available_estimated", "nvmap_used", "nvmap_free", "cma_total", "cma_free")
_MI_KEYS = (b"MemTotal", b"MemFree", b"MemAvailable", b"Buffers", b"Cached", b"SwapTotal", b"SwapFree",
            b"Shmem", b"NvMapMemUsed", b"NvMapMemFree", b"CmaTotal", b"CmaFree")
# a kB value below this is a byte count that fits comfortably in 63 bits
cdef unsigned long long MI_SMALL = (<unsigned long long>1) << 50
cdef enum:
    MI_NF = 13


cdef class MeminfoFile(KeyedFile):
    """/proc/meminfo kept open; sample() → the frozen Meminfo dataclass, built
    here from the parsed C values (bytes, MemAvailable estimated where the
    kernel lacks it) without the tuple and the Python arithmetic of
    sources.meminfo.from_values, which stays the reference: anything unusual
    (MemTotal or MemFree missing, MemTotal 0, a value of 2**50 kB or more)
    is handed to it, so its errors and values are the ones raised and
    returned.  The object is the dataclass' own (created by object.__new__,
    fields set with the generic setattr its frozen __setattr__ refuses, as
    its __init__ does); an unchanged field keeps its int object, an
    unchanged sample is the same (immutable) object."""

    def __init__(self, path, keys, cls, fallback):
        if tuple(keys) != _MI_KEYS:
            raise ValueError("MeminfoFile reads the KEYS of aal_core.sources.meminfo, in order")
        self._keys = _Keys(keys)
        self.cls = cls
        self.fallback = fallback
        self.names = tuple([_intern(f) for f in _MI_FIELDS])
        self.last = None
        memset(self.last_u, 0, sizeof(self.last_u))
        memset(self.last_has, 0, sizeof(self.last_has))
        self.last_objs = [None] * MI_NF

    cpdef object sample(self):
        cdef _Keys ks = self._keys
        cdef KeyTable* t = &ks.t
        cdef Py_ssize_t n, k
        cdef unsigned long long u[MI_NF]
        cdef char has[MI_NF]
        cdef unsigned long long total, free_, avail, est_sum, shm
        cdef char* seen = t.seen
        cdef unsigned long long* v = t.vals
        cdef bint same
        cdef list objs
        cdef object m, o
        if self.fd < 0:
            raise ValueError(f"{self.path}: reader is closed")
        with nogil:                     # one GIL release for the read and the parse
            n = pread_whole(self.fd, &self.buf, &self.cap)
            if n >= 0:
                parse_keyed_c(self.buf, n, t)
        if n < 0:
            e = errno
            raise OSError(e, os.strerror(e), self.path)
        if not (seen[0] and seen[1]) or v[0] == 0:
            return self.fallback(ks.result(), self.path)
        for k in range(12):
            if seen[k] and v[k] >= MI_SMALL:
                return self.fallback(ks.result(), self.path)
        total, free_ = v[0], v[1]
        # fields in _MI_FIELDS order: 0 total, 1 available, 2 free, 3-7 buffers..shmem,
        # 8 available_estimated (0/1), 9-12 the Jetson pools (None when absent)
        if seen[2]:
            avail = v[2]
            u[8] = 0
        else:
            est_sum = free_ + (v[4] if seen[4] else 0) + (v[3] if seen[3] else 0)
            shm = v[7] if seen[7] else 0
            avail = est_sum - shm if est_sum > shm else 0
            u[8] = 1
        has[8] = 1
        u[0], has[0] = total * 1024, 1
        u[1], has[1] = (avail if avail < total else total) * 1024, 1
        u[2], has[2] = free_ * 1024, 1
        for k in range(3, 8):            # buffers cached swap_total swap_free shmem: 0 when absent
            u[k] = v[k] * 1024 if seen[k] else 0
            has[k] = 1
        for k in range(9, 13):           # NvMapMemUsed NvMapMemFree CmaTotal CmaFree: KEYS 8-11
            has[k] = seen[k - 1]
            u[k] = v[k - 1] * 1024 if has[k] else 0
        same = self.last is not None
        if same:
            for k in range(MI_NF):
                if has[k] != self.last_has[k] or u[k] != self.last_u[k]:
                    same = False
                    break
            if same:
                return self.last
        objs = self.last_objs
        m = aal_object_new(self.cls)
        for k in range(MI_NF):
            if self.last is not None and has[k] == self.last_has[k] and u[k] == self.last_u[k]:
                o = objs[k]
            elif not has[k]:
                o = None
            elif k == 8:
                o = u[k] != 0
            else:
                o = PyLong_FromUnsignedLongLong(u[k])
            objs[k] = o
            PyObject_GenericSetAttr(m, self.names[k], o)
        memcpy(self.last_u, u, sizeof(u))
        memcpy(self.last_has, has, sizeof(has))
        self.last = m
        return m
