"""The high-water mark: what the ledger has acknowledged, kept beside it.

Without it a start-up scan cannot tell a torn last write (never
acknowledged: cut it off) from acknowledged records that were zeroed or cut
away at a record boundary (lost: refuse).  The mark file `<ledger>.mark`
holds two 96-byte slots, at offsets 0 and 4096 (separate pages, so a torn
slot write never touches the other one):

    0   8  magic "AALMARK\\1"
    8   8  u64 generation (1 at creation, +1 per write; slot = generation % 2)
    16  8  u64 entries: the chain length acknowledged
    24  8  u64 bytes: byte offset of the end of the last acknowledged record
    32  32 Merkle root (RFC 9162, as ledger.manifest) of those `entries`
    64  32 SHA3-256 of bytes 0..63 of the slot

little-endian.  The mark is the valid slot with the highest generation.
Each group commit writes the data and fsyncs it, then rewrites the older
slot in place and fdatasyncs the mark file, and only then answers the
appends of that batch: everything ever acknowledged is at or below the mark
on disk.  `judge` is the one verdict on a file against its mark, used by
the daemon at start and by `aalctl ledger verify`.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from .. import ledger_core as _core
from ..errors import LedgerError
from .store import _oserror, create_atomic, pwrite_all

MARK_MAGIC = b"AALMARK\x01"
SLOT_LEN = 96
SLOT_STRIDE = 4096
MARK_FILE_LEN = SLOT_STRIDE + SLOT_LEN
_FIELDS = struct.Struct("<8sQQQ32s")


def mark_path(ledger_path: str) -> str:
    return ledger_path + ".mark"


@dataclass(frozen=True)
class Mark:
    """One slot: the acknowledged prefix of the chain."""

    generation: int
    entries: int
    bytes: int
    root: bytes

    def pack(self) -> bytes:
        body = _FIELDS.pack(MARK_MAGIC, self.generation, self.entries, self.bytes, self.root)
        return body + _core.sha3_256(body)

    def as_dict(self) -> dict:
        return {"generation": self.generation, "entries": self.entries, "bytes": self.bytes,
                "merkle_root": self.root.hex()}


def _unpack(slot: bytes) -> Mark | None:
    if len(slot) != SLOT_LEN or slot[:8] != MARK_MAGIC or _core.sha3_256(slot[:64]) != slot[64:]:
        return None
    _, gen, entries, size, root = _FIELDS.unpack(slot[:64])
    return Mark(gen, entries, size, root)


def read_mark(path: str) -> Mark | None:
    """The mark in `path` (a mark file), None if the file does not exist.
    A file without a valid slot raises LedgerError (it is never rewritten)."""
    try:
        with open(path, "rb") as fh:
            blob = fh.read(MARK_FILE_LEN + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LedgerError(_oserror("cannot read the high-water mark", path, exc)) from None
    slots = [m for m in (_unpack(blob[0:SLOT_LEN]), _unpack(blob[SLOT_STRIDE:SLOT_STRIDE + SLOT_LEN]))
             if m is not None]
    if len(blob) != MARK_FILE_LEN or not slots:
        raise LedgerError(f"the ledger's high-water mark {path} is damaged ({len(blob)} bytes, "
                          f"{'no slot with a valid checksum' if not slots else 'wrong size'}): "
                          f"refusing to start; nothing was changed. Inspect the ledger with "
                          f"`aalctl ledger verify`")
    return max(slots, key=lambda m: m.generation)


class MarkFile:
    """The open mark file: rewritten in place, one slot per write."""

    def __init__(self, path: str, fd: int, current: Mark):
        self.path = path
        self._fd = fd
        self.current = current

    @classmethod
    def create(cls, path: str, entries: int, size: int, root: bytes) -> "MarkFile":
        """Write generation 1 to a temporary file, fsync, rename, fsync the directory."""
        mark = Mark(1, entries, size, root)
        blob = bytearray(MARK_FILE_LEN)
        blob[SLOT_STRIDE:SLOT_STRIDE + SLOT_LEN] = mark.pack()   # slot 1 % 2
        create_atomic(path, bytes(blob), "cannot create the high-water mark")
        return cls.open(path, mark)

    @classmethod
    def open(cls, path: str, current: Mark) -> "MarkFile":
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise LedgerError(_oserror("cannot open the high-water mark", path, exc)) from None
        return cls(path, fd, current)

    def write(self, entries: int, size: int, root: bytes) -> None:
        """Make (entries, size, root) the mark: pwrite the older slot, fdatasync
        (blocking; the ledger's data must already be fsync'd)."""
        mark = Mark(self.current.generation + 1, entries, size, root)
        slot = mark.pack()
        pos = (mark.generation % 2) * SLOT_STRIDE
        try:
            pwrite_all(self._fd, slot, pos)
            os.fdatasync(self._fd)
        except OSError as exc:
            raise LedgerError(_oserror("cannot write the high-water mark", self.path, exc)) from None
        self.current = mark

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


@dataclass(frozen=True)
class Verdict:
    """What to do with a ledger file at start (and what `aalctl ledger verify` says).

    kind: "ok" (use it; `keep_bytes` is its end), "torn" (beyond the mark:
    cut the file to `keep_bytes`, keeping `keep_entries`) or "damaged" (at
    or below the mark, or unreadable: refuse; `index` names the first entry
    missing or bad, None where no entry can be named).  `adopt` is set when
    there was no mark and one is to be written ("legacy": the ledger predates
    the mark; "created": only the genesis entry, the mark was never written).
    """

    kind: str
    keep_entries: int
    keep_bytes: int
    reason: str = ""
    index: int | None = None
    byte: int | None = None
    adopt: str = ""


def genesis_declares_mark(buf, offsets) -> bool:
    """True if the genesis entry says the ledger keeps a high-water mark."""
    from .chain import decode_record   # chain imports this module
    if not len(offsets):
        return False
    end = offsets[1] if len(offsets) > 1 else len(buf)
    return decode_record(bytes(buf[offsets[0]:end])).get("data", {}).get("high_water_mark") is True


def judge(res, root_at, offset_at, mark: Mark | None, declares_mark: bool) -> Verdict:
    """The verdict on a scanned ledger (`res`: chain.ScanResult) against its mark.

    root_at(n) / offset_at(n): Merkle root of, and byte offset of, the first
    n good records (offset_at(res.count) is res.end)."""
    if mark is None:
        if res.status == "corrupt":
            return Verdict("damaged", res.count, res.end, res.reason, res.count if res.end else None, res.end)
        if declares_mark and res.count > 1:
            return Verdict("damaged", res.count, res.end,
                           "the high-water mark file is missing, but this ledger was created with one "
                           f"and holds {res.count} entries: acknowledged entries may be gone without "
                           "a trace", None)
        adopt = "legacy" if not declares_mark else "created"
        return Verdict("torn" if res.status == "torn" else "ok", res.count, res.end, res.reason, adopt=adopt)
    if res.count < mark.entries:
        what = res.reason if res.status == "corrupt" else (
            "the file ends there" if res.status == "ok" else
            f"the {res.torn_bytes} bytes from there do not frame a record (cut or zeroed)")
        return Verdict("damaged", res.count, res.end,
                       f"{what}, but the high-water mark says {mark.entries} entries ({mark.bytes} bytes) "
                       f"were acknowledged", res.count if res.end else None, res.end)
    if root_at(mark.entries) != mark.root or offset_at(mark.entries) != mark.bytes:
        return Verdict("damaged", res.count, res.end,
                       f"the first {mark.entries} entries (bytes {offset_at(mark.entries)}, merkle root "
                       f"{root_at(mark.entries).hex()}) are not the ones acknowledged (high-water mark: "
                       f"{mark.bytes} bytes, merkle root {mark.root.hex()})", mark.entries - 1)
    if res.status != "ok":
        return Verdict("torn", res.count, res.end, res.reason)
    return Verdict("ok", res.count, res.end)
