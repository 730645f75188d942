"""JSON encoding for the wire: orjson, chosen by measurement (bench/loop_json.py).

`Fragment` wraps bytes that are already JSON, so a value encoded once (the
latest stress sample, say) is embedded in many replies without re-encoding.
"""
from __future__ import annotations

import orjson

Fragment = orjson.Fragment
JSONDecodeError = orjson.JSONDecodeError
NAME = f"orjson {orjson.__version__}"


def loads(data: bytes):
    return orjson.loads(data)


def dumps(obj) -> bytes:
    """Compact JSON, newline-terminated: one frame."""
    return orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE)


def dumps_value(obj) -> bytes:
    """Compact JSON without the newline (for Fragments and files)."""
    return orjson.dumps(obj)
