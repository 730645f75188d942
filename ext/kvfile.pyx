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


cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    /* The next newline in b[i:n] (its index), or -1.  Eight bytes a step: the
       classic zero-byte test on w ^ 0x0a..0a marks the first newline exactly
       (a borrow only ever marks bytes above a true match); little-endian
       only (x86_64, aarch64), elsewhere memchr. */
    static inline Py_ssize_t aal_find_nl(const char *b, Py_ssize_t i, Py_ssize_t n) {
    #if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        while (i + 8 <= n) {
            uint64_t w, x;
            memcpy(&w, b + i, 8);
            x = w ^ 0x0a0a0a0a0a0a0a0aULL;
            x = (x - 0x0101010101010101ULL) & ~x & 0x8080808080808080ULL;
            if (x)
                return i + (__builtin_ctzll(x) >> 3);
            i += 8;
        }
        for (; i < n; i++)
            if (b[i] == 10)
                return i;
        return -1;
    #else
        const char *p = memchr(b + i, 10, (size_t)(n - i));
        return p ? (Py_ssize_t)(p - b) : -1;
    #endif
    }
    """
    Py_ssize_t aal_find_nl(const char* b, Py_ssize_t i, Py_ssize_t n) noexcept nogil


cdef inline bint is_sep(char c) noexcept nogil:
    """What ends a key and comes before its value: ':' space tab."""
    return c == 58 or c == 32 or c == 9


cdef Py_ssize_t parse_keyed_c(const char* b, Py_ssize_t n, KeyTable* t) noexcept nogil:
    """One pass over b[0:n]; fills t.vals/t.seen for the keys found; returns how many.

    A line is looked at only when its first byte starts a wanted key
    (t.first); a candidate matches when its bytes are there and a separator
    follows, which is the reference's "key up to the first ':' space tab".
    Keys are distinct in the table, so at most one candidate can match a
    line; the rest of the line is skipped eight bytes a step (aal_find_nl)."""
    cdef Py_ssize_t i = 0, j, e, L, found = 0
    cdef int c, k
    cdef unsigned long long v
    memset(t.seen, 0, t.n)
    if t.nmatch == 0:
        return 0
    while i < n:
        c = t.first[<unsigned char>b[i]]
        while c >= 0:
            k = t.cand[c]
            L = t.length[k]
            if i + L < n and is_sep(b[i + L]) and memcmp(b + i, t.ptr[k], L) == 0:
                if not t.seen[k]:
                    j = i + L + 1
                    while j < n and is_sep(b[j]):
                        j += 1
                    e = parse_u64(b, j, n, &v)
                    if e >= 0 and (e == n or b[e] == 10 or b[e] == 32 or b[e] == 9):
                        t.vals[k] = v
                        t.seen[k] = 1
                        found += 1
                        if found == t.nmatch:
                            return found
                break
            c = t.next[c]
        j = aal_find_nl(b, i, n)
        if j < 0:
            break
        i = j + 1
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
        self.keys = tuple([bytes(x) for x in keys])
        self.last = None
        n = len(self.keys)
        self.t.n = n
        self.t.nmatch = 0
        self.t.ptr = <const char**>calloc(n + 1, sizeof(char*))
        self.t.length = <Py_ssize_t*>calloc(n + 1, sizeof(Py_ssize_t))
        self.t.vals = <unsigned long long*>calloc(n + 1, sizeof(unsigned long long))
        self.t.seen = <char*>calloc(n + 1, 1)
        self.t.cand = <int*>calloc(n + 1, sizeof(int))
        self.t.next = <int*>calloc(n + 1, sizeof(int))
        self.last_vals = <unsigned long long*>calloc(n + 1, sizeof(unsigned long long))
        self.last_seen = <char*>calloc(n + 1, 1)
        if not (self.t.ptr and self.t.length and self.t.vals and self.t.seen and self.t.cand
                and self.t.next and self.last_vals and self.last_seen):
            raise MemoryError()
        for c in range(256):
            self.t.first[c] = -1
        index = {}
        for k in range(n):
            kb = self.keys[k]
            if not kb:
                raise ValueError("empty key")
            self.t.ptr[k] = kb
            self.t.length[k] = len(kb)
            index[kb] = k                     # the last position of a repeated key
        # candidates per first byte, in key order (a chain through t.next)
        for k in range(n):
            kb = self.keys[k]
            if index[kb] != k or b":" in kb or b" " in kb or b"\t" in kb or b"\n" in kb:
                continue
            m = self.t.nmatch
            self.t.cand[m] = <int>k
            self.t.next[m] = -1
            c = <unsigned char>kb[0]
            if self.t.first[c] < 0:
                self.t.first[c] = <int>m
            else:
                prev = self.t.first[c]
                while self.t.next[prev] >= 0:
                    prev = self.t.next[prev]
                self.t.next[prev] = <int>m
            self.t.nmatch += 1

    def __dealloc__(self):
        free(self.t.ptr)
        free(self.t.length)
        free(self.t.vals)
        free(self.t.seen)
        free(self.t.cand)
        free(self.t.next)
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
