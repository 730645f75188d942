# Lexing helpers shared by the text parsers (kvfile, psi, tegrastats), and
# the kept-open-fd reader.  All inline, nogil, no Python objects: the hot
# loops call these on a char buffer.  The grammar they implement is written
# out in daemon/sources/_ref.py, the pure-Python reference.
from libc.stdlib cimport strtod, realloc
from libc.string cimport memcpy
from libc.errno cimport errno, EINTR
from posix.unistd cimport pread

cdef extern from *:
    """
    #define AAL_U64_MAX 18446744073709551615ULL
    """
    unsigned long long AAL_U64_MAX


cdef inline bint is_ws(char c) noexcept nogil:
    # space, or \t \n \v \f \r (9..13); one compare for the usual byte above ' '
    return c <= 32 and (c == 32 or 9 <= c <= 13)


cdef inline bint is_digit(char c) noexcept nogil:
    return 48 <= c <= 57


cdef inline bint is_upper(char c) noexcept nogil:
    return 65 <= c <= 90


cdef inline bint is_alpha(char c) noexcept nogil:
    return 65 <= c <= 90 or 97 <= c <= 122


cdef inline Py_ssize_t scan_digits(const char* b, Py_ssize_t i, Py_ssize_t n, int maxd) noexcept nogil:
    """End of the digit run at i, or -1 when empty or longer than maxd."""
    cdef Py_ssize_t j = i
    while j < n and is_digit(b[j]):
        j += 1
    if j == i or j - i > maxd:
        return -1
    return j


cdef inline Py_ssize_t parse_u64(const char* b, Py_ssize_t i, Py_ssize_t n,
                                 unsigned long long* out) noexcept nogil:
    """1..20 digits whose value fits in 64 bits → end, or -1."""
    cdef Py_ssize_t j = scan_digits(b, i, n, 20)
    cdef unsigned long long v = 0, d
    if j < 0:
        return -1
    if j - i < 20:                  # at most 10**19 - 1: cannot overflow
        while i < j:
            v = v * 10 + <unsigned long long>(b[i] - 48)
            i += 1
        out[0] = v
        return j
    while i < j:
        d = <unsigned long long>(b[i] - 48)
        if v > (AAL_U64_MAX - d) // 10:
            return -1
        v = v * 10 + d
        i += 1
    out[0] = v
    return j


cdef inline Py_ssize_t parse_int(const char* b, Py_ssize_t i, Py_ssize_t n, bint signed,
                                 long long* out) noexcept nogil:
    """1..15 digits, with an optional '-' when signed → end, or -1."""
    cdef bint neg = False
    cdef long long v = 0
    cdef Py_ssize_t j
    if signed and i < n and b[i] == 45:
        neg = True
        i += 1
    j = scan_digits(b, i, n, 15)
    if j < 0:
        return -1
    while i < j:
        v = v * 10 + (b[i] - 48)
        i += 1
    out[0] = -v if neg else v
    return j


cdef extern from *:
    """
    static const double AAL_P10[16] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9,
                                       1e10, 1e11, 1e12, 1e13, 1e14, 1e15};
    """
    const double AAL_P10[16]


cdef inline Py_ssize_t parse_dec(const char* b, Py_ssize_t i, Py_ssize_t n, bint signed,
                                 double* out) noexcept nogil:
    """-?D{1,15}(.D{1,15})? → end, or -1; the value is strtod's (correctly rounded).

    Up to 15 digits in all (every tegrastats temperature, every PSI average)
    the digits as an integer M < 10**15 and 10**F are both exact doubles, so
    M / 10**F is one correctly rounded IEEE division: strtod's value without
    strtod (Clinger's fast path).  Longer numbers go to strtod."""
    cdef Py_ssize_t s = i, j, k, q
    cdef unsigned long long m = 0
    cdef bint neg = False
    cdef double v
    cdef char tmp[48]
    if signed and i < n and b[i] == 45:
        neg = True
        i += 1
    j = scan_digits(b, i, n, 15)
    if j < 0:
        return -1
    k = j
    if j < n and b[j] == 46:
        q = scan_digits(b, j + 1, n, 15)
        if q >= 0:
            k = q
    if k == j or (j - i) + (k - j - 1) <= 15:
        for q in range(i, j):
            m = m * 10 + <unsigned long long>(b[q] - 48)
        v = <double>m
        if k > j:
            for q in range(j + 1, k):
                m = m * 10 + <unsigned long long>(b[q] - 48)
            v = <double>m / AAL_P10[k - j - 1]
        out[0] = -v if neg else v
        return k
    memcpy(tmp, b + s, k - s)
    tmp[k - s] = 0
    out[0] = strtod(tmp, NULL)
    return k


cdef inline Py_ssize_t pread_whole(int fd, char** buf, Py_ssize_t* cap) noexcept nogil:
    """Read a small kernel file from offset 0 into *buf (grown as needed, one
    spare byte kept for a NUL).  Returns its length, or -1 with errno set.

    One pread() returns the whole of a seq_file that fits; a read that fills
    the buffer means it may not have fitted, so the buffer doubles and the
    read is repeated."""
    cdef Py_ssize_t got
    cdef char* nb
    while True:
        got = pread(fd, buf[0], cap[0] - 1, 0)
        if got < 0:
            if errno == EINTR:
                continue
            return -1
        if got < cap[0] - 1:
            buf[0][got] = 0
            return got
        nb = <char*>realloc(buf[0], cap[0] * 2)
        if nb == NULL:
            return -1
        buf[0] = nb
        cap[0] = cap[0] * 2
