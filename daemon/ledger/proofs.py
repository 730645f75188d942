"""Check proofs in the JSON shape ledger.proof / ledger.consistency return
(hex strings), for clients and `aalctl ledger`.  A malformed proof is simply
not valid: these return False, never raise."""
from __future__ import annotations

from ..ledger_core import verify_consistency, verify_inclusion


def _raw(h) -> bytes | None:
    if not isinstance(h, str) or len(h) != 64:
        return None
    try:
        return bytes.fromhex(h)
    except ValueError:
        return None


def check_proof(proof: dict, entry_hash: str | None = None, root: str | None = None) -> bool:
    """Is `proof` ({index, tree_size, root, path, entry_hash}) a valid
    inclusion proof?  `entry_hash`/`root` override the ones inside it (pass
    the values you trust, e.g. a root from a manifest you kept)."""
    try:
        e = _raw(entry_hash if entry_hash is not None else proof["entry_hash"])
        r = _raw(root if root is not None else proof["root"])
        path = [_raw(p) for p in proof["path"]]
        index, size = int(proof["index"]), int(proof["tree_size"])
    except (KeyError, TypeError, ValueError):
        return False
    if e is None or r is None or any(p is None for p in path) or index < 0 or size < 1:
        return False
    return verify_inclusion(e, index, size, path, r)


def check_consistency(proof: dict, first_root: str | None = None, second_root: str | None = None) -> bool:
    """Is `proof` ({first, second, first_root, second_root, path}) a valid
    consistency proof?  The roots may be overridden with trusted ones."""
    try:
        a = _raw(first_root if first_root is not None else proof["first_root"])
        b = _raw(second_root if second_root is not None else proof["second_root"])
        path = [_raw(p) for p in proof["path"]]
        first, second = int(proof["first"]), int(proof["second"])
    except (KeyError, TypeError, ValueError):
        return False
    if a is None or b is None or any(p is None for p in path) or first < 1 or second < first:
        return False
    return verify_consistency(first, second, a, b, path)
