"""Signed tree heads: the ledger's size and Merkle root, signed by the daemon's key.

The signed bytes (70 of them, README "Signed tree heads"):

    b"aal-core/tree-head/v1\\n"     22 bytes, ASCII: the domain, so a head's
                                    signature can never pass for anything else
    size                            8 bytes, unsigned big-endian: entries covered
    root                            32 bytes: the RFC 9162 Merkle root (SHA3-256)
                                    of the first `size` entry hashes
    timestamp                       8 bytes, unsigned big-endian: milliseconds
                                    since the Unix epoch when the head was made

signed with Ed25519 (RFC 8032, the raw 64-byte signature).  A head as JSON:
{size, root (hex), timestamp (ms), signature (hex), public_key (hex),
algorithm: "ed25519"}.  Pure: the key and the clock come in as arguments;
`verify_head` is for clients (the fleet consumer, `aalctl fleet`).
"""
from __future__ import annotations

import struct

from ..keys import verify

DOMAIN = b"aal-core/tree-head/v1\n"
_TAIL = struct.Struct(">Q32sQ")


def signed_bytes(size: int, root: bytes, timestamp_ms: int) -> bytes:
    if len(root) != 32:
        raise ValueError(f"a tree root is 32 bytes, got {len(root)}")
    return DOMAIN + _TAIL.pack(size, root, timestamp_ms)


def make_head(size: int, root: bytes, timestamp_ms: int, sign, public_hex: str) -> dict:
    """`sign(data) -> 64-byte signature` (KeyUnit.sign)."""
    sig = sign(signed_bytes(size, root, timestamp_ms))
    return {"size": size, "root": root.hex(), "timestamp": timestamp_ms, "signature": sig.hex(),
            "public_key": public_hex, "algorithm": "ed25519"}


def verify_head(head: dict, public_key: str | None = None) -> bool:
    """Is `head`'s signature good over its own size, root and timestamp?
    `public_key` (hex): the key you trust; default the one inside the head.
    Malformed heads are not valid (False, never an exception)."""
    try:
        size, ts = int(head["size"]), int(head["timestamp"])
        root = bytes.fromhex(head["root"])
        data = signed_bytes(size, root, ts)
        return verify(public_key if public_key is not None else head["public_key"], head["signature"], data)
    except (KeyError, TypeError, ValueError, struct.error, OverflowError):
        return False
