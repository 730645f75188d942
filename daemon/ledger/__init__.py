"""aal_core.ledger: a tamper-evident, crash-safe record of every decision.

A SHA3-256 hash chain of entries {index, timestamp, data, previous_hash,
hash}, with an RFC 9162 Merkle tree over the entry hashes for inclusion and
consistency proofs, and a high-water mark file (mark.py) of what was
acknowledged.  Hashing, the tree and the start-up scan are compiled
(aal_core.ledger_core); the format is in README "Ledger".

    Ledger.open(path)      the file, usable without the daemon
    Ledger.memory()        the same in memory
    LedgerUnit             the daemon's unit (ledger.* RPC, group commit)
    verify_inclusion / verify_consistency   check proofs (raw bytes)
    check_proof / check_consistency         check proofs as the RPC returns them
"""
from ..ledger_core import MerkleTree, sha3_256, verify_consistency, verify_inclusion
from .canonical import EntryError, canonical, canonical_data, format_number, preimage
from .chain import GENESIS_DATA, Batch, Ledger, ScanResult, decode_record, scan_bytes
from .proofs import check_consistency, check_proof

__all__ = [
    "Batch", "EntryError", "GENESIS_DATA", "Ledger", "LedgerUnit", "MerkleTree", "ScanResult",
    "canonical", "canonical_data", "check_consistency", "check_proof", "decode_record",
    "format_number", "preimage", "scan_bytes", "sha3_256", "verify_consistency", "verify_inclusion",
]


def __getattr__(name):
    # The unit pulls in the RPC layer; load it only for the daemon.
    if name == "LedgerUnit":
        from .unit import LedgerUnit
        return LedgerUnit
    raise AttributeError(name)
