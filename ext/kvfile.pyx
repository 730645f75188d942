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
from libc.string cimport memcmp
from libc.errno cimport errno
from posix.fcntl cimport open as c_open, O_RDONLY, O_CLOEXEC
from posix.unistd cimport close as c_close

from scan cimport is_ws, parse_u64, pread_whole

import os


cdef Py_ssize_t parse_keyed_c(const char* b, Py_ssize_t n, const char** kptr, Py_ssize_t* klen,
                              Py_ssize_t nkeys, unsigned long long* vals, char* seen) noexcept nogil:
    """One pass over b[0:n]; fills vals/seen for the keys found; returns how many."""
    cdef Py_ssize_t i = 0, ls, ke, j, e, k, t, hint = 0, found = 0
    cdef unsigned long long v
    cdef char c
    for k in range(nkeys):
        seen[k] = 0
    while i < n and found < nkeys:
        ls = i
        # key: up to the first ':' ' ' '\t' (or the end of the line)
        while i < n and b[i] != 10 and b[i] != 58 and b[i] != 32 and b[i] != 9:
            i += 1
        ke = i
        if i < n and b[i] != 10:
            k = -1
            # keys usually come in the same order as last time: start at the hint
            for t in range(nkeys):
                j = hint + t
                if j >= nkeys:
                    j -= nkeys
                if not seen[j] and klen[j] == ke - ls and memcmp(b + ls, kptr[j], ke - ls) == 0:
                    k = j
                    break
            if k >= 0:
                while i < n and (b[i] == 58 or b[i] == 32 or b[i] == 9):
                    i += 1
                e = parse_u64(b, i, n, &v)
                if e >= 0 and (e == n or b[e] == 10 or b[e] == 32 or b[e] == 9):
                    vals[k] = v
                    seen[k] = 1
                    found += 1
                    hint = k + 1
        while i < n and b[i] != 10:
            i += 1
        i += 1
    return found


cdef class _Keys:
    """Wanted keys as C pointers (the bytes objects are kept alive here)."""

    def __cinit__(self, keys):
        cdef Py_ssize_t k
        cdef bytes kb
        self.keys = tuple(bytes(x) for x in keys)
        self.n = len(self.keys)
        self.ptr = <const char**>calloc(self.n + 1, sizeof(char*))
        self.length = <Py_ssize_t*>calloc(self.n + 1, sizeof(Py_ssize_t))
        self.vals = <unsigned long long*>calloc(self.n + 1, sizeof(unsigned long long))
        self.seen = <char*>calloc(self.n + 1, 1)
        if not (self.ptr and self.length and self.vals and self.seen):
            raise MemoryError()
        for k in range(self.n):
            kb = self.keys[k]
            if not kb:
                raise ValueError("empty key")
            self.ptr[k] = kb
            self.length[k] = len(kb)

    def __dealloc__(self):
        free(self.ptr)
        free(self.length)
        free(self.vals)
        free(self.seen)

    cdef tuple result(self):
        cdef Py_ssize_t k
        return tuple([self.vals[k] if self.seen[k] else None for k in range(self.n)])


def parse_keyed(const unsigned char[:] data, keys):
    """Values of `keys` (bytes) in `data`, None where absent (see _ref.parse_keyed)."""
    cdef _Keys ks = _Keys(keys)
    cdef Py_ssize_t n = data.shape[0]
    if n:
        parse_keyed_c(<const char*>&data[0], n, ks.ptr, ks.length, ks.n, ks.vals, ks.seen)
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
        cdef Py_ssize_t n = self.read_all()
        cdef _Keys ks = self._keys
        with nogil:
            parse_keyed_c(self.buf, n, ks.ptr, ks.length, ks.n, ks.vals, ks.seen)
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
