# cython: language_level=3
"""Reader for pressure-stall information: /proc/pressure/memory, or a cgroup
v2 memory.pressure, kept open.

Why Cython: read at the memory sampling rate next to meminfo; one pread and
one pass in C.  Grammar and pure-Python reference: aal_core.sources._ref
(parse_psi); tests/test_sense_diff.py checks both agree.
"""
from libc.string cimport memcmp

from scan cimport is_ws, parse_u64, parse_dec
from aal_core.kvfile cimport _OpenFile


cdef int parse_psi_into(const char* b, Py_ssize_t n, double* avg, unsigned long long* total,
                        char* seen) noexcept nogil:
    """avg[0..5]: some avg10/60/300, full avg10/60/300; total[0..1]: some, full.
    seen[0..7] in the order of the result tuple.  Returns the count found."""
    cdef Py_ssize_t i = 0, ts, te, eq, e, base, k, ls
    cdef int found = 0
    cdef double d = 0
    cdef unsigned long long u = 0
    for k in range(8):
        seen[k] = 0
    while i < n:
        # first token of the line
        while i < n and b[i] != 10 and is_ws(b[i]):
            i += 1
        ts = i
        while i < n and not is_ws(b[i]):
            i += 1
        te = i
        base = -1
        if te - ts == 4 and memcmp(b + ts, b"some", 4) == 0:
            base = 0
        elif te - ts == 4 and memcmp(b + ts, b"full", 4) == 0:
            base = 4
        while base >= 0:
            while i < n and b[i] != 10 and is_ws(b[i]):
                i += 1
            if i >= n or b[i] == 10:
                break
            ts = i
            eq = -1
            while i < n and not is_ws(b[i]):
                if eq < 0 and b[i] == 61:
                    eq = i
                i += 1
            te = i
            if eq < 0:
                continue
            k = -1
            if eq - ts == 5 and memcmp(b + ts, b"avg10", 5) == 0:
                k = 0
            elif eq - ts == 5 and memcmp(b + ts, b"avg60", 5) == 0:
                k = 1
            elif eq - ts == 6 and memcmp(b + ts, b"avg300", 6) == 0:
                k = 2
            elif eq - ts == 5 and memcmp(b + ts, b"total", 5) == 0:
                k = 3
            if k < 0 or seen[base + k]:
                continue
            if k == 3:
                e = parse_u64(b, eq + 1, te, &u)
                if e == te:
                    total[base // 4] = u
                    seen[base + k] = 1
                    found += 1
            else:
                e = parse_dec(b, eq + 1, te, False, &d)
                if e == te:
                    avg[(base // 4) * 3 + k] = d
                    seen[base + k] = 1
                    found += 1
        # skip to the next line
        while i < n and b[i] != 10:
            i += 1
        i += 1
    return found


cdef tuple _result(double* avg, unsigned long long* total, char* seen):
    return (avg[0] if seen[0] else None, avg[1] if seen[1] else None, avg[2] if seen[2] else None,
            total[0] if seen[3] else None,
            avg[3] if seen[4] else None, avg[4] if seen[5] else None, avg[5] if seen[6] else None,
            total[1] if seen[7] else None)


def parse_psi(const unsigned char[:] data):
    """(some_avg10, some_avg60, some_avg300, some_total, full_avg10, ..., full_total),
    None where absent (see _ref.parse_psi)."""
    cdef double avg[6]
    cdef unsigned long long total[2]
    cdef char seen[8]
    cdef Py_ssize_t n = data.shape[0]
    if n == 0:
        return (None,) * 8
    parse_psi_into(<const char*>&data[0], n, avg, total, seen)
    return _result(avg, total, seen)


cdef class PsiFile(_OpenFile):
    """A PSI file kept open; read() → the 8-tuple of parse_psi."""

    def __init__(self, path):
        pass

    cpdef tuple read(self):
        cdef double avg[6]
        cdef unsigned long long total[2]
        cdef char seen[8]
        cdef Py_ssize_t n = self.read_all()
        with nogil:
            parse_psi_into(self.buf, n, avg, total, seen)
        return _result(avg, total, seen)
