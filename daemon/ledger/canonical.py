"""Canonical JSON for ledger entries: RFC 8785 (JSON Canonicalization Scheme).

Why JCS: an entry's hash is SHA3-256 of these bytes, so any tool that wants
to check the ledger must produce them byte for byte; JCS is a published
scheme with implementations in most languages.  In short:

- objects: keys sorted by their UTF-16 code units, no whitespace, `,` and `:`
  as separators; arrays keep their order;
- strings: UTF-8, non-ASCII written as itself (never \\u-escaped); only `"`,
  `\\` and the control characters U+0000..U+001F are escaped, as \\b \\t \\n
  \\f \\r or \\u00xx (lowercase hex); a lone surrogate is refused;
- numbers: IEEE-754 doubles written the way ECMAScript's Number.toString
  does: shortest digits that round-trip, no exponent for 1e-6 <= |x| < 1e21
  (so 5.0 is `5`, 0.1 is `0.1`, 1e-7 is `1e-7`, 1e21 is `1e+21`), -0 is `0`;
  NaN and infinities are refused; an integer beyond +-2**53 is accepted only
  when the double it stands for is written with the same digits (so it reads
  back unchanged), else refused: send such numbers as strings;
- true, false, null as themselves.

An entry's hash preimage is the canonical form of
{"data": ..., "index": ..., "previous_hash": ..., "timestamp": ...}; its
keys already sort that way, so `preimage()` glues the fixed parts around the
canonical data.
"""
from __future__ import annotations

from json.encoder import encode_basestring as _quote  # C; JCS-exact escaping

from ..errors import LedgerError

__all__ = ["EntryError", "canonical", "canonical_data", "format_number", "preimage", "MAX_SAFE_INT"]



class EntryError(LedgerError):
    """The data cannot be a ledger entry (not JSON-canonicalisable, too big);
    the caller's fault, so the RPC layer answers it as invalid params."""


MAX_SAFE_INT = 2 ** 53
MAX_DEPTH = 64


def format_number(x) -> str:
    """ECMAScript Number.toString of a finite double (RFC 8785 section 3.2.2.3)."""
    if type(x) is int:
        if -MAX_SAFE_INT <= x <= MAX_SAFE_INT:
            return str(x)
        try:
            s = format_number(float(x))
        except OverflowError:
            s = ""
        if s != str(x):
            raise EntryError(f"integer {x} is outside +-2**53 and its canonical form (a double) would not "
                             f"read back as the same integer; send it as a string")
        return s
    if x != x or x in (float("inf"), float("-inf")):
        raise EntryError(f"{x!r} is not a JSON number (NaN and infinities are refused)")
    if x == 0:
        return "0"
    r = repr(x)
    if "e" not in r:
        # repr writes plain notation only for 1e-4 <= |x| < 1e16, inside
        # ECMAScript's plain range, with the same shortest digits; it only
        # adds ".0" to whole numbers.
        return r[:-2] if r.endswith(".0") else r
    r = repr(abs(x))          # shortest round-trip digits (same digits as ECMAScript)
    mant, _, exp = r.partition("e")
    ip, _, fp = mant.partition(".")
    digits = ip + fp
    point = len(ip) + (int(exp) if exp else 0)
    stripped = digits.lstrip("0")
    point -= len(digits) - len(stripped)
    digits = stripped.rstrip("0")
    k, n = len(digits), point
    if k <= n <= 21:
        s = digits + "0" * (n - k)
    elif 0 < n <= 21:
        s = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        s = "0." + "0" * (-n) + digits
    else:
        e = n - 1
        s = (digits if k == 1 else digits[0] + "." + digits[1:]) + "e" + ("+" if e >= 0 else "-") + str(abs(e))
    return "-" + s if x < 0 else s


def _utf16_key(s: str) -> bytes:
    return s.encode("utf-16-be", "surrogatepass")


def _emit(v, out: list, depth: int) -> None:
    t = type(v)
    if t is str:
        out.append(_quote(v))
    elif t is dict:
        if depth >= MAX_DEPTH:
            raise EntryError(f"entry data nested deeper than {MAX_DEPTH} levels")
        if not v:
            out.append("{}")
            return
        keys = list(v)
        for k in keys:
            if type(k) is not str:
                raise EntryError(f"object keys must be strings, got {type(k).__name__} {k!r}")
        if all(k.isascii() for k in keys):
            keys.sort()
        else:
            keys.sort(key=_utf16_key)
        sep = "{"
        for k in keys:
            out.append(sep)
            out.append(_quote(k))
            out.append(":")
            _emit(v[k], out, depth + 1)
            sep = ","
        out.append("}")
    elif t is list or t is tuple:
        if depth >= MAX_DEPTH:
            raise EntryError(f"entry data nested deeper than {MAX_DEPTH} levels")
        if not v:
            out.append("[]")
            return
        sep = "["
        for item in v:
            out.append(sep)
            _emit(item, out, depth + 1)
            sep = ","
        out.append("]")
    elif v is True:
        out.append("true")
    elif v is False:
        out.append("false")
    elif v is None:
        out.append("null")
    elif t is int or t is float:
        out.append(format_number(v))
    else:
        raise EntryError(f"{t.__name__} is not a JSON value")


def canonical(value) -> bytes:
    """RFC 8785 canonical JSON of a JSON value, as UTF-8 bytes."""
    out: list = []
    _emit(value, out, 0)
    try:
        return "".join(out).encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start:exc.end]
        raise EntryError(f"string contains a lone surrogate {bad!r}; not valid UTF-8") from None


def canonical_data(data) -> bytes:
    """Canonical bytes of an entry's `data`, which must be a JSON object."""
    if type(data) is not dict:
        raise EntryError(f"entry data must be a JSON object, got {type(data).__name__}")
    return canonical(data)


def preimage(data_canonical: bytes, index: int, previous_hash_hex: str, timestamp: float) -> bytes:
    """The bytes an entry's hash is taken over (canonical JSON of the four fields)."""
    return b"".join((b'{"data":', data_canonical, b',"index":', str(index).encode(),
                     b',"previous_hash":"', previous_hash_hex.encode(), b'","timestamp":',
                     format_number(timestamp).encode(), b"}"))
