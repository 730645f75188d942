"""The ledger: a SHA3-256 hash chain with a Merkle tree over it, on a store.

`Ledger` is synchronous and usable without the daemon (`aal-core venom`,
`aalctl ledger`, benchmarks).  Appending is split in three steps so the
daemon can group-commit (commit.py) without holding the event loop during
fsync:

    batch = ledger.prepare(items)   pure: indices, preimages, hashes
    ledger.write(batch)             blocking: one write + one fsync
    ledger.commit(batch)            in memory: chain tail, Merkle tree

Only `commit` changes state, and only after the bytes are durable, so a
failed write leaves the chain exactly as it was.
"""
from __future__ import annotations

import os
import time
from array import array
from dataclasses import dataclass

import orjson

from .. import ledger_core as _core
from ..ledger_canon import canonical as _canonical   # compiled; reference: canonical.canonical
from ..clock import SYSTEM, Clock
from ..errors import LedgerError
from ..log import get_logger
from .canonical import EntryError, canonical_data, preimage
from .store import HASH_LEN, HEADER_LEN, MAGIC, FileStore, MemoryStore

log = get_logger("ledger")

ZERO_HASH = b"\x00" * HASH_LEN
FORMAT = "aal-core-ledger/1"
GENESIS_DATA = {"genesis": True, "format": FORMAT, "hash": "sha3-256",
                "canonical_json": "rfc8785", "merkle": "rfc9162"}
MAX_GET = 1000


@dataclass(frozen=True)
class Batch:
    """Records ready to write: they chain onto the ledger as it was when prepared."""

    start: int              # index of the first record
    offset: int             # byte offset it goes to
    blob: bytes             # framed records, concatenated
    hashes: tuple           # raw 32-byte hashes, one per record
    sizes: tuple            # framed size of each record


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
        self.latest_hash = ZERO_HASH
        self.genesis_hash = ZERO_HASH
        self.verified = False
        self.torn: ScanResult | None = None

    # -- opening ---------------------------------------------------------

    @classmethod
    def open(cls, path: str, *, clock: Clock = SYSTEM, create: bool = True,
             repair_torn_tail: bool = True, max_entry_bytes: int = 65536) -> "Ledger":
        """Open (creating with a genesis entry if absent) and verify a ledger
        file.  A torn last record is cut off with a log line; any other damage
        raises LedgerError naming the first bad index.  With
        repair_torn_tail=False the file is opened read-only and left as is
        (a torn tail is then just not read; see `torn`)."""
        if not os.path.exists(path):
            if not create:
                raise LedgerError(f"no ledger at {path}")
            ledger = cls(MemoryStore(), clock=clock)
            genesis = ledger.prepare([(canonical_data(GENESIS_DATA), ledger._now())])
            FileStore.create(path, genesis.blob)
            log.info("ledger_created", path=path, genesis_hash=genesis.hashes[0].hex())
        store = FileStore.open(path, writable=repair_torn_tail)
        try:
            ledger = cls(store, clock=clock, max_entry_bytes=max_entry_bytes)
            ledger._load(repair_torn_tail)
        except BaseException:
            store.close()
            raise
        return ledger

    @classmethod
    def memory(cls, *, clock: Clock = SYSTEM, max_entry_bytes: int = 1 << 23) -> "Ledger":
        """A ledger kept in memory only (benchmarks, tests, dry runs)."""
        ledger = cls(MemoryStore(MAGIC), clock=clock, max_entry_bytes=max_entry_bytes)
        ledger.append(GENESIS_DATA)
        ledger.verified = True
        return ledger

    def _load(self, repair: bool) -> None:
        store = self.store
        size = store.file_size()
        store.size = size
        mm = store.map(size)
        try:
            res, offsets = scan_bytes(mm, self.tree)
        finally:
            if mm is not None:
                mm.close()
        if res.status == "corrupt":
            where = f"entry {res.count}" if res.count or res.end else "header"
            raise LedgerError(f"ledger {store.path} is damaged at {where} (byte {res.end}): {res.reason}. "
                              f"Refusing to start; nothing was changed. Inspect it with "
                              f"`aalctl ledger verify {store.path}`",
                              index=res.count if res.end else None)
        self.offsets.frombytes(offsets)
        self.count = res.count
        self.latest_hash = res.last_hash
        self.genesis_hash = self._stored_hash(0)
        if res.status == "torn":
            self.torn = res
        if res.status == "torn" and repair:
            store.truncate(res.end)
            log.warning("ledger_torn_tail", path=store.path, bytes=res.torn_bytes, index=res.count,
                        kept=res.count)
        store.size = res.end
        self.verified = True
        log.info("ledger_verified", path=store.path, entries=self.count, seconds=f"{res.seconds:.3f}",
                 merkle_root=self.root().hex())

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
        """Frame `items` ((canonical_data, timestamp) pairs) as the next records."""
        prev, idx = self.latest_hash, self.count
        frames, hashes, sizes = [], [], []
        for data_c, ts in items:
            pre = preimage(data_c, idx, prev.hex(), ts)
            h = _core.sha3_256(pre)
            f = _core.frame(pre, h)
            frames.append(f)
            hashes.append(h)
            sizes.append(len(f))
            prev = h
            idx += 1
        return Batch(self.count, self.store.size, b"".join(frames), tuple(hashes), tuple(sizes))

    def write(self, batch: Batch) -> None:
        """Make `batch` durable (blocking; safe to run in a worker thread)."""
        self.store.write(batch.blob, batch.offset)

    def commit(self, batch: Batch) -> None:
        """Take a durable batch into the chain state."""
        if batch.start != self.count:
            raise LedgerError(f"batch starts at {batch.start}, but the chain has {self.count} entries")
        off = batch.offset
        for h, n in zip(batch.hashes, batch.sizes):
            self.offsets.append(off)
            self.tree.append(h)
            off += n
        if batch.start == 0:
            self.genesis_hash = batch.hashes[0]
        self.count += len(batch.hashes)
        self.latest_hash = batch.hashes[-1]

    def append_many(self, datas) -> list[tuple[int, str]]:
        """Append several entries with one write and one fsync."""
        now = self._now()
        batch = self.prepare([(self.encode(d), now) for d in datas])
        self.write(batch)
        self.commit(batch)
        return [(batch.start + i, h.hex()) for i, h in enumerate(batch.hashes)]

    def append(self, data) -> tuple[int, str]:
        """Append one entry; returns (index, hash hex) once it is on disk."""
        return self.append_many([data])[0]

    # -- reading ---------------------------------------------------------

    def root(self, size: int | None = None) -> bytes:
        return self.tree.root(size)

    def _record_span(self, start: int, end: int) -> tuple[int, int]:
        a = self.offsets[start]
        b = self.offsets[end] if end < self.count else self.store.size
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
        return self.store.size, self.count, self.root()

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
