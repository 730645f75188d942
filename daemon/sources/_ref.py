"""Pure-Python references of the compiled parsers in ext/ (kvfile, psi, tegrastats).

They say, in plain Python, what the Cython code must compute: the same
grammar, the same limits, the same output.  Production code never imports
this module; the differential tests (tests/test_sense_diff.py) run both on
recorded and generated inputs and require identical results.

Shared lexical rules (mirrored in ext/includes/scan.pxd):
- whitespace is the ASCII set of bytes.split(): space \\t \\n \\r \\v \\f;
- an unsigned integer is 1..20 ASCII digits whose value fits in 64 bits
  (anything longer or larger does not match at all, it is never truncated);
- a small integer (percent, MHz, MB, mW) is 1..15 digits, optionally signed
  where a grammar says so (15 digits: x1024 still fits in 64 bits, so every
  value stays JSON-encodable);
- a decimal is an optional '-', 1..15 digits, and optionally '.' followed by
  1..15 digits; its value is the correctly rounded double (float()/strtod).
"""
from __future__ import annotations

from ..errors import ParseError

WS = b" \t\n\r\x0b\x0c"
U64_MAX = (1 << 64) - 1
MAX_TOKENS = 512


# --------------------------------------------------------------- lexing

def _digits(b: bytes, i: int, maxd: int) -> int:
    """End of the run of ASCII digits at i, or -1 when empty or longer than maxd."""
    j = i
    n = len(b)
    while j < n and 48 <= b[j] <= 57:
        j += 1
    if j == i or j - i > maxd:
        return -1
    return j


def _u64(b: bytes, i: int):
    j = _digits(b, i, 20)
    if j < 0:
        return None
    v = int(b[i:j])
    if v > U64_MAX:
        return None
    return v, j


def _int(b: bytes, i: int, signed: bool = False):
    """1..15 digits (with an optional '-' if signed) → (value, end) or None."""
    neg = False
    if signed and i < len(b) and b[i] == 45:
        neg = True
        i += 1
    j = _digits(b, i, 15)
    if j < 0:
        return None
    v = int(b[i:j])
    return (-v if neg else v), j


def _dec(b: bytes, i: int, signed: bool = True):
    """-?D{1,15}(.D{1,15})? → (float, end) or None."""
    s = i
    if signed and i < len(b) and b[i] == 45:
        i += 1
    j = _digits(b, i, 15)
    if j < 0:
        return None
    if j < len(b) and b[j] == 46:
        k = _digits(b, j + 1, 15)
        if k >= 0:
            j = k
    return float(b[s:j]), j


# --------------------------------------------------------------- key/value files

def parse_keyed(data: bytes, keys) -> tuple:
    """Values of `keys` in a "key[:] value [unit]" file (meminfo, vmstat,
    memory.stat, memory.events, oom_control); None where a key is absent.

    A line: key = bytes up to the first ':' space or tab; then any run of
    ':', space, tab; then an unsigned integer that ends the line or is
    followed by a space or tab.  Other lines are ignored; the first
    occurrence of a key wins."""
    out = [None] * len(keys)
    index = {k: n for n, k in enumerate(keys)}
    for line in data.split(b"\n"):
        j = 0
        n = len(line)
        while j < n and line[j] not in b": \t":
            j += 1
        if j == n:
            continue
        pos = index.get(line[:j])
        if pos is None or out[pos] is not None:
            continue
        while j < n and line[j] in b": \t":
            j += 1
        r = _u64(line, j)
        if r is None:
            continue
        v, e = r
        if e < n and line[e] not in b" \t":
            continue
        out[pos] = v
    return tuple(out)


def parse_value(data: bytes):
    """A single-value file (memory.max, memory.current, limit_in_bytes):
    optional whitespace, an unsigned integer or the word "max" (→ -1),
    optional whitespace.  Anything else, or a value above 2**63-1 (no such
    limit exists), → None."""
    s = data.strip(WS)
    if s == b"max":
        return -1
    r = _u64(s, 0)
    if r is None or r[1] != len(s) or r[0] > (1 << 63) - 1:
        return None
    return r[0]


# --------------------------------------------------------------- PSI

PSI_KEYS = (b"avg10", b"avg60", b"avg300", b"total")


def parse_psi(data: bytes) -> tuple:
    """/proc/pressure/memory or a cgroup's memory.pressure →
    (some_avg10, some_avg60, some_avg300, some_total,
     full_avg10, full_avg60, full_avg300, full_total), None where absent.

    A line whose first token is "some" or "full", then tokens key=value;
    avg* values are decimals, total is an unsigned integer; a value must fill
    its token.  First occurrence wins."""
    out = [None] * 8
    for line in data.split(b"\n"):
        toks = line.split()
        if not toks:
            continue
        if toks[0] == b"some":
            base = 0
        elif toks[0] == b"full":
            base = 4
        else:
            continue
        for t in toks[1:]:
            eq = t.find(b"=")
            if eq < 0:
                continue
            try:
                k = PSI_KEYS.index(t[:eq])
            except ValueError:
                continue
            if out[base + k] is not None:
                continue
            r = _u64(t, eq + 1) if k == 3 else _dec(t, eq + 1, signed=False)
            if r is not None and r[1] == len(t):
                out[base + k] = r[0]
    return tuple(out)


# --------------------------------------------------------------- tegrastats

def _is_name(t: bytes) -> bool:
    """[A-Z][A-Z0-9_]*"""
    if not t or not (65 <= t[0] <= 90):
        return False
    return all(65 <= c <= 90 or 48 <= c <= 57 or c == 95 for c in t)


def _is_date(t: bytes) -> bool:
    return (len(t) == 10 and t[2] == 45 and t[5] == 45
            and all(48 <= t[k] <= 57 for k in (0, 1, 3, 4, 6, 7, 8, 9)))


def _is_time(t: bytes) -> bool:
    return (len(t) == 8 and t[2] == 58 and t[5] == 58
            and all(48 <= t[k] <= 57 for k in (0, 1, 3, 4, 6, 7)))


def _pair(t: bytes, unit: bytes, tail: bytes = b""):
    """"U/T<unit><tail>" → (U, T) or None."""
    a = _int(t, 0)
    if a is None or a[1] >= len(t) or t[a[1]] != 47:
        return None
    b = _int(t, a[1] + 1)
    if b is None:
        return None
    if t[b[1]:] != unit + tail:
        return None
    return a[0], b[0]


def _lfb_size(t: bytes, with_count: bool):
    """"NxS<MB|kB>)" (with_count) or "S<MB|kB>)" → (count or None, size_kb) or None."""
    i = 0
    count = None
    if with_count:
        r = _int(t, 0)
        if r is None or r[1] >= len(t) or t[r[1]] != 120:  # 'x'
            return None
        count, i = r[0], r[1] + 1
    r = _int(t, i)
    if r is None:
        return None
    rest = t[r[1]:]
    if rest == b"MB)":
        return count, r[0] * 1024
    if rest == b"kB)":
        return count, r[0]
    return None


def _pct_at(t: bytes, i: int, allow_list: bool):
    """[N%][@F | @[F,..]] from i to the end of t → (util or None, freqs list or None)
    or None.  At least one part must be present."""
    util = None
    freqs = None
    n = len(t)
    if i < n and t[i] != 64:
        r = _int(t, i)
        if r is None or r[1] >= n or t[r[1]] != 37:  # '%'
            return None
        util, i = r[0], r[1] + 1
    if i < n:
        if t[i] != 64:
            return None
        i += 1
        if allow_list and i < n and t[i] == 91:  # '['
            i += 1
            freqs = []
            while True:
                r = _int(t, i)
                if r is None:
                    return None
                freqs.append(r[0])
                i = r[1]
                if i < n and t[i] == 44:
                    i += 1
                    continue
                break
            if i != n - 1 or t[i] != 93:
                return None
            i = n
        else:
            r = _int(t, i)
            if r is None or r[1] != n:
                return None
            freqs = [r[0]]
            i = n
    if util is None and freqs is None:
        return None
    return util, freqs


def _cpu_list(t: bytes, legacy: bool):
    """"[item,...]" (CPU) or "[item,...]@F" (legacy cpu) → list of dicts or None."""
    n = len(t)
    if n < 2 or t[0] != 91:
        return None
    close = t.find(b"]")
    if close < 0:
        return None
    shared = None
    if legacy:
        if close != n - 1:
            if t[close + 1] != 64:
                return None
            r = _int(t, close + 2)
            if r is None or r[1] != n:
                return None
            shared = r[0]
    elif close != n - 1:
        return None
    body = t[1:close]
    cpus = []
    if not body:
        return cpus
    for idx, item in enumerate(body.split(b",")):
        if item == b"off":
            cpus.append({"index": idx, "online": False})
            continue
        r = _int(item, 0)
        if r is None or r[1] >= len(item) or item[r[1]] != 37:
            return None
        c = {"index": idx, "online": True, "util_pct": r[0]}
        j = r[1] + 1
        if j < len(item):
            if legacy or item[j] != 64:
                return None
            f = _int(item, j + 1)
            if f is None or f[1] != len(item):
                return None
            c["freq_mhz"] = f[0]
        elif shared is not None:
            c["freq_mhz"] = shared
        cpus.append(c)
    return cpus


def _rail(t: bytes):
    """"C[mW]/A[mW][/P[mW]]" or a lone "CmW" (signed) → dict or None.  A lone
    value needs its unit: a bare number after a name is an engine clock."""
    vals = []
    i = 0
    n = len(t)
    unit = False
    while True:
        r = _int(t, i, signed=True)
        if r is None:
            return None
        vals.append(r[0])
        i = r[1]
        unit = t[i:i + 2] == b"mW"
        if unit:
            i += 2
        if i == n:
            break
        if t[i] != 47 or len(vals) == 3:
            return None
        i += 1
    if len(vals) == 1:
        return {"current": vals[0]} if unit else None
    out = {"current": vals[0], "average": vals[1]}
    if len(vals) == 3:
        out["peak"] = vals[2]
    return out


def _engine(t: bytes):
    """off | N%@F | N% | @F | F → dict or None."""
    if t == b"off":
        return {"online": False}
    r = _int(t, 0)
    if r is not None and r[1] == len(t):
        return {"online": True, "freq_mhz": r[0]}
    p = _pct_at(t, 0, False)
    if p is None:
        return None
    e = {"online": True}
    if p[0] is not None:
        e["util_pct"] = p[0]
    if p[1] is not None:
        e["freq_mhz"] = p[1][0]
    return e


def _alpha(c: int) -> bool:
    return 65 <= c <= 90 or 97 <= c <= 122


def _temp(t: bytes):
    """name@T C[/T C] → (lower name, °C) or None."""
    at = t.find(b"@")
    if at <= 0:
        return None
    name = t[:at]
    if not _alpha(name[0]) or not all(_alpha(c) or 48 <= c <= 57 or c == 95 for c in name):
        return None
    r = _dec(t, at + 1)
    if r is None or r[1] >= len(t) or t[r[1]] != 67:  # 'C'
        return None
    j = r[1] + 1
    if j != len(t):
        if t[j] != 47:
            return None
        m = _dec(t, j + 1)
        if m is None or m[1] != len(t) - 1 or t[-1] != 67:
            return None
    return name.decode("ascii").lower(), r[0]


def parse_tegrastats(line: bytes) -> dict:
    """One tegrastats line → the `tegrastats.latest` payload (see stress.proto).

    Raises ParseError when nothing in the line is a tegrastats field."""
    toks = line.split()
    n = len(toks)
    if n == 0:
        raise ParseError("empty tegrastats line", line=1, column=1, expected="a tegrastats field", found="")
    if n > MAX_TOKENS:
        raise ParseError(f"tegrastats line has more than {MAX_TOKENS} tokens", line=1, column=1,
                         expected=f"<= {MAX_TOKENS} tokens", found=str(n))
    out: dict = {}
    unknown: list = []
    engines: dict = {}
    temps: dict = {}
    power: dict = {}
    known = 0
    i = 0
    if n >= 2 and _is_date(toks[0]) and _is_time(toks[1]):
        out["timestamp"] = (toks[0] + b" " + toks[1]).decode("ascii")
        known += 1
        i = 2
    while i < n:
        t = toks[i]
        nxt = toks[i + 1] if i + 1 < n else None
        used = 0
        if nxt is not None:
            if t == b"RAM":
                used = _ram(out, toks, i)
            elif t == b"SWAP":
                used = _swap(out, toks, i)
            elif t == b"IRAM":
                used = _iram(out, toks, i)
            elif t == b"CPU" or t == b"cpu":
                cpus = _cpu_list(nxt, t == b"cpu")
                if cpus is not None:
                    out["cpus"] = cpus
                    used = 2
            elif t == b"EMC_FREQ" or t == b"EMC":
                p = _pct_at(nxt, 0, False)
                if p is not None:
                    emc = {}
                    if p[0] is not None:
                        emc["util_pct"] = p[0]
                    if p[1] is not None:
                        emc["freq_mhz"] = p[1][0]
                    out["emc"] = emc
                    used = 2
            elif t == b"GR3D_FREQ" or t == b"GR3D" or t == b"GR3D2_FREQ":
                p = _pct_at(nxt, 0, True)
                if p is not None:
                    gpu = out.setdefault("gpu", {})
                    if p[0] is not None:
                        gpu["util_pct"] = max(gpu.get("util_pct", p[0]), p[0])
                    if p[1] is not None:
                        gpu.setdefault("freq_mhz", []).extend(p[1])
                    used = 2
            elif t == b"MTS":
                if i + 4 < n and nxt == b"fg" and toks[i + 3] == b"bg":
                    a = _int(toks[i + 2], 0)
                    b = _int(toks[i + 4], 0)
                    if (a is not None and b is not None and toks[i + 2][a[1]:] == b"%"
                            and toks[i + 4][b[1]:] == b"%"):
                        out["mts"] = {"fg_pct": a[0], "bg_pct": b[0]}
                        used = 5
            elif t == b"EDP":
                if i + 2 < n and nxt == b"limit":
                    r = _int(toks[i + 2], 0)
                    if r is not None and r[1] == len(toks[i + 2]):
                        out["edp_limit_mhz"] = r[0]
                        used = 3
            if used == 0 and _is_name(t):
                rail = _rail(nxt)
                if rail is not None:
                    if t != b"NC":
                        name = t.decode("ascii")
                        if name in power:
                            k = 2
                            while f"{name}_{k}" in power:
                                k += 1
                            name = f"{name}_{k}"
                        power[name] = rail
                    used = 2
                else:
                    eng = _engine(nxt)
                    if eng is not None:
                        name = t[:-5] if t.endswith(b"_FREQ") and len(t) > 5 else t
                        engines[name.decode("ascii")] = eng
                        used = 2
        if used == 0:
            tp = _temp(t)
            if tp is not None:
                if tp[0] != "pmic" and tp[1] > -40.0:
                    temps[tp[0]] = tp[1]
                used = 1
        if used == 0:
            unknown.append(t.decode("utf-8", "replace"))
            i += 1
        else:
            known += 1
            i += used
    if known == 0:
        raise ParseError("no tegrastats field in line", line=1, column=1 + len(line) - len(line.lstrip(WS)),
                         expected="RAM, CPU, ... or name@temperature",
                         found=toks[0][:40].decode("utf-8", "replace"))
    if engines:
        out["engines"] = engines
    if temps:
        out["temps_c"] = temps
    if power:
        out["power_mw"] = power
    out["unknown"] = unknown
    return out


def _used_total_lfb(toks, i, unit: bytes, blocks: bool):
    """`RAM`/`IRAM` `used/total<unit> (lfb ...)`, "(lfb" glued to the pair or
    not → ((used, total), lfb size or None, tokens used), or None."""
    t = toks[i + 1]
    glued = t.endswith(b"(lfb")
    p = _pair(t, unit, b"(lfb" if glued else b"")
    if p is None:
        return None
    j = i + 2
    if not glued:
        if j < len(toks) and toks[j] == b"(lfb":
            j += 1
        else:
            return p, None, 2
    if j < len(toks):
        s = _lfb_size(toks[j], blocks)
        if s is not None:
            return p, s, j + 1 - i
    return p, None, 2


def _ram(out, toks, i) -> int:
    r = _used_total_lfb(toks, i, b"MB", True)
    if r is None:
        return 0
    (used, total), lfb, n = r
    ram = out["ram"] = {"used_mb": used, "total_mb": total}
    if lfb is not None:
        ram["lfb_blocks"], ram["lfb_block_kb"] = lfb
    return n


def _swap(out, toks, i) -> int:
    p = _pair(toks[i + 1], b"MB")
    if p is None:
        return 0
    swap = {"used_mb": p[0], "total_mb": p[1]}
    out["swap"] = swap
    if i + 3 < len(toks) and toks[i + 2] == b"(cached":
        t = toks[i + 3]
        r = _int(t, 0)
        if r is not None and t[r[1]:] == b"MB)":
            swap["cached_mb"] = r[0]
            return 4
    return 2


def _iram(out, toks, i) -> int:
    r = _used_total_lfb(toks, i, b"kB", False)
    if r is None:
        return 0
    (used, total), lfb, n = r
    iram = out["iram"] = {"used_kb": used, "total_kb": total}
    if lfb is not None:
        iram["lfb_kb"] = lfb[1]
    return n
