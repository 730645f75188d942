"""The ledger: a SHA3-256 hash chain with a Merkle tree over it, on a store.

`Ledger` is synchronous and usable without the daemon (`aal-core venom`,
`aalctl ledger`, benchmarks).  Appending is split in three steps so the
daemon can group-commit (commit.py) without holding the event loop during
fsync:

    batch = ledger.prepare(items)   indices, preimages, hashes; the leaves are
                                    staged in the Merkle tree (unseen: readers
                                    ask for at most `count` leaves) for the root
    ledger.write(batch)             blocking: one write + fsync of the records,
                                    then the high-water mark (mark.py) + fdatasync
    ledger.commit(batch)            in memory: chain tail and length
    ledger.abort()                  instead of commit when write failed

Only `commit` changes the visible state, and only after the bytes and the
mark covering them are durable, so a failed write leaves the chain exactly
as it was; whatever was acknowledged is at or below the mark on disk, which
is how the start tells a torn write from a loss.
"""
from __future__ import annotations

import dataclasses
import os
import time
from array import array
from dataclasses import dataclass

import orjson

from .. import ledger_core as _core
from ..ledger_canon import canonical as _canonical   # compiled; reference: canonical.canonical
from ..ledger_canon import record as _record, record_canonical as _record_canonical
from ..clock import SYSTEM, Clock
from ..errors import LedgerError
from ..log import get_logger
from .canonical import EntryError, canonical_data, preimage
from .mark import Mark, MarkFile, Verdict, genesis_declares_mark, judge, mark_path, read_mark
from .store import HASH_LEN, HEADER_LEN, MAGIC, FileStore, MemoryStore

log = get_logger("ledger")

ZERO_HASH = b"\x00" * HASH_LEN
FORMAT = "aal-core-ledger/1"
# "high_water_mark": a ledger created with this genesis always has a mark
# file; one whose genesis lacks it predates the mark and is adopted.
GENESIS_DATA = {"genesis": True, "format": FORMAT, "hash": "sha3-256",
                "canonical_json": "rfc8785", "merkle": "rfc9162", "high_water_mark": True}
MAX_GET = 1000


@dataclass(frozen=True)
class Batch:
    """Records ready to write: they chain onto the ledger as it was when prepared."""

    start: int              # index of the first record
    offset: int             # byte offset it goes to
    blob: bytes             # framed records, concatenated
    hashes: tuple           # raw 32-byte hashes, one per record
    sizes: tuple            # framed size of each record
    root: bytes = b""       # Merkle root of the chain with these records (the mark they make)


@dataclass(frozen=True)
class ScanResult:
    """What a pass over the stored records found."""

    status: str             # "ok", "torn" or "corrupt"
    count: int              # good records
    end: int                # byte offset just after the last good record
    last_hash: bytes
    reason: str = ""
    torn_bytes: int = 0
    seconds: float = 0.0


def scan_bytes(buf, tree, *, want_offsets: bool = True) -> tuple[ScanResult, bytes]:
    """Check a whole ledger image (magic included) with the compiled scanner."""
    t0 = time.perf_counter()
    size = len(buf) if buf is not None else 0
    if size < len(MAGIC) or buf[:len(MAGIC)] != MAGIC:
        return ScanResult("corrupt", 0, 0, ZERO_HASH, "not an aal-core ledger (bad or missing magic)"), b""
    status, count, end, last, reason, offsets = _core.scan(buf, len(MAGIC), 0, ZERO_HASH, tree, want_offsets)
    dt = time.perf_counter() - t0
    if status == _core.SCAN_CORRUPT:
        return ScanResult("corrupt", count, end, last, reason, seconds=dt), offsets
    if count == 0:
        return ScanResult("corrupt", 0, end, last, "no genesis entry", seconds=dt), offsets
    if status == _core.SCAN_TORN:
        return ScanResult("torn", count, end, last, "torn last record", torn_bytes=size - end, seconds=dt), offsets
    return ScanResult("ok", count, end, last, seconds=dt), offsets


def verify_bytes(buf) -> tuple[ScanResult, dict]:
    """Check a whole ledger image into a fresh Merkle tree: the scan, and
    ledger.verify's result for it ({valid, chain_length, seconds,
    merkle_root}, plus first_bad_index and reason when not ok)."""
    tree = _core.MerkleTree()
    res, _ = scan_bytes(buf, tree, want_offsets=False)
    out = {"valid": res.status == "ok", "chain_length": res.count, "seconds": round(res.seconds, 6),
           "merkle_root": tree.root().hex()}
    if res.status != "ok":
        out["first_bad_index"] = res.count
        out["reason"] = res.reason
    return res, out


def examine(buf, tree, mark: Mark | None, *, use_mark: bool = True) -> tuple[ScanResult, array, Verdict]:
    """Scan a ledger image into `tree` and judge it against its mark: the
    one decision shared by the daemon's start and `aalctl ledger verify`."""
    res, raw = scan_bytes(buf, tree)
    offsets = array("Q")
    offsets.frombytes(raw)
    declares = use_mark and res.count > 0 and genesis_declares_mark(buf, offsets)

    def offset_at(n: int) -> int:
        return offsets[n] if n < res.count else res.end

    verdict = judge(res, tree.root, offset_at, mark, declares)
    return res, offsets, verdict


def damage_message(path: str, v: Verdict) -> str:
    where = (f" at entry {v.index} (byte {v.byte})" if v.index is not None and v.byte is not None
             else f" at entry {v.index}" if v.index is not None
             else " at header" if v.byte == 0 else "")
    return (f"ledger {path} is damaged{where}: {v.reason}. Refusing to start; nothing was changed. "
            f"Inspect it with `aalctl ledger verify {path}`")


def decode_record(rec: bytes) -> dict:
    """A framed record → the entry {index, timestamp, data, previous_hash, hash}."""
    n = int.from_bytes(rec[:4], "little")
    entry = orjson.loads(rec[HEADER_LEN:HEADER_LEN + n])
    entry["hash"] = rec[HEADER_LEN + n:HEADER_LEN + n + HASH_LEN].hex()
    return entry


class Ledger:
    """The chain's committed state plus its store.  Not thread-safe: one
    writer (the daemon's group committer, or a single caller)."""

    def __init__(self, store, *, clock: Clock = SYSTEM, max_entry_bytes: int = 65536):
        self.store = store
        self.clock = clock
        self.max_entry_bytes = max_entry_bytes
        self.tree = _core.MerkleTree()
        self.offsets = array("Q")
        self.count = 0
        self.end = 0               # bytes of the committed records (the store's
        #                            size runs ahead while a batch is written)
        self.latest_hash = ZERO_HASH
        self.genesis_hash = ZERO_HASH
        self.verified = False
        self.torn: ScanResult | None = None
        self.mark: MarkFile | None = None     # None: in memory, or opened read-only

    # -- opening ---------------------------------------------------------

    @classmethod
    def open(cls, path: str, *, clock: Clock = SYSTEM, create: bool = True,
             repair_torn_tail: bool = True, max_entry_bytes: int = 65536,
             use_mark: bool = True) -> "Ledger":
        """Open (creating with a genesis entry and its high-water mark if
        absent) and verify a ledger file against its mark (mark.judge).  A
        torn write beyond the mark is cut off with a log line; anything
        missing or bad at or below it raises LedgerError naming the first bad
        index.  With repair_torn_tail=False the file is opened read-only and
        nothing is written (a torn tail is then just not read; see `torn`);
        use_mark=False ignores the mark file (read-only tools)."""
        mpath = mark_path(path)
        mark = read_mark(mpath) if use_mark else None
        if not os.path.exists(path):
            if mark is not None:
                raise LedgerError(
                    f"ledger {path} is damaged at entry 0: the file is missing, but its high-water mark "
                    f"{mpath} says {mark.entries} entries ({mark.bytes} bytes) were acknowledged. "
                    f"Refusing to start; nothing was changed", index=0)
            if not create:
                raise LedgerError(f"no ledger at {path}")
            ledger = cls(MemoryStore(MAGIC), clock=clock)
            genesis = ledger.prepare([(canonical_data(GENESIS_DATA), ledger._now())])
            ledger.commit(genesis)
            FileStore.create(path, genesis.blob)
            if use_mark:   # after the ledger: a crash in between leaves a genesis-only ledger, adopted
                MarkFile.create(mpath, 1, ledger.store.size + len(genesis.blob), ledger.root()).close()
                mark = read_mark(mpath)
            log.info("ledger_created", path=path, genesis_hash=genesis.hashes[0].hex())
        ledger = cls(FileStore.open(path, writable=repair_torn_tail), clock=clock,
                     max_entry_bytes=max_entry_bytes)
        try:
            ledger._load(repair_torn_tail, mark, mpath if use_mark else None)
        except BaseException:
            ledger.close()
            raise
        return ledger

    @classmethod
    def memory(cls, *, clock: Clock = SYSTEM, max_entry_bytes: int = 1 << 23) -> "Ledger":
        """A ledger kept in memory only (benchmarks, tests, dry runs)."""
        ledger = cls(MemoryStore(MAGIC), clock=clock, max_entry_bytes=max_entry_bytes)
        ledger.append(GENESIS_DATA)
        ledger.verified = True
        return ledger

    def _load(self, repair: bool, mark: Mark | None, mpath: str | None) -> None:
        store = self.store
        size = store.file_size()
        store.size = size
        mm = store.map(size)
        try:
            res, offsets, verdict = examine(mm if mm is not None else b"", self.tree, mark,
                                            use_mark=mpath is not None)
        finally:
            if mm is not None:
                mm.close()
        if verdict.kind == "damaged":
            raise LedgerError(damage_message(store.path, verdict), index=verdict.index)
        self.offsets = offsets
        self.count = res.count
        self.end = res.end
        self.latest_hash = res.last_hash
        self.genesis_hash = self._stored_hash(0)
        if verdict.kind == "torn":
            self.torn = dataclasses.replace(res, status="torn", torn_bytes=size - res.end)
        if verdict.kind == "torn" and repair:
            store.truncate(res.end)
            log.warning("ledger_torn_tail", path=store.path, bytes=size - res.end, index=res.count,
                        kept=res.count, mark=mark.entries if mark is not None else None,
                        reason=res.reason)
        store.size = res.end
        if repair and mpath is not None:
            self._take_mark(mark, mpath, verdict)
        self.verified = True
        self.open_verify_s = res.seconds
        log.info("ledger_verified", path=store.path, entries=self.count, seconds=f"{res.seconds:.3f}",
                 merkle_root=self.root().hex())

    def _take_mark(self, mark: Mark | None, mpath: str, verdict: Verdict) -> None:
        """Open the mark for writing; create it for a ledger without one
        (verdict.adopt), advance it over good records beyond it (fsync'd, never
        acknowledged: a crash between the data's fsync and the mark's)."""
        if mark is None:
            self.mark = MarkFile.create(mpath, self.count, self.store.size, self.root())
            log.warning("ledger_mark_adopted", path=mpath, entries=self.count, bytes=self.store.size,
                        why=("the ledger predates the high-water mark" if verdict.adopt == "legacy"
                             else "the ledger holds only its genesis entry (created, mark not yet written)"))
            return
        self.mark = MarkFile.open(mpath, mark)
        if self.count > mark.entries:
            self.write_mark(self.mark_point())
            log.info("ledger_mark_advanced", path=mpath, entries=self.count, was=mark.entries)

    # -- appending -------------------------------------------------------

    def _now(self) -> float:
        return round(self.clock.wall(), 6)

    def encode(self, data) -> bytes:
        """Canonical bytes of `data`, checked against max_entry_bytes
        (raises EntryError for data that cannot be an entry)."""
        if type(data) is not dict:
            raise EntryError(f"entry data must be a JSON object, got {type(data).__name__}")
        c = _canonical(data)
        if len(c) > self.max_entry_bytes:
            raise EntryError(f"entry data is {len(c)} bytes in canonical JSON, over the "
                                       f"{self.max_entry_bytes}-byte limit (ledger.max_entry_bytes)")
        return c

    def prepare(self, items) -> Batch:
        """Frame `items` ((canonical_data, timestamp) pairs) as the next records
        and stage their leaves in the tree (for the root the mark records).
        Each record is built, hashed and staged by one compiled call
        (ledger_canon.record_canonical: the reference is
        _core.frame(preimage(...), sha3_256(...)))."""
        self.abort()   # a batch prepared before and never committed
        prev, idx = self.latest_hash, self.count
        tree = self.tree
        frames, hashes = [], []
        for data_c, ts in items:
            f, prev = _record_canonical(data_c, idx, prev, ts, tree)
            frames.append(f)
            hashes.append(prev)
            idx += 1
        # The root is only what the mark records: none without one (memory, read-only).
        return Batch(self.count, self.store.size, frames[0] if len(frames) == 1 else b"".join(frames),
                     tuple(hashes), tuple(map(len, frames)), tree.root(idx) if self.mark is not None else b"")

    def write(self, batch: Batch) -> None:
        """Make `batch` durable, then the mark that covers it (blocking; safe
        to run in a worker thread: it touches neither the tree nor the chain)."""
        self.store.write(batch.blob, batch.offset)
        self.write_mark((batch.start + len(batch.hashes), batch.offset + len(batch.blob), batch.root),
                        undo_size=batch.offset)

    def abort(self) -> None:
        """Drop the leaves a prepared batch staged (its write failed)."""
        if len(self.tree) > self.count:
            self.tree.truncate(self.count)

    def mark_point(self) -> tuple[int, int, bytes]:
        """(entries, bytes, Merkle root) committed now: what write_mark records."""
        return self.count, self.end, self.root()

    def write_mark(self, point: tuple[int, int, bytes], undo_size: int | None = None) -> None:
        """Record `point` (entries, bytes, root) as the high-water mark
        (blocking; after the records' fsync, before any of them is
        acknowledged).  A failure stops appends until a restart: the records
        are on disk but not under the mark (a restart takes them in); the
        chain in memory ends at `undo_size` as before."""
        if self.mark is None:
            return
        try:
            self.mark.write(*point)
        except LedgerError as exc:
            self.store.broken = (f"{exc}; entries up to {point[0] - 1} are on disk but not under the "
                                 f"mark: appends are refused until a restart")
            if undo_size is not None:
                self.store.size = undo_size
            raise LedgerError(self.store.broken) from None

    def commit(self, batch: Batch) -> None:
        """Take a durable batch into the chain state."""
        if batch.start != self.count:
            raise LedgerError(f"batch starts at {batch.start}, but the chain has {self.count} entries")
        if len(self.tree) < batch.start + len(batch.hashes):
            raise LedgerError("commit of a batch that was not prepared last")
        off = batch.offset
        for n in batch.sizes:
            self.offsets.append(off)
            off += n
        self.end = off
        if batch.start == 0:
            self.genesis_hash = batch.hashes[0]
        self.count += len(batch.hashes)
        self.latest_hash = batch.hashes[-1]

    def append_many(self, datas) -> list[tuple[int, str]]:
        """Append several entries with one write and one fsync."""
        now = self._now()
        batch = self.prepare([(self.encode(d), now) for d in datas])
        try:
            self.write(batch)
        except BaseException:
            self.abort()
            raise
        self.commit(batch)
        return [(batch.start + i, h.hex()) for i, h in enumerate(batch.hashes)]

    def append(self, data) -> tuple[int, str]:
        """Append one entry; returns (index, hash hex) once it is on disk.
        The same steps as append_many([data]) (prepare, write, commit) without
        the Batch: one compiled call builds, hashes and stages the record."""
        tree = self.tree
        idx = self.count
        if len(tree) > idx:
            tree.truncate(idx)      # abort(): a batch prepared before and never committed
        store = self.store
        off = store.size
        rec, h = _record(data, idx, self.latest_hash, round(self.clock.wall(), 6), self.max_entry_bytes, tree)
        try:
            store.write(rec, off)
            if self.mark is not None:
                self.write_mark((idx + 1, off + len(rec), tree.root(idx + 1)), undo_size=off)
        except BaseException:
            tree.truncate(idx)
            raise
        self.offsets.append(off)
        self.end = off + len(rec)
        if idx == 0:
            self.genesis_hash = h
        self.count = idx + 1
        self.latest_hash = h
        return idx, h.hex()

    # -- reading ---------------------------------------------------------

    def root(self, size: int | None = None) -> bytes:
        """Merkle root of the first `size` entries (default: the committed chain)."""
        return self.tree.root(self.count if size is None else size)

    def _record_span(self, start: int, end: int) -> tuple[int, int]:
        a = self.offsets[start]
        b = self.offsets[end] if end < self.count else self.end
        return a, b

    def _stored_hash(self, index: int) -> bytes:
        a, b = self._record_span(index, index + 1)
        return self.store.read(b - HASH_LEN, HASH_LEN)

    def entries(self, start: int, end: int) -> list[dict]:
        """Entries [start, end) (end clamped to the chain length)."""
        end = min(end, self.count)
        if start < 0 or start > end:
            raise LedgerError(f"no entries {start}..{end} (chain length {self.count})")
        if start == end:
            return []
        a, b = self._record_span(start, end)
        blob = self.store.read(a, b - a)
        out = []
        for i in range(start, end):
            lo = self.offsets[i] - a
            hi = (self.offsets[i + 1] - a) if i + 1 < self.count else b - a
            out.append(decode_record(blob[lo:hi]))
        return out

    def entry(self, index: int) -> dict:
        if not 0 <= index < self.count:
            raise LedgerError(f"no entry {index} (chain length {self.count})", index=index)
        return self.entries(index, index + 1)[0]

    def manifest(self) -> dict:
        return {"chain_length": self.count,
                "genesis_hash": self.genesis_hash.hex(),
                "latest_hash": self.latest_hash.hex(),
                "merkle_root": self.root().hex(),
                "timestamp": self._now()}

    def proof(self, index: int, tree_size: int | None = None) -> dict:
        """Inclusion proof of entry `index` in the tree of `tree_size` entries."""
        n = self.count if tree_size is None else tree_size
        self._check_tree_size(n)
        if not 0 <= index < n:
            raise LedgerError(f"index {index} is not below tree_size {n}", index=index)
        return {"index": index, "tree_size": n, "root": self.root(n).hex(),
                "entry_hash": self._stored_hash(index).hex(),
                "path": [p.hex() for p in self.tree.inclusion_proof(index, n)]}

    def consistency(self, first: int, second: int | None = None) -> dict:
        """Consistency proof that the first `first` entries are a prefix of the first `second`."""
        m = self.count if second is None else second
        self._check_tree_size(m)
        if not 1 <= first <= m:
            raise LedgerError(f"consistency needs 1 <= first <= second, got first={first}, second={m}")
        return {"first": first, "second": m, "first_root": self.root(first).hex(),
                "second_root": self.root(m).hex(),
                "path": [p.hex() for p in self.tree.consistency_proof(first, m)]}

    def _check_tree_size(self, n: int) -> None:
        if not 1 <= n <= self.count:
            raise LedgerError(f"tree_size {n} out of range 1..{self.count} (the chain length)")

    def snapshot(self) -> tuple[int, int, bytes]:
        """(bytes, entries, Merkle root) committed now: what check() compares."""
        return self.end, self.count, self.root()

    def check(self, snap: tuple[int, int, bytes]) -> dict:
        """Recompute every hash, link and the Merkle root from the stored
        bytes and compare with `snap`.  Touches no mutable state, so the
        daemon runs it in a worker thread while appends go on."""
        size, count, root = snap
        store = self.store
        if isinstance(store, MemoryStore):
            buf, mm = store.contents(size), None
        else:
            mm = buf = store.map(size)
        try:
            res, out = verify_bytes(buf)
        finally:
            if mm is not None:
                mm.close()
        if out["valid"] and (res.count != count or out["merkle_root"] != root.hex()):
            out["valid"] = False
            out["first_bad_index"] = min(res.count, count)
            out["reason"] = "the stored chain differs from the one in memory"
        return out

    def verify(self) -> dict:
        """check() of the current state; sets `verified`."""
        out = self.check(self.snapshot())
        self.verified = out["valid"]
        return out

    def close(self) -> None:
        self.store.close()
        if self.mark is not None:
            self.mark.close()
