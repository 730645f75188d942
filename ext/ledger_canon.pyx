# cython: language_level=3
"""Compiled RFC 8785 canonical JSON for ledger entries: the same rules, same
bytes, as the pure-Python reference aal_core.ledger.canonical (which has the
full description); tests/test_ledger_canonical.py runs both on the same
hypothesis-generated values.  Why compiled: canonicalising `data` was two
thirds of an append's cost."""
from json.encoder import encode_basestring as _quote

from aal_core.ledger.canonical import EntryError, format_number

cdef enum:
    MAX_DEPTH = 64
cdef object MAX_SAFE = 2 ** 53


cdef bytes _utf16(str s):
    return s.encode("utf-16-be", "surrogatepass")


cdef void _emit(object v, list out, int depth) except *:
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
            _emit((<dict>v)[k], out, depth + 1)
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
            _emit(item, out, depth + 1)
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


def canonical(value) -> bytes:
    """RFC 8785 canonical JSON of a JSON value, as UTF-8 bytes."""
    cdef list out = []
    _emit(value, out, 0)
    try:
        return "".join(out).encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start:exc.end]
        raise EntryError(f"string contains a lone surrogate {bad!r}; not valid UTF-8") from None
