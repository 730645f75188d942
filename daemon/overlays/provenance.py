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
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid

from ..ledger.canonical import canonical

SCHEMA = 1
LEDGER_TYPE = "overlay.provenance"


def sha256_json(value) -> str:
    return hashlib.sha256(canonical(value)).hexdigest()


def run_id(overlay: str, version: str, capability: str, phase: str, payload, seed) -> str:
    """Deterministic when a seed is given (the same call has the same id), unique otherwise."""
    if seed is None:
        return uuid.uuid4().hex + uuid.uuid4().hex[:32]
    return sha256_json({"overlay": overlay, "version": version, "capability": capability,
                        "phase": phase, "payload": payload, "seed": seed})


def record_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


class ProvenanceError(Exception):
    pass


class ProvenanceLog:
    """The file and its in-memory index (line offsets, run_id -> seqs)."""

    def __init__(self, path: str):
        self.path = path
        self.fd: int | None = None
        self.offsets: list[int] = []   # byte offset of each line
        self.hashes: list[str] = []    # record hash of each line
        self.by_run: dict[str, list[int]] = {}
        self.size = 0
        self.torn: int = 0             # bytes cut off at open (a torn last line)

    def open(self) -> "ProvenanceLog":
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        with open(self.path, "rb") as fh:
            data = fh.read()
        good = data.rfind(b"\n") + 1
        if good < len(data):
            tail = data[good:]
            self.torn = len(tail)
            with open(self.path + ".torn", "ab") as fh:
                fh.write(tail + b"\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.ftruncate(self.fd, good)
            os.fsync(self.fd)
            data = data[:good]
        pos = 0
        for line in data.splitlines():
            self._index(line, pos)
            pos += len(line) + 1
        self.size = pos
        return self

    def _index(self, line: bytes, pos: int) -> None:
        seq = len(self.offsets)
        self.offsets.append(pos)
        self.hashes.append(record_hash(line))
        try:
            rid = json.loads(line).get("run_id")
        except (ValueError, AttributeError):
            rid = None
        if isinstance(rid, str):
            self.by_run.setdefault(rid, []).append(seq)

    @property
    def count(self) -> int:
        return len(self.offsets)

    def last_hash(self) -> str:
        return self.hashes[-1] if self.hashes else "0" * 64

    def append(self, record: dict) -> tuple[int, str]:
        """Write one record durably (write + fsync); returns (seq, record hash).
        The record gets `seq` and `prev` (the previous record's hash) here."""
        seq = self.count
        record = dict(record, seq=seq, prev=self.last_hash())
        line = canonical(record)
        if b"\n" in line:      # canonical JSON escapes control characters; never true
            raise ProvenanceError("a record must be one line")
        buf = line + b"\n"
        n = 0
        while n < len(buf):
            n += os.write(self.fd, buf[n:])
        os.fsync(self.fd)
        self._index(line, self.size)
        self.size += len(buf)
        return seq, self.hashes[-1]

    def read_line(self, seq: int) -> bytes:
        start = self.offsets[seq]
        end = self.offsets[seq + 1] if seq + 1 < self.count else self.size
        return os.pread(self.fd, end - start - 1, start)

    def get(self, seq: int) -> dict:
        return json.loads(self.read_line(seq))

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def read_lines(path: str) -> list[bytes]:
    """Every whole line of a log file, as written (a torn tail is left out)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return []
    end = data.rfind(b"\n") + 1
    return data[:end].splitlines()


def verify(lines: list[bytes], anchors: list[dict]) -> dict:
    """Check log lines against the ledger's overlay.provenance entries, in order.

    `anchors`: the ledger entries' data in ledger order, each {seq, run_id,
    record_hash}.  Returns {ok, records, anchored, first_bad?}; first_bad
    names the record's line (seq), run_id when readable, and why."""
    out = {"ok": True, "records": len(lines), "anchored": len(anchors)}
    where = {a.get("record_hash"): i for i, a in enumerate(anchors)}
    prev = "0" * 64
    for i in range(max(len(lines), len(anchors))):
        bad = None
        if i >= len(lines):
            a = anchors[i]
            bad = {"seq": i, "run_id": a.get("run_id", ""),
                   "reason": f"record {i} is in the ledger but missing from the log (removed or truncated)"}
        else:
            line = lines[i]
            h = record_hash(line)
            try:
                rec = json.loads(line)
                rid = rec.get("run_id", "") if isinstance(rec, dict) else ""
            except ValueError:
                rec, rid = None, ""
            if i >= len(anchors):
                bad = {"seq": i, "run_id": rid if isinstance(rid, str) else "",
                       "reason": f"record {i} has no ledger entry (added to the log by hand, or "
                                 f"its anchor was never written)"}
            elif anchors[i].get("record_hash") != h:
                j = where.get(h)
                if j is not None:
                    reason = f"line {i} holds record {j} (records removed or reordered)"
                elif not isinstance(rec, dict):
                    reason = f"line {i} is not a JSON record (edited)"
                elif rec.get("seq") != i:
                    reason = (f"line {i} holds a record numbered {rec.get('seq')!r} whose hash is in no "
                              f"ledger entry (records removed or reordered, and edited)")
                else:
                    reason = f"record {i} was edited (its hash differs from ledger entry {anchors[i].get('ledger_index', '?')})"
                bad = {"seq": i, "run_id": rid if isinstance(rid, str) else "", "reason": reason}
            elif isinstance(rec, dict) and rec.get("prev") != prev:
                bad = {"seq": i, "run_id": rid, "reason": f"record {i} does not link to record {i - 1}"}
            prev = h
        if bad is not None:
            if "ledger_index" in (anchors[i] if i < len(anchors) else {}):
                bad["ledger_index"] = anchors[i]["ledger_index"]
            out["ok"] = False
            out["first_bad"] = bad
            return out
    return out


def anchors_from_entries(entries) -> list[dict]:
    """The overlay.provenance data of ledger entries (dicts with index and data)."""
    out = []
    for e in entries:
        d = e.get("data")
        if isinstance(d, dict) and d.get("type") == LEDGER_TYPE:
            out.append({"seq": d.get("seq"), "run_id": d.get("run_id", ""),
                        "record_hash": d.get("record_hash"), "ledger_index": e.get("index")})
    return out
