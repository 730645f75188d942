"""The provenance log: one JSON line per overlay call, append-only, fsynced.

Each line is the canonical JSON (RFC 8785, the ledger's) of one record; the
record's hash is SHA-256 of that line, and the daemon appends
`{"type": "overlay.provenance", "seq": N, "run_id": ..., "record_hash": ...}`
to the SHA3 ledger after the line is on disk.  `verify(lines, anchors)` then
walks both in order and names the first record that was edited, removed,
reordered or added by hand.

A crash can leave a torn last line (written in part, never acknowledged):
`ProvenanceLog.open` detects it, moves its bytes to `<file>.torn` and cuts
the log back to the last whole line.

Bounded at any size: the file is rotated at `max_bytes` into segments
`<file>.<first seq, 12 digits>`, each with an offsets file `.idx` (8 bytes
per line), and the oldest beyond `keep` are deleted (0: keep them all; a
deletion is announced in the ledger by the unit, so verify knows where the
log legitimately begins).  In memory: the active segment's offsets only,
and a bounded cache of run_id lookups; an overlay's records are found by
reading the files backwards (for the latest), never held.

run_id index, persistent and rebuilt from the log whenever it is torn,
stale or missing (the log is the truth; a hit is confirmed against the
line, so a bad index can never answer a wrong record):
- `<file>.rid`, beside the active file: one 16-byte entry per line, in log
  order (key, seq), appended after the line is fsynced (not fsynced itself:
  at open a torn entry is cut, entries past the log or whose last one does
  not match its line are dropped, the missing ones rebuilt); in memory its
  keys (an `array('Q')`, 8 bytes a line), searched at C speed.
- `<segment>.rid`, written and fsynced at rotation before the segment's
  rename: the (key, seq) pairs sorted, 16 bytes each, binary-searched with
  preads: O(log n) reads per segment.
key = the 8-byte BLAKE2b digest of the run_id, read little-endian.
"""
from __future__ import annotations

import array
import hashlib
import json
import os
import time
import uuid
from collections import OrderedDict, deque

from ..ledger.canonical import canonical

SCHEMA = 1
LEDGER_TYPE = "overlay.provenance"
PRUNE_TYPE = "overlay.provenance.pruned"
CHUNK = 1 << 20


def sha256_json(value) -> str:
    return hashlib.sha256(canonical(value)).hexdigest()


def run_id(overlay: str, version: str, capability: str, phase: str, payload, seed) -> str:
    """Deterministic when a seed is given (the same call has the same id), unique otherwise."""
    if seed is None:
        return uuid.uuid4().hex + uuid.uuid4().hex[:32]
    return sha256_json({"overlay": overlay, "version": version, "capability": capability,
                        "phase": phase, "payload": payload, "seed": seed})


def rid_key(run_id) -> int:
    """The index's 64-bit key of a run_id (any string)."""
    return int.from_bytes(hashlib.blake2b(str(run_id).encode("utf-8", "surrogatepass"),
                                          digest_size=8).digest(), "little")


def _line_key(line: bytes):
    rid = _run_id(line)
    return rid_key(rid) if isinstance(rid, str) else 0


RID = 16            # bytes of an index entry: key u64, seq u64, little-endian


def _pack(key: int, seq: int) -> bytes:
    return key.to_bytes(8, "little") + seq.to_bytes(8, "little")


def record_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


class ProvenanceError(Exception):
    pass


def _fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Segment:
    """A rotated, read-only segment: lines first..first+count-1, with its
    offsets (`.idx`) and its sorted run_id index (`.rid`)."""

    def __init__(self, path: str, first: int):
        self.path, self.first = path, first
        self.count = os.path.getsize(path + ".idx") // 8
        self.size = os.path.getsize(path)
        self.rebuilt_rid = False
        if not self._rid_ok():
            self.write_rid(sorted((_line_key(line), first + i) for i, line in enumerate(self.lines())))
            self.rebuilt_rid = True

    def _rid_ok(self) -> bool:
        try:
            return os.path.getsize(self.path + ".rid") == RID * self.count
        except OSError:
            return False

    def write_rid(self, pairs) -> None:
        """The sorted (key, seq) index, written whole (tmp, fsync, rename)."""
        tmp = self.path + ".rid.tmp"
        with open(tmp, "wb") as fh:
            fh.write(b"".join(_pack(k, q) for k, q in pairs))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path + ".rid")
        _fsync_dir(self.path)

    def lines(self):
        with open(self.path, "rb") as fh:
            carry, pos = b"", 0
            while pos < self.size:
                chunk = fh.read(min(CHUNK, self.size - pos))
                if not chunk:
                    break
                pos += len(chunk)
                parts = (carry + chunk).split(b"\n")
                carry = parts.pop()
                yield from parts

    def find(self, key: int) -> list[int]:
        """The seqs whose key is `key`: a binary search in `.rid` (O(log n)
        preads); a scan of the segment if its index went away meanwhile
        (rebuilt at the next start)."""
        try:
            fd = os.open(self.path + ".rid", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return [self.first + i for i, line in enumerate(self.lines()) if _line_key(line) == key]
        try:
            lo, hi = 0, self.count
            while lo < hi:
                mid = (lo + hi) // 2
                if int.from_bytes(os.pread(fd, 8, mid * RID), "little") < key:
                    lo = mid + 1
                else:
                    hi = mid
            out = []
            while lo < self.count:
                e = os.pread(fd, RID * 64, lo * RID)
                for j in range(0, len(e) - RID + 1, RID):
                    if int.from_bytes(e[j:j + 8], "little") != key:
                        return out
                    out.append(int.from_bytes(e[j + 8:j + 16], "little"))
                lo += len(e) // RID
                if not e:
                    break
            return out
        finally:
            os.close(fd)

    def offset(self, i: int) -> int:
        with open(self.path + ".idx", "rb") as fh:
            fh.seek(8 * i)
            return int.from_bytes(fh.read(8), "little")

    def line(self, i: int) -> bytes:
        start = self.offset(i)
        end = self.offset(i + 1) if i + 1 < self.count else self.size
        with open(self.path, "rb") as fh:
            fh.seek(start)
            return fh.read(end - start - 1)


class ProvenanceLog:
    """The active file, its rotated segments and a bounded index."""

    def __init__(self, path: str, max_bytes: int = 64 << 20, keep: int = 0, cache: int = 4096):
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self.fd: int | None = None
        self.segments: list[_Segment] = []     # oldest first
        self.first = 0                         # seq of the active file's first line
        self.offsets = array.array("Q")        # of the active file's lines
        self.keys = array.array("Q")           # their run_id keys (the active `.rid`)
        self.rid_fd: int | None = None
        self.rid_rebuilt = 0                   # entries rebuilt from the log at open
        self.size = 0
        self._last_hash = "0" * 64
        self._cache: OrderedDict[str, list[int]] = OrderedDict()
        self._cache_max = cache
        self.torn: int = 0             # bytes cut off at open (a torn last line)
        self.pruned_before = 0         # first seq still on disk (older segments deleted)
        self.last_fsync_s = 0.0        # the last append's fsync (bench/overlays.py --stages)

    # -------------------------------------------------------------- open

    def _find_segments(self) -> None:
        d, base = os.path.split(self.path)
        segs = []
        for name in os.listdir(d or "."):
            rest = name[len(base) + 1:] if name.startswith(base + ".") else ""
            if len(rest) == 12 and rest.isdigit():
                full = os.path.join(d, name)
                if os.path.exists(full + ".idx"):
                    segs.append(_Segment(full, int(rest)))
            elif rest.endswith(".idx") and rest[:-4].isdigit() and not os.path.exists(
                    os.path.join(d, name[:-4])):
                os.unlink(os.path.join(d, name))    # a rotation cut short before its rename
            elif rest.endswith(".rid.tmp") or (rest.endswith(".rid") and rest[:-4].isdigit()
                                               and not os.path.exists(os.path.join(d, name[:-4]))):
                try:
                    os.unlink(os.path.join(d, name))    # an index write cut short, or a deleted segment's
                except FileNotFoundError:
                    pass
        self.segments = sorted(segs, key=lambda s: s.first)
        if self.segments:
            last = self.segments[-1]
            self.first = last.first + last.count
            self.pruned_before = self.segments[0].first

    def open(self) -> "ProvenanceLog":
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        self._find_segments()
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        size = os.fstat(self.fd).st_size
        # One pass in chunks: offsets of whole lines; the last whole line's hash.
        pos, last_start, last_end = 0, None, None
        carry = b""
        with open(self.path, "rb") as fh:
            while True:
                chunk = fh.read(CHUNK)
                if not chunk:
                    break
                data = carry + chunk
                base = pos - len(carry)
                i = 0
                while True:
                    j = data.find(b"\n", i)
                    if j < 0:
                        break
                    self.offsets.append(base + i)
                    last_start, last_end = base + i, base + j
                    i = j + 1
                carry = data[i:]
                pos += len(chunk)
        good = (last_end + 1) if last_end is not None else 0
        if good < size:
            tail = os.pread(self.fd, size - good, good)
            self.torn = len(tail)
            with open(self.path + ".torn", "ab") as fh:
                fh.write(tail + b"\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.ftruncate(self.fd, good)
            os.fsync(self.fd)
        self.size = good
        self._open_rid()
        if last_start is not None:
            self._last_hash = record_hash(os.pread(self.fd, last_end - last_start, last_start))
        elif self.segments:
            s = self.segments[-1]
            self._last_hash = record_hash(s.line(s.count - 1)) if s.count else "0" * 64
        return self

    def _open_rid(self) -> None:
        """Load the active file's run_id index; keep what matches the log, rebuild the rest."""
        rid_path = self.path + ".rid"
        self.rid_fd = os.open(rid_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        with open(rid_path, "rb") as fh:
            data = fh.read(RID * len(self.offsets))     # a torn entry, or entries past the log: dropped
        n = len(data) // RID
        keys = array.array("Q")
        ok = True
        for j in range(n):
            if int.from_bytes(data[j * RID + 8:j * RID + 16], "little") != self.first + j:
                ok = False               # stale (a rotation cut short) or garbled
                break
        if ok and n:
            last = self.read_line(self.first + n - 1)
            ok = int.from_bytes(data[(n - 1) * RID:(n - 1) * RID + 8], "little") == _line_key(last)
        if ok:
            keys.frombytes(b"".join(data[j * RID:j * RID + 8] for j in range(n)))
            if not _LITTLE:
                keys.byteswap()
        else:
            n = 0
        os.ftruncate(self.rid_fd, n * RID)
        missing = []
        for j in range(n, len(self.offsets)):
            k = _line_key(self.read_line(self.first + j))
            keys.append(k)
            missing.append(_pack(k, self.first + j))
        if missing:
            os.pwrite(self.rid_fd, b"".join(missing), n * RID)
        self.rid_rebuilt = len(missing)
        self.keys = keys

    def _find_active(self, key: int) -> list[int]:
        out, i = [], 0
        try:
            while True:
                i = self.keys.index(key, i)
                out.append(self.first + i)
                i += 1
        except ValueError:
            return out

    # ------------------------------------------------------------ access

    @property
    def count(self) -> int:
        return self.first + len(self.offsets)

    def last_hash(self) -> str:
        return self._last_hash

    def read_line(self, seq: int) -> bytes:
        if seq >= self.first:
            i = seq - self.first
            start = self.offsets[i]
            end = self.offsets[i + 1] if i + 1 < len(self.offsets) else self.size
            return os.pread(self.fd, end - start - 1, start)
        for s in self.segments:
            if s.first <= seq < s.first + s.count:
                return s.line(seq - s.first)
        raise KeyError(f"provenance record {seq} is not on disk (pruned before {self.pruned_before})")

    def has(self, seq: int) -> bool:
        return self.pruned_before <= seq < self.count

    def get(self, seq: int) -> dict:
        return json.loads(self.read_line(seq))

    def hash_of(self, seq: int) -> str:
        return record_hash(self.read_line(seq))

    def _files(self):
        """(first seq, path, end) of every file on disk, oldest first."""
        for s in self.segments:
            yield s.first, s.path, s.size
        yield self.first, self.path, self.size

    def snapshot(self) -> list:
        """[(first seq, open file, end)] of every file as it is now: reading
        them later sees exactly these lines, whatever is appended, rotated
        (a rename) or pruned (an unlink) meanwhile.  Close with close_snapshot."""
        out = []
        try:
            for first, path, end in self._files():
                out.append((first, open(path, "rb"), end))
        except BaseException:
            close_snapshot(out)
            raise
        return out

    def lines(self, start: int = 0):
        """(seq, line) from `start` on, oldest first, read in chunks."""
        snap = self.snapshot()
        try:
            yield from snapshot_lines(snap, start)
        finally:
            close_snapshot(snap)

    def lines_backwards(self):
        """(seq, line) newest first, read backwards in chunks."""
        files = list(self._files())
        for first, path, end in reversed(files):
            with open(path, "rb") as fh:
                pos, carry = end, b""
                seq = None
                while pos > 0:
                    n = min(CHUNK, pos)
                    pos -= n
                    fh.seek(pos)
                    data = fh.read(n) + carry
                    parts = data.split(b"\n")
                    carry = parts[0] if pos > 0 else b""
                    body = parts[1:] if pos > 0 else parts
                    for line in reversed(body):
                        if not line:
                            continue
                        if seq is None:
                            seq = first + self._count_of(first, path) - 1
                        yield seq, line
                        seq -= 1

    def _count_of(self, first: int, path: str) -> int:
        if path == self.path:
            return len(self.offsets)
        return next(s.count for s in self.segments if s.first == first)

    def find_run(self, run_id: str) -> list[int]:
        """The seqs of records with this run_id, oldest first: through the
        run_id index (a binary search per segment, the active file's keys in
        memory), each hit confirmed against its line; at most `cache`
        answers kept."""
        hit = self._cache.get(run_id)
        if hit is not None:
            self._cache.move_to_end(run_id)
            return list(hit)
        key = rid_key(run_id)
        cand: list[int] = []
        for s in self.segments:
            cand += s.find(key)
        cand += self._find_active(key)
        out = [seq for seq in cand if _run_id(self.read_line(seq)) == run_id]
        self._remember(run_id, out)
        return list(out)

    def _remember(self, run_id: str, seqs: list[int]) -> None:
        self._cache[run_id] = seqs
        self._cache.move_to_end(run_id)
        while len(self._cache) > self._cache_max:
            self._cache.popitem(last=False)

    def latest(self, limit: int, overlay: str | None = None, start: int | None = None) -> list[dict]:
        """Up to `limit` records in log order: from `start` on, or the last
        ones (of `overlay` when given), scanning from the end."""
        if start is not None:
            out = []
            needle = b'"overlay":' + json.dumps(overlay).encode() if overlay is not None else None
            for _, line in self.lines(max(start, self.pruned_before)):
                if needle is None or needle in line:
                    rec = json.loads(line)
                    if overlay is None or rec.get("overlay") == overlay:
                        out.append(rec)
                        if len(out) >= limit:
                            break
            return out
        got: deque = deque()
        needle = b'"overlay":' + json.dumps(overlay).encode() if overlay is not None else None
        if overlay is None:
            for seq in range(self.count - 1, max(self.pruned_before, self.count - limit) - 1, -1):
                got.appendleft(self.get(seq))
            return list(got)
        for _, line in self.lines_backwards():
            if needle in line:
                rec = json.loads(line)
                if rec.get("overlay") == overlay:
                    got.appendleft(rec)
                    if len(got) >= limit:
                        break
        return list(got)

    # ------------------------------------------------------------ append

    def append(self, record: dict) -> tuple[int, str]:
        """Write one record durably (write + fsync); returns (seq, record hash).
        The record gets `seq` and `prev` (the previous record's hash) here."""
        seq, line = self.prepare(record)
        self.write(line)
        return seq, self.commit(seq, line, record.get("run_id"))

    def prepare(self, record: dict) -> tuple[int, bytes]:
        """The record's line, numbered and linked (one writer at a time: the
        unit's write lock; `write` and `commit` must follow in order)."""
        seq = self.count
        line = canonical(dict(record, seq=seq, prev=self.last_hash()))
        if b"\n" in line:      # canonical JSON escapes control characters; never true
            raise ProvenanceError("a record must be one line")
        return seq, line

    def write(self, line: bytes) -> None:
        """The durable part (write + fsync; no Python objects touched, so the
        GIL is free for the loop meanwhile when run in a thread)."""
        buf = line + b"\n"
        n = 0
        try:
            while n < len(buf):
                n += os.write(self.fd, buf[n:])
            t0 = time.perf_counter()
            os.fsync(self.fd)
            self.last_fsync_s = time.perf_counter() - t0
        except OSError:
            try:                 # never acknowledged: no part of it stays before the next line
                os.ftruncate(self.fd, self.size)
            except OSError:
                pass
            raise

    def commit(self, seq: int, line: bytes, rid=None) -> str:
        """Account for a written line: offsets, chain head, run index."""
        self.offsets.append(self.size)
        self.size += len(line) + 1
        h = record_hash(line)
        self._last_hash = h
        k = rid_key(rid) if isinstance(rid, str) else 0
        self.keys.append(k)
        try:                  # not fsynced: rebuilt from the log at open when lost
            os.pwrite(self.rid_fd, _pack(k, seq), RID * (len(self.keys) - 1))
        except OSError:
            pass              # a short index is completed at the next open; lookups use memory
        if isinstance(rid, str) and rid in self._cache:
            self._cache[rid].append(seq)
        return h

    def rotate_if_full(self) -> list[int]:
        """Rotate the active file once it holds `max_bytes`; returns the first
        seqs of the segments deleted past `keep` (for the ledger)."""
        if self.max_bytes <= 0 or self.size < self.max_bytes or not self.offsets:
            return []
        seg = f"{self.path}.{self.first:012d}"
        tmp = seg + ".idx.tmp"
        with open(tmp, "wb") as fh:
            fh.write(self.offsets.tobytes() if self.offsets.itemsize == 8 and _LITTLE else
                     b"".join(o.to_bytes(8, "little") for o in self.offsets))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, seg + ".idx")
        pairs = sorted(zip(self.keys, range(self.first, self.count)))
        tmp = seg + ".rid.tmp"
        with open(tmp, "wb") as fh:
            fh.write(b"".join(_pack(k, q) for k, q in pairs))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, seg + ".rid")
        _fsync_dir(seg)
        os.rename(self.path, seg)       # the segment is whole: its idx and rid are already there
        os.close(self.fd)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        _fsync_dir(self.path)
        os.ftruncate(self.rid_fd, 0)    # a crash before this: its entries are past the (empty) log
        self.segments.append(_Segment(seg, self.first))
        self.first = self.count
        self.offsets = array.array("Q")
        self.keys = array.array("Q")
        self.size = 0
        pruned = []
        while self.keep > 0 and len(self.segments) > self.keep:
            old = self.segments.pop(0)
            os.unlink(old.path)
            os.unlink(old.path + ".idx")
            try:
                os.unlink(old.path + ".rid")
            except FileNotFoundError:
                pass
            pruned.append(old.first)
        if pruned:
            _fsync_dir(self.path)
            self.pruned_before = self.segments[0].first
            self._cache.clear()
        return pruned

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.rid_fd is not None:
            os.close(self.rid_fd)
            self.rid_fd = None


_LITTLE = array.array("Q", [1]).tobytes()[0] == 1


def snapshot_lines(snap, start: int = 0):
    """(seq, line) of a ProvenanceLog.snapshot from `start` on, in chunks."""
    for first, fh, end in snap:
        seq = first
        fh.seek(0)
        carry, pos = b"", 0
        while pos < end:
            chunk = fh.read(min(CHUNK, end - pos))
            if not chunk:
                break
            pos += len(chunk)
            parts = (carry + chunk).split(b"\n")
            carry = parts.pop()
            for line in parts:
                if seq >= start:
                    yield seq, line
                seq += 1


def close_snapshot(snap) -> None:
    for _, fh, _ in snap:
        fh.close()


def _run_id(line: bytes):
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    return rec.get("run_id") if isinstance(rec, dict) else None


def read_lines(path: str) -> list[bytes]:
    """Every whole line of one log file, as written (a torn tail is left out)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return []
    end = data.rfind(b"\n") + 1
    return data[:end].splitlines()


class Verifier:
    """Checks log lines against the ledger's overlay.provenance anchors, in
    order, fed in chunks (memory: a window of `window` anchors around the
    line being checked, used to name a moved record).  `start`: the first
    seq the log holds (older segments deleted, as the ledger says)."""

    def __init__(self, start: int = 0, window: int = 4096):
        self.start = start
        self.window = window
        self.i = start                        # the next seq to check
        self.lines: deque = deque()
        self.anchors: dict[int, dict] = {}    # seq position -> anchor, for [i - window, loaded)
        self.where: dict[str, int] = {}
        self.loaded = 0                       # anchors seen (positions 0..loaded-1)
        self.lines_seen = 0
        self.lines_done = self.anchors_done = False
        self.prev = "0" * 64 if start == 0 else None   # the hash the next record must link to
        self.result: dict | None = None

    def feed_anchors(self, anchors) -> None:
        for a in anchors:
            pos = self.loaded
            self.loaded += 1
            if pos < self.start:
                if pos == self.start - 1:
                    self.prev = a.get("record_hash")
                continue
            self.anchors[pos] = a
            self.where[a.get("record_hash")] = pos

    def feed_lines(self, lines) -> None:
        for line in lines:
            self.lines.append(line)
            self.lines_seen += 1

    def _bad(self, seq, rid, reason, anchor=None):
        bad = {"seq": seq, "run_id": rid if isinstance(rid, str) else "", "reason": reason}
        if anchor is not None and "ledger_index" in anchor:
            bad["ledger_index"] = anchor["ledger_index"]
        self.result = {"ok": False, "first_bad": bad}

    def run(self) -> bool:
        """Check what can be decided now; True once finished (self.result)."""
        while self.result is None:
            i = self.i
            if not self.lines:
                if not self.lines_done:
                    return False
                if i < self.loaded:
                    a = self.anchors.get(i, {})
                    self._bad(i, a.get("run_id", ""),
                              f"record {i} is in the ledger but missing from the log (removed or truncated)", a)
                elif not self.anchors_done:
                    return False
                else:
                    self.result = {"ok": True}
                break
            if not self.anchors_done and self.loaded <= i + self.window:
                return False
            line = self.lines.popleft()
            h = record_hash(line)
            try:
                rec = json.loads(line)
                rid = rec.get("run_id", "") if isinstance(rec, dict) else ""
            except ValueError:
                rec, rid = None, ""
            a = self.anchors.get(i)
            if self.prev is None:     # the first record after deleted segments whose anchor is unknown
                self.prev = rec.get("prev") if isinstance(rec, dict) else None
            if a is None:
                self._bad(i, rid, f"record {i} has no ledger entry (added to the log by hand, or "
                                  f"its anchor was never written)")
            elif a.get("record_hash") != h:
                j = self.where.get(h)
                if j is not None:
                    reason = f"line {i} holds record {j} (records removed or reordered)"
                elif not isinstance(rec, dict):
                    reason = f"line {i} is not a JSON record (edited)"
                elif rec.get("seq") != i:
                    reason = (f"line {i} holds a record numbered {rec.get('seq')!r} whose hash is in no "
                              f"ledger entry (records removed or reordered, and edited)")
                else:
                    reason = f"record {i} was edited (its hash differs from ledger entry {a.get('ledger_index', '?')})"
                self._bad(i, rid, reason, a)
            elif isinstance(rec, dict) and rec.get("prev") != self.prev:
                self._bad(i, rid, f"record {i} does not link to record {i - 1}", a)
            self.prev = h
            self.i += 1
            old = self.i - 1 - self.window
            if old in self.anchors:
                self.where.pop(self.anchors.pop(old).get("record_hash"), None)
        return True

    def finish(self) -> dict:
        self.lines_done = self.anchors_done = True
        self.run()
        out = dict(self.result)
        out["records"] = self.lines_seen
        out["anchored"] = self.loaded - self.start
        if self.start:
            out["pruned_before"] = self.start
        if not out["ok"]:
            out["first_bad"] = out.pop("first_bad")
        return out


def verify(lines, anchors, start: int = 0) -> dict:
    """Check log lines against the ledger's overlay.provenance entries, in order.

    `anchors`: the ledger entries' data in ledger order, each {seq, run_id,
    record_hash}; `lines` begin at seq `start`.  Returns {ok, records,
    anchored, first_bad?}; first_bad names the record's line (seq), run_id
    when readable, and why."""
    v = Verifier(start)
    v.feed_anchors(anchors)
    v.feed_lines(lines)
    return v.finish()


def anchors_from_entries(entries) -> list[dict]:
    """The overlay.provenance data of ledger entries (dicts with index and data)."""
    out = []
    for e in entries:
        d = e.get("data")
        if isinstance(d, dict) and d.get("type") == LEDGER_TYPE:
            out.append({"seq": d.get("seq"), "run_id": d.get("run_id", ""),
                        "record_hash": d.get("record_hash"), "ledger_index": e.get("index")})
    return out


def pruned_from_entries(entries) -> int:
    """The highest `before` of the ledger's overlay.provenance.pruned entries (0: none)."""
    best = 0
    for e in entries:
        d = e.get("data")
        if isinstance(d, dict) and d.get("type") == PRUNE_TYPE and isinstance(d.get("before"), int):
            best = max(best, d["before"])
    return best
