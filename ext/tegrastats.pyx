# cython: language_level=3
"""Parser for one line of `tegrastats` output, every format from JetPack 3
to 7.2 (see tests/fixtures/tegrastats/FIELDS.md).

Why Cython: the daemon parses every line tegrastats prints, for as long as it
runs; tokens are located and numbers scanned in C on the line's bytes, and
Python objects are made only for the values that go into the result, after
each field has been validated.  Fields are recognised by name, never by
position.  The grammar, and a pure-Python reference, is
aal_core.sources._ref.parse_tegrastats; tests/test_tegrastats_diff.py checks
that both agree on the recorded lines and on generated and mutated ones.
"""
from libc.string cimport memcmp, memcpy, strlen

from scan cimport is_ws, is_digit, is_upper, is_alpha, parse_int, parse_dec

from aal_core.errors import ParseError

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_New
from cpython.ref cimport PyObject, Py_INCREF

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #if defined(__SSE2__)
    #include <emmintrin.h>
    #endif
    /* Bit k set where b[k] (k < 16) is whitespace: space, or 9..13 (tab to carriage return),
       the set of scan.pxd's is_ws.  x86_64: three SSE2 compares (signed, so a
       byte >= 0x80 is never whitespace); elsewhere byte by byte, branch-free. */
    static inline unsigned int aal_ws16(const char *b) {
    #if defined(__SSE2__)
        __m128i v = _mm_loadu_si128((const __m128i *)b);
        __m128i r = _mm_and_si128(_mm_cmpgt_epi8(v, _mm_set1_epi8(8)), _mm_cmplt_epi8(v, _mm_set1_epi8(14)));
        return (unsigned int)_mm_movemask_epi8(_mm_or_si128(r, _mm_cmpeq_epi8(v, _mm_set1_epi8(32))));
    #else
        unsigned int m = 0;
        int k;
        for (k = 0; k < 16; k++) {
            signed char c = (signed char)b[k];
            m |= (unsigned int)(c == 32 || (c >= 9 && c <= 13)) << k;
        }
        return m;
    #endif
    }
    static inline int aal_ctz32(unsigned int m) {
    #if defined(__GNUC__)
        return __builtin_ctz(m);
    #else
        int k = 0;
        while (!(m & 1)) { m >>= 1; k++; }
        return k;
    #endif
    }
    /* The tokens (runs of non-whitespace) of b[0:n]: the first `cap` starts
       and ends into ts/te; returns how many there are in all.  Starts are the
       non-whitespace bytes after whitespace, ends the whitespace bytes after
       non-whitespace, from one mask per 16 bytes (the last block padded with
       spaces, never read past n). */
    static Py_ssize_t aal_tokens(const char *b, Py_ssize_t n, Py_ssize_t *ts, Py_ssize_t *te, Py_ssize_t cap) {
        Py_ssize_t i = 0, ns = 0, ne = 0;
        unsigned int prev = 1;          /* before b[0]: whitespace */
        char tmp[16];
        while (i < n) {
            unsigned int ws, wsp, starts, ends;
            if (n - i >= 16) {
                ws = aal_ws16(b + i);
            } else {
                memset(tmp, 32, 16);
                memcpy(tmp, b + i, (size_t)(n - i));
                ws = aal_ws16(tmp);
            }
            wsp = ((ws << 1) | prev) & 0xffffu;     /* bit k: byte k-1 is whitespace */
            starts = ~ws & wsp & 0xffffu;
            ends = ws & ~wsp & 0xffffu;
            prev = (ws >> 15) & 1u;
            while (starts) {
                if (ns < cap) ts[ns] = i + aal_ctz32(starts);
                ns++;
                starts &= starts - 1;
            }
            while (ends) {
                if (ne < cap) te[ne] = i + aal_ctz32(ends);
                ne++;
                ends &= ends - 1;
            }
            i += 16;
        }
        if (ne < ns) {                  /* a token that runs to the end */
            if (ne < cap) te[ne] = n;
            ne++;
        }
        return ns;
    }
    """
    Py_ssize_t aal_tokens(const char* b, Py_ssize_t n, Py_ssize_t* ts, Py_ssize_t* te, Py_ssize_t cap) noexcept nogil


cdef extern from "Python.h":
    object PyUnicode_DecodeASCII(const char *s, Py_ssize_t size, const char *errors)

cdef enum:
    MAX_TOKENS = 512
    NAME_BUF = 64


cdef inline str ascii_str(const char* b, Py_ssize_t s, Py_ssize_t e):
    """b[s:e].decode("ascii") without the intermediate bytes object."""
    return PyUnicode_DecodeASCII(b + s, e - s, NULL)


# Field names (rails, engines, thermal zones) repeat on every line: a small
# direct-mapped cache of their str objects, so a line does not decode and
# hash the same twenty names again (a name is the same str, equal either way).
cdef enum:
    NCACHE = 256
    NCACHE_LEN = 32
cdef char NC_BYTES[NCACHE][NCACHE_LEN]
cdef Py_ssize_t NC_LEN[NCACHE]
cdef list NC_STR = [None] * NCACHE


cdef str cached_name(const char* p, Py_ssize_t n):
    """p[0:n] (ASCII) as a str, from the cache when it was seen before."""
    cdef unsigned int h = <unsigned int>n * 2654435761u
    cdef Py_ssize_t i
    cdef str out
    if n == 0 or n > NCACHE_LEN:
        return PyUnicode_DecodeASCII(p, n, NULL)
    for i in range(n):
        h = (h ^ <unsigned char>p[i]) * 16777619u
    h = (h ^ (h >> 15)) % NCACHE
    if NC_LEN[h] == n and memcmp(NC_BYTES[h], p, n) == 0:
        return <str>NC_STR[h]
    out = PyUnicode_DecodeASCII(p, n, NULL)
    memcpy(NC_BYTES[h], p, n)
    NC_LEN[h] = n
    NC_STR[h] = out
    return out


# The numbers repeat too (MHz, mW, MB): ints below NINT are made once and
# shared by every line after (an int is immutable; equal either way), so a
# line allocates no int objects for them.
cdef enum:
    NINT = 4096
cdef PyObject* INTS[NINT]           # owned references, kept for the module's life


cdef inline object I(long long v):
    """v as a Python int, from the cache when 0 <= v < NINT."""
    cdef object o
    if 0 <= v < NINT:
        if INTS[v] != NULL:
            return <object>INTS[v]
        o = v
        Py_INCREF(o)
        INTS[v] = <PyObject*>o
        return o
    return v


cdef str ascii_lower(const char* b, Py_ssize_t s, Py_ssize_t e):
    """b[s:e].decode("ascii").lower(), lowering A-Z in C (the same for ASCII;
    a non-ASCII byte raises the same UnicodeDecodeError)."""
    cdef char tmp[NAME_BUF]
    cdef Py_ssize_t i, n = e - s
    cdef char c
    if n > NAME_BUF:
        return b[s:e].decode("ascii").lower()
    for i in range(n):
        c = b[s + i]
        tmp[i] = c + 32 if 65 <= c <= 90 else c
    return cached_name(tmp, n)


cdef inline bint teq(const char* b, Py_ssize_t s, Py_ssize_t e, const char* lit) noexcept nogil:
    cdef Py_ssize_t n = strlen(lit)
    return e - s == n and memcmp(b + s, lit, n) == 0


cdef inline bint tends(const char* b, Py_ssize_t s, Py_ssize_t e, const char* lit) noexcept nogil:
    cdef Py_ssize_t n = strlen(lit)
    return e - s >= n and memcmp(b + e - n, lit, n) == 0


cdef bint is_name(const char* b, Py_ssize_t s, Py_ssize_t e) noexcept nogil:
    """[A-Z][A-Z0-9_]*"""
    cdef Py_ssize_t i
    if e <= s or not is_upper(b[s]):
        return False
    for i in range(s, e):
        if not (is_upper(b[i]) or is_digit(b[i]) or b[i] == 95):
            return False
    return True


cdef bint is_date(const char* b, Py_ssize_t s, Py_ssize_t e) noexcept nogil:
    if e - s != 10 or b[s + 2] != 45 or b[s + 5] != 45:
        return False
    return (is_digit(b[s]) and is_digit(b[s + 1]) and is_digit(b[s + 3]) and is_digit(b[s + 4])
            and is_digit(b[s + 6]) and is_digit(b[s + 7]) and is_digit(b[s + 8]) and is_digit(b[s + 9]))


cdef bint is_time(const char* b, Py_ssize_t s, Py_ssize_t e) noexcept nogil:
    if e - s != 8 or b[s + 2] != 58 or b[s + 5] != 58:
        return False
    return (is_digit(b[s]) and is_digit(b[s + 1]) and is_digit(b[s + 3]) and is_digit(b[s + 4])
            and is_digit(b[s + 6]) and is_digit(b[s + 7]))


cdef bint pair(const char* b, Py_ssize_t s, Py_ssize_t e, const char* rest,
               long long* u, long long* t) noexcept nogil:
    """"U/T<rest>" exactly."""
    cdef Py_ssize_t j = parse_int(b, s, e, False, u)
    if j < 0 or j >= e or b[j] != 47:
        return False
    j = parse_int(b, j + 1, e, False, t)
    if j < 0:
        return False
    return teq(b, j, e, rest)


cdef bint lfb_size(const char* b, Py_ssize_t s, Py_ssize_t e, bint with_count,
                   long long* count, long long* kb) noexcept nogil:
    """"NxS<MB|kB>)" (with_count) or "S<MB|kB>)"."""
    cdef Py_ssize_t i = s, j
    cdef long long size
    if with_count:
        j = parse_int(b, i, e, False, count)
        if j < 0 or j >= e or b[j] != 120:
            return False
        i = j + 1
    j = parse_int(b, i, e, False, &size)
    if j < 0:
        return False
    if teq(b, j, e, b"MB)"):
        kb[0] = size * 1024
        return True
    if teq(b, j, e, b"kB)"):
        kb[0] = size
        return True
    return False


cdef bint pct_at(const char* b, Py_ssize_t i, Py_ssize_t n, bint allow_list,
                 bint* has_util, long long* util, Py_ssize_t* nfreq, long long* freq,
                 Py_ssize_t* list_at) noexcept nogil:
    """[N%][@F | @[F,..]] filling the whole span.  nfreq: 0 none, else how many;
    list_at >= 0 when they are a bracketed list starting there (re-read by freq_list)."""
    cdef Py_ssize_t j
    cdef long long v
    has_util[0] = False
    nfreq[0] = 0
    list_at[0] = -1
    if i < n and b[i] != 64:
        j = parse_int(b, i, n, False, util)
        if j < 0 or j >= n or b[j] != 37:
            return False
        has_util[0] = True
        i = j + 1
    if i < n:
        if b[i] != 64:
            return False
        i += 1
        if allow_list and i < n and b[i] == 91:
            i += 1
            list_at[0] = i
            while True:
                j = parse_int(b, i, n, False, &v)
                if j < 0:
                    return False
                nfreq[0] += 1
                i = j
                if i < n and b[i] == 44:
                    i += 1
                    continue
                break
            if i != n - 1 or b[i] != 93:
                return False
        else:
            j = parse_int(b, i, n, False, freq)
            if j < 0 or j != n:
                return False
            nfreq[0] = 1
    return has_util[0] or nfreq[0] > 0


cdef list freq_list(const char* b, Py_ssize_t i, Py_ssize_t n, Py_ssize_t nfreq):
    cdef list out = []
    cdef long long v
    cdef Py_ssize_t k
    for k in range(nfreq):
        i = parse_int(b, i, n, False, &v) + 1
        out.append(I(v))
    return out


cdef bint cpu_list(const char* b, Py_ssize_t s, Py_ssize_t n, bint legacy, list out) except -1:
    """"[item,...]" (CPU) or "[item,...]@F" (legacy cpu).  With out None only
    validates (no Python objects); with a list, appends the entries."""
    cdef Py_ssize_t close = -1, i, j, ie, idx = 0
    cdef long long shared = 0, util, freq
    cdef bint has_shared = False
    if n - s < 2 or b[s] != 91:
        return False
    for i in range(s, n):
        if b[i] == 93:
            close = i
            break
    if close < 0:
        return False
    if legacy:
        if close != n - 1:
            if b[close + 1] != 64:
                return False
            j = parse_int(b, close + 2, n, False, &shared)
            if j < 0 or j != n:
                return False
            has_shared = True
    elif close != n - 1:
        return False
    if close == s + 1:
        return True
    i = s + 1
    while True:
        ie = i
        while ie < close and b[ie] != 44:
            ie += 1
        if teq(b, i, ie, b"off"):
            if out is not None:
                out.append({"index": I(idx), "online": False})
        else:
            j = parse_int(b, i, ie, False, &util)
            if j < 0 or j >= ie or b[j] != 37:
                return False
            j += 1
            if j < ie:
                if legacy or b[j] != 64:
                    return False
                if parse_int(b, j + 1, ie, False, &freq) != ie:
                    return False
                if out is not None:
                    out.append({"index": I(idx), "online": True, "util_pct": I(util), "freq_mhz": I(freq)})
            elif out is not None:
                if has_shared:
                    out.append({"index": I(idx), "online": True, "util_pct": I(util), "freq_mhz": I(shared)})
                else:
                    out.append({"index": I(idx), "online": True, "util_pct": I(util)})
        idx += 1
        if ie >= close:
            break
        i = ie + 1
    return True


cdef bint rail(const char* b, Py_ssize_t i, Py_ssize_t n, long long* vals, int* nvals) noexcept nogil:
    """"C[mW]/A[mW][/P[mW]]" or a lone "CmW" (a bare number is an engine clock), signed."""
    cdef bint unit = False
    nvals[0] = 0
    while True:
        i = parse_int(b, i, n, True, &vals[nvals[0]])
        if i < 0:
            return False
        nvals[0] += 1
        unit = n - i >= 2 and b[i] == 109 and b[i + 1] == 87
        if unit:
            i += 2
        if i == n:
            break
        if b[i] != 47 or nvals[0] == 3:
            return False
        i += 1
    return nvals[0] >= 2 or unit


cdef object engine(const char* b, Py_ssize_t s, Py_ssize_t n):
    """off | N%@F | N% | @F | F → dict, or None."""
    cdef long long v, util, freq
    cdef bint has_util
    cdef Py_ssize_t nfreq, list_at
    if teq(b, s, n, b"off"):
        return {"online": False}
    if parse_int(b, s, n, False, &v) == n:
        return {"online": True, "freq_mhz": I(v)}
    if not pct_at(b, s, n, False, &has_util, &util, &nfreq, &freq, &list_at):
        return None
    e = {"online": True}
    if has_util:
        e["util_pct"] = I(util)
    if nfreq:
        e["freq_mhz"] = I(freq)
    return e


cdef bint temp(const char* b, Py_ssize_t s, Py_ssize_t n, Py_ssize_t* at, double* value) noexcept nogil:
    """name@T C[/T C]."""
    cdef Py_ssize_t i, j
    cdef double mx
    at[0] = -1
    for i in range(s, n):
        if b[i] == 64:
            at[0] = i
            break
    if at[0] <= s:
        return False
    if not is_alpha(b[s]):
        return False
    for i in range(s, at[0]):
        if not (is_alpha(b[i]) or is_digit(b[i]) or b[i] == 95):
            return False
    j = parse_dec(b, at[0] + 1, n, True, value)
    if j < 0 or j >= n or b[j] != 67:
        return False
    j += 1
    if j != n:
        if b[j] != 47:
            return False
        j = parse_dec(b, j + 1, n, True, &mx)
        if j < 0 or j != n - 1 or b[n - 1] != 67:
            return False
    return True


cdef inline str text(const char* b, Py_ssize_t s, Py_ssize_t e):
    return b[s:e].decode("utf-8", "replace")


def parse_tegrastats(line):
    """One tegrastats line (bytes, or any buffer of bytes; no newline needed)
    → the `tegrastats.latest` payload.  Raises ParseError when nothing in it
    is a tegrastats field."""
    cdef const unsigned char[:] view
    if type(line) is bytes:         # what the source reads: no buffer to acquire
        return _parse(PyBytes_AS_STRING(line), PyBytes_GET_SIZE(line))
    view = line
    if view.shape[0] == 0:
        return _parse(b"", 0)
    return _parse(<const char*>&view[0], view.shape[0])


cdef dict _parse(const char* b, Py_ssize_t n):
    cdef Py_ssize_t ts[MAX_TOKENS + 1]
    cdef Py_ssize_t te[MAX_TOKENS + 1]
    cdef Py_ssize_t nt = 0, i = 0, k, used, j, s, e, ns, ne, at, nfreq, list_at
    cdef long long u, t, c, kb, util, freq, a, bb
    cdef long long rv[3]
    cdef int nv
    cdef bint has_util, glued
    cdef double val
    cdef int known = 0

    # tokens: runs of non-whitespace, found 16 bytes a step
    nt = aal_tokens(b, n, ts, te, MAX_TOKENS)
    if nt > MAX_TOKENS:
        raise ParseError(f"tegrastats line has more than {MAX_TOKENS} tokens", line=1, column=1,
                         expected=f"<= {MAX_TOKENS} tokens", found=str(nt))
    if nt == 0:
        raise ParseError("empty tegrastats line", line=1, column=1, expected="a tegrastats field", found="")

    cdef dict out = PyDict_New()
    cdef list unknown = []
    cdef dict engines = PyDict_New()
    cdef dict temps = PyDict_New()
    cdef dict power = PyDict_New()
    k = 0
    if nt >= 2 and is_date(b, ts[0], te[0]) and is_time(b, ts[1], te[1]):
        if te[0] + 1 == ts[1] and b[te[0]] == 32:     # "date time" as printed: one string
            out["timestamp"] = ascii_str(b, ts[0], te[1])
        else:
            out["timestamp"] = ascii_str(b, ts[0], te[0]) + " " + ascii_str(b, ts[1], te[1])
        known += 1
        k = 2
    while k < nt:
        s = ts[k]
        e = te[k]
        used = 0
        if k + 1 < nt:
            ns = ts[k + 1]
            ne = te[k + 1]
            if teq(b, s, e, b"RAM") or teq(b, s, e, b"IRAM"):
                used = _mem(b, ts, te, nt, k, teq(b, s, e, b"RAM"), out)
            elif teq(b, s, e, b"SWAP"):
                if pair(b, ns, ne, b"MB", &u, &t):
                    swap = {"used_mb": I(u), "total_mb": I(t)}
                    out["swap"] = swap
                    used = 2
                    if k + 3 < nt and teq(b, ts[k + 2], te[k + 2], b"(cached"):
                        j = parse_int(b, ts[k + 3], te[k + 3], False, &c)
                        if j >= 0 and teq(b, j, te[k + 3], b"MB)"):
                            swap["cached_mb"] = I(c)
                            used = 4
            elif teq(b, s, e, b"CPU") or teq(b, s, e, b"cpu"):
                cpus = []               # one pass: kept only if the whole list is valid
                if cpu_list(b, ns, ne, b[s] == 99, cpus):
                    out["cpus"] = cpus
                    used = 2
            elif teq(b, s, e, b"EMC_FREQ") or teq(b, s, e, b"EMC"):
                if pct_at(b, ns, ne, False, &has_util, &util, &nfreq, &freq, &list_at):
                    emc = {}
                    if has_util:
                        emc["util_pct"] = I(util)
                    if nfreq:
                        emc["freq_mhz"] = I(freq)
                    out["emc"] = emc
                    used = 2
            elif teq(b, s, e, b"GR3D_FREQ") or teq(b, s, e, b"GR3D") or teq(b, s, e, b"GR3D2_FREQ"):
                if pct_at(b, ns, ne, True, &has_util, &util, &nfreq, &freq, &list_at):
                    gpu = out.get("gpu")
                    if gpu is None:
                        gpu = out["gpu"] = {}
                    if has_util:
                        gpu["util_pct"] = max(gpu.get("util_pct", I(util)), I(util))
                    if nfreq:
                        fl = gpu.get("freq_mhz")
                        if fl is None:
                            fl = gpu["freq_mhz"] = []
                        if list_at >= 0:
                            fl.extend(freq_list(b, list_at, ne, nfreq))
                        else:
                            fl.append(I(freq))
                    used = 2
            elif teq(b, s, e, b"MTS"):
                if k + 4 < nt and teq(b, ns, ne, b"fg") and teq(b, ts[k + 3], te[k + 3], b"bg"):
                    j = parse_int(b, ts[k + 2], te[k + 2], False, &a)
                    if j >= 0 and teq(b, j, te[k + 2], b"%"):
                        j = parse_int(b, ts[k + 4], te[k + 4], False, &bb)
                        if j >= 0 and teq(b, j, te[k + 4], b"%"):
                            out["mts"] = {"fg_pct": I(a), "bg_pct": I(bb)}
                            used = 5
            elif teq(b, s, e, b"EDP"):
                if k + 2 < nt and teq(b, ns, ne, b"limit"):
                    if parse_int(b, ts[k + 2], te[k + 2], False, &a) == te[k + 2]:
                        out["edp_limit_mhz"] = I(a)
                        used = 3
            if used == 0 and is_name(b, s, e):
                if rail(b, ns, ne, rv, &nv):
                    if not teq(b, s, e, b"NC"):
                        name = cached_name(b + s, e - s)
                        if name in power:
                            j = 2
                            while f"{name}_{j}" in power:
                                j += 1
                            name = f"{name}_{j}"
                        r = {"current": I(rv[0])}
                        if nv >= 2:
                            r["average"] = I(rv[1])
                        if nv == 3:
                            r["peak"] = I(rv[2])
                        power[name] = r
                    used = 2
                else:
                    eng = engine(b, ns, ne)
                    if eng is not None:
                        if e - s > 5 and tends(b, s, e, b"_FREQ"):
                            engines[cached_name(b + s, e - 5 - s)] = eng
                        else:
                            engines[cached_name(b + s, e - s)] = eng
                        used = 2
        if used == 0:
            if temp(b, s, e, &at, &val):
                if not (at - s == 4 and (b[s] | 32) == 112 and (b[s + 1] | 32) == 109
                        and (b[s + 2] | 32) == 105 and (b[s + 3] | 32) == 99) and val > -40.0:
                    temps[ascii_lower(b, s, at)] = val
                used = 1
        if used == 0:
            unknown.append(text(b, s, e))
            k += 1
        else:
            known += 1
            k += used
    if known == 0:
        raise ParseError("no tegrastats field in line", line=1, column=1 + ts[0],
                         expected="RAM, CPU, ... or name@temperature",
                         found=b[ts[0]:min(te[0], ts[0] + 40)].decode("utf-8", "replace"))
    if engines:
        out["engines"] = engines
    if temps:
        out["temps_c"] = temps
    if power:
        out["power_mw"] = power
    out["unknown"] = unknown
    return out


cdef Py_ssize_t _mem(const char* b, Py_ssize_t* ts, Py_ssize_t* te, Py_ssize_t nt, Py_ssize_t k,
                     bint ram, dict out) except -1:
    """RAM U/TMB [(lfb] NxS<MB|kB>) | IRAM U/TkB[(lfb] S<MB|kB>) → tokens used (0: not this form)."""
    cdef Py_ssize_t ns = ts[k + 1], ne = te[k + 1], j
    cdef bint glued = tends(b, ns, ne, b"(lfb")
    cdef long long u, t, count, kb
    cdef const char* unit = b"MB" if ram else b"kB"
    if glued:
        if not pair(b, ns, ne, b"MB(lfb" if ram else b"kB(lfb", &u, &t):
            return 0
    elif not pair(b, ns, ne, unit, &u, &t):
        return 0
    if ram:
        d = {"used_mb": I(u), "total_mb": I(t)}
        out["ram"] = d
    else:
        d = {"used_kb": I(u), "total_kb": I(t)}
        out["iram"] = d
    j = k + 2
    if not glued:
        if j < nt and teq(b, ts[j], te[j], b"(lfb"):
            j += 1
        else:
            return 2
    if j < nt and lfb_size(b, ts[j], te[j], ram, &count, &kb):
        if ram:
            d["lfb_blocks"] = I(count)
            d["lfb_block_kb"] = I(kb)
        else:
            d["lfb_kb"] = I(kb)
        return j + 1 - k
    return 2
