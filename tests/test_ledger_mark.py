"""The ledger's high-water mark: nothing acknowledged is lost silently.

Every case builds a real ledger through the real daemon (ledger.append over
the socket), damages it with plain file operations, runs `aalctl ledger
verify` on it offline, then starts the real daemon on it: damage at or below
the mark refuses the start (exit 4, event=fatal, the index), a torn write
beyond it is cut off and logged, and the offline verdict is the daemon's.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys

import pytest

from aal_core.clock import ManualClock
from aal_core.ledger import Ledger
from aal_core.ledger.canonical import canonical_data
from aal_core.ledger.mark import MARK_FILE_LEN, SLOT_STRIDE, read_mark
from aal_core.ledger.store import MAGIC, MemoryStore
from helpers import AAL_CORE, AALCTL, short_tmpdir, start_daemon, without_systemd_env

NO_VENOM = "[venom]\nenabled = false\n"
ACKED = 10     # appends acknowledged over the socket (+ the genesis entry)


def ledger_file(base: str) -> str:
    return os.path.join(base, "state", "ledger.aal")


@pytest.fixture(scope="module")
def pristine():
    """A state directory whose ledger holds the genesis + ACKED acknowledged appends."""
    base = short_tmpdir()
    d = start_daemon(base=base, config=NO_VENOM)
    acks = [d.call("ledger.append", {"data": {"i": i, "pad": "p" * 40}}) for i in range(ACKED)]
    assert d.stop() == 0
    os.unlink(d.stderr_path)
    yield base, acks
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def case(pristine):
    """A private copy of the pristine state directory: (base, ledger path, acks)."""
    src, acks = pristine
    base = short_tmpdir()
    shutil.copytree(src, base, dirs_exist_ok=True)
    yield base, ledger_file(base), acks
    shutil.rmtree(base, ignore_errors=True)


def spans(path: str) -> list[tuple[int, int]]:
    """[start, end) byte span of each record, from the framing."""
    blob = open(path, "rb").read()
    out, pos = [], 8
    while pos + 8 <= len(blob):
        n = struct.unpack_from("<I", blob, pos)[0]
        if pos + 8 + n + 32 > len(blob):
            break
        out.append((pos, pos + 8 + n + 32))
        pos += 8 + n + 32
    return out


VERIFY_TOOL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "TOOLS",
                           "verify_ledger.py")


def offline(path: str) -> tuple[int, dict]:
    """`aalctl ledger verify --json` (and TOOLS/verify_ledger.py, which must agree)."""
    out = subprocess.run([AALCTL, "ledger", "verify", "--json", path], capture_output=True, text=True)
    assert out.returncode in (0, 1, 3), out.stderr
    res = json.loads(out.stdout)
    tool = subprocess.run([sys.executable, VERIFY_TOOL, path, "--json"], capture_output=True, text=True)
    assert tool.returncode == out.returncode, tool.stderr
    assert {k: v for k, v in json.loads(tool.stdout).items() if k != "seconds"} == \
           {k: v for k, v in res.items() if k != "seconds"}
    return out.returncode, res


def start_refused(base: str) -> str:
    """Start the daemon on `base`; it must refuse with exit 4. Its stderr."""
    proc = subprocess.run([AAL_CORE, "run", "--local", base, "--tegrastats", "off",
                           "--config", os.path.join(base, "aal-core.toml")],
                          capture_output=True, text=True, timeout=60, env=without_systemd_env())
    assert proc.returncode == 4, proc.stderr
    assert "event=fatal" in proc.stderr and "LedgerError" in proc.stderr
    return proc.stderr


def assert_refused(base: str, path: str, index, *words: str) -> None:
    """Offline verdict damaged (exit 1) at `index`; the daemon refuses at the
    same index; the files are left exactly as they were."""
    before = {p: open(p, "rb").read() for p in (path, path + ".mark") if os.path.exists(p)}
    rc, out = offline(path)
    assert rc == 1 and out["verdict"] == "damaged" and not out["valid"], out
    assert out["first_bad_index"] == index, out
    err = start_refused(base)
    if index is not None:
        assert f"damaged at entry {index}" in err, err
    for w in words:
        assert w in err and w in out["reason"], (w, err, out)
    after = {p: open(p, "rb").read() for p in (path, path + ".mark") if os.path.exists(p)}
    assert after == before       # never repaired


def append_unacknowledged(path: str) -> bytes:
    """Append one record with the store as the daemon would, then put the old
    mark back: the disk as a crash leaves it after the record's write and
    before its mark (the append was never acknowledged).  The old mark."""
    old_mark = open(path + ".mark", "rb").read()
    led = Ledger.open(path)
    led.append({"beyond": "the mark", "pad": "q" * 40})
    led.close()
    open(path + ".mark", "wb").write(old_mark)
    return old_mark


def started(base: str):
    return start_daemon("--config", os.path.join(base, "aal-core.toml"), base=base, wait=30.0)


# -- at or below the mark: refused ----------------------------------------

def test_zeroed_acknowledged_records_refuse_the_start(case):
    base, path, _ = case
    sp = spans(path)
    first = len(sp) - 5
    with open(path, "r+b") as fh:       # zero the last five complete, acknowledged records
        fh.seek(sp[first][0])
        fh.write(bytes(sp[-1][1] - sp[first][0]))
    assert_refused(base, path, first, "were acknowledged")


def test_a_file_cut_at_a_record_boundary_below_the_mark_refuses_the_start(case):
    base, path, _ = case
    sp = spans(path)
    os.truncate(path, sp[7][0])          # entries 0..6 intact, the file "looks" complete
    assert_refused(base, path, 7, "the file ends there", "were acknowledged")


def test_a_changed_record_refuses_the_start(case):
    base, path, _ = case
    sp = spans(path)
    blob = bytearray(open(path, "rb").read())
    pos = blob.index(b'"pad":"ppp', sp[4][0])
    blob[pos + 8] ^= 0x01
    open(path, "wb").write(blob)
    assert_refused(base, path, 4, "hash mismatch")


def test_a_missing_ledger_with_a_mark_refuses_the_start(case):
    base, path, _ = case
    os.unlink(path)
    assert_refused(base, path, 0, "missing")
    assert not os.path.exists(path)      # not re-created with a fresh genesis


def test_a_consistent_chain_other_than_the_acknowledged_one_refuses_the_start(case):
    """Every hash and link verifies, but it is not what was acknowledged:
    only the mark's root can tell (a rewritten history)."""
    base, path, _ = case
    mark = read_mark(path + ".mark")
    other = Ledger(MemoryStore(MAGIC), clock=ManualClock())
    ro = Ledger.open(path, repair_torn_tail=False)
    genesis = ro.entry(0)
    ro.close()
    b = other.prepare([(canonical_data(genesis["data"]), genesis["timestamp"])])
    other.store.write(b.blob, b.offset)
    other.commit(b)
    for i in range(mark.entries - 1):
        other.append({"i": i, "pad": "P" * 40})      # same count and sizes, other data
    open(path, "wb").write(other.store.contents())
    assert_refused(base, path, mark.entries - 1, "not the ones acknowledged")


def test_a_corrupt_mark_refuses_the_start(case):
    base, path, _ = case
    with open(path + ".mark", "r+b") as fh:     # damage both slots
        for off in (40, SLOT_STRIDE + 40):
            fh.seek(off)
            fh.write(b"\xff")
    assert_refused(base, path, None, "high-water mark", "damaged")


def test_one_torn_mark_slot_falls_back_to_the_other(case):
    """A crash while a slot is rewritten leaves the other, older one: the
    start uses it and takes in the records beyond it (fsync'd before)."""
    base, path, acks = case
    m = read_mark(path + ".mark")
    with open(path + ".mark", "r+b") as fh:
        fh.seek((m.generation % 2) * SLOT_STRIDE + 70)   # the newest slot's checksum
        fh.write(b"\x00\x00\x00")
    older = read_mark(path + ".mark")
    assert older.generation == m.generation - 1 and older.entries == m.entries - 1
    rc, out = offline(path)
    assert rc == 0 and out["verdict"] == "ok"
    d = started(base)
    try:
        assert d.call("ledger.manifest")["chain_length"] == ACKED + 1
        assert "ledger_mark_advanced" in d.log()
    finally:
        assert d.stop() == 0
    assert read_mark(path + ".mark").entries == ACKED + 1


def test_a_missing_mark_of_a_ledger_created_with_one_refuses_the_start(case):
    base, path, _ = case
    os.unlink(path + ".mark")
    assert_refused(base, path, None, "high-water mark file is missing")


# -- beyond the mark: a torn write, cut off --------------------------------

def _torn_start(base, path, want_bytes):
    rc, out = offline(path)
    assert rc == 3 and out["verdict"] == "torn", out
    assert out["chain_length"] == ACKED + 1 and out["torn_bytes"] == want_bytes
    d = started(base)
    try:
        log = d.log()
        assert "event=ledger_torn_tail" in log, log
        line = next(ln for ln in log.splitlines() if "ledger_torn_tail" in ln)
        assert f"bytes={want_bytes}" in line and f"index={ACKED + 1}" in line, line
        assert d.call("ledger.manifest")["chain_length"] == ACKED + 1
        assert d.call("ledger.verify")["valid"]
        r = d.call("ledger.append", {"data": {"after": "torn"}})
        assert r["index"] == ACKED + 1
    finally:
        assert d.stop() == 0
    assert offline(path)[0] == 0


def test_a_torn_last_write_beyond_the_mark_is_cut_off(case):
    base, path, _ = case
    append_unacknowledged(path)
    a, b = spans(path)[-1]
    cut = a + (b - a) // 2
    os.truncate(path, cut)
    _torn_start(base, path, cut - a)


def test_a_full_length_garbage_frame_beyond_the_mark_is_a_torn_write(case):
    """The frame header is whole and checks, the payload is garbage (pages
    of one write reach the disk in any order): still never acknowledged."""
    base, path, _ = case
    append_unacknowledged(path)
    a, b = spans(path)[-1]
    with open(path, "r+b") as fh:
        fh.seek(a + 8)
        fh.write(b"\xa5" * (b - a - 8))
    _torn_start(base, path, b - a)


def test_complete_records_beyond_the_mark_are_kept_and_the_mark_advanced(case):
    base, path, _ = case
    append_unacknowledged(path)
    rc, out = offline(path)
    assert rc == 0 and out["verdict"] == "ok" and out["chain_length"] == ACKED + 2
    d = started(base)
    try:
        assert d.call("ledger.manifest")["chain_length"] == ACKED + 2
        assert "ledger_mark_advanced" in d.log() and "ledger_torn_tail" not in d.log()
    finally:
        assert d.stop() == 0
    assert read_mark(path + ".mark").entries == ACKED + 2


# -- without a mark: upgrade from a ledger that predates it -----------------

OLD_GENESIS = {"genesis": True, "format": "aal-core-ledger/1", "hash": "sha3-256",
               "canonical_json": "rfc8785", "merkle": "rfc9162"}


def _legacy_ledger(path: str, n: int) -> bytes:
    """The bytes the version before the mark wrote: its genesis, n entries, no mark file."""
    clock = ManualClock()
    led = Ledger(MemoryStore(MAGIC), clock=clock)
    b = led.prepare([(canonical_data(OLD_GENESIS), led._now())])
    led.store.write(b.blob, b.offset)
    led.commit(b)
    for i in range(n):
        clock.advance(1)
        led.append({"old": i})
    blob = led.store.contents()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").write(blob)
    return blob


def test_a_ledger_from_before_the_mark_is_adopted_and_says_so():
    base = short_tmpdir()
    try:
        path = ledger_file(base)
        blob = _legacy_ledger(path, 6)
        open(path, "ab").write(b"\x40\x00")      # and a torn tail, as the old rules cut it
        rc, out = offline(path)
        assert rc == 3 and out["verdict"] == "torn" and out["mark"] is None
        assert out["mark_adopt"] == "legacy" and out["chain_length"] == 7
        d = start_daemon(base=base, config=NO_VENOM)
        try:
            log = d.log()
            assert "event=ledger_mark_adopted" in log and "predates" in log, log
            assert "event=ledger_torn_tail" in log
            assert d.call("ledger.manifest")["chain_length"] == 7
            d.call("ledger.append", {"data": {"new": 1}})
        finally:
            assert d.stop() == 0
        mark = read_mark(path + ".mark")
        assert mark.entries == 8 and open(path, "rb").read().startswith(blob)
        assert os.path.getsize(path + ".mark") == MARK_FILE_LEN
        # From now on the mark guards it like any other ledger.
        os.truncate(path, len(blob))
        assert offline(path)[0] == 1
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_genesis_only_ledger_without_its_mark_is_adopted(tmp_path, caplog):
    """A crash between creating the ledger and its mark: nothing was acknowledged."""
    path = str(tmp_path / "g.aal")
    Ledger.open(path).close()
    os.unlink(path + ".mark")
    assert offline(path)[1]["mark_adopt"] == "created"
    led = Ledger.open(path)
    assert led.count == 1 and any(r.msg == "ledger_mark_adopted" for r in caplog.records)
    led.close()
    assert read_mark(path + ".mark").entries == 1
