"""The ledger file and chain, without the daemon: entries and proofs against
an independent reference, a flipped byte anywhere found at the right index,
torn tails cut off (and nothing else), group commit, failed writes."""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import resource
import signal
import struct

import pytest

from aal_core.clock import ManualClock
from aal_core.errors import LedgerError
from aal_core.ledger import EntryError, Ledger, check_consistency, check_proof
from aal_core.ledger.cli import verify_file
from aal_core.ledger.commit import GroupCommitter

ZERO = "0" * 64


# -- independent reference: entry hashes and Merkle roots from scratch -------

def ref_number(x) -> str:
    # Enough of ECMAScript's rule for the values used here (ints, x.25 steps).
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def ref_entry_hash(index, timestamp, data, previous_hash) -> str:
    body = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    text = ('{"data":' + body + ',"index":' + str(index) + ',"previous_hash":"' + previous_hash
            + '","timestamp":' + ref_number(timestamp) + "}")
    return hashlib.sha3_256(text.encode("utf-8")).hexdigest()


def ref_root(hashes: list[bytes]) -> bytes:
    if len(hashes) == 1:
        return hashlib.sha3_256(b"\x00" + hashes[0]).digest()
    k = 1
    while k * 2 < len(hashes):
        k *= 2
    return hashlib.sha3_256(b"\x01" + ref_root(hashes[:k]) + ref_root(hashes[k:])).digest()


def make(tmp_path, n=12, name="l.aal", clock=None):
    clock = clock or ManualClock()
    path = str(tmp_path / name)
    led = Ledger.open(path, clock=clock)
    acks = []
    for i in range(n):
        clock.advance(0.25)
        acks.append(led.append({"seq": i, "note": "ü€" * (i % 3), "ok": i % 2 == 0, "n": None}))
    return led, path, acks


def test_chain_matches_the_reference(tmp_path):
    led, path, acks = make(tmp_path)
    entries = led.entries(0, 100)
    assert len(entries) == 13 and [e["index"] for e in entries] == list(range(13))
    assert entries[0]["previous_hash"] == ZERO
    assert entries[0]["data"]["genesis"] is True
    prev = ZERO
    for e in entries:
        assert e["previous_hash"] == prev
        assert e["hash"] == ref_entry_hash(e["index"], e["timestamp"], e["data"], prev)
        prev = e["hash"]
    for (i, h), e in zip(acks, entries[1:]):
        assert (i, h) == (e["index"], e["hash"])
    assert entries[5]["data"] == {"seq": 4, "note": "ü€", "ok": True, "n": None}
    raw = [bytes.fromhex(e["hash"]) for e in entries]
    m = led.manifest()
    assert m["chain_length"] == 13
    assert m["genesis_hash"] == entries[0]["hash"] and m["latest_hash"] == entries[-1]["hash"]
    assert m["merkle_root"] == ref_root(raw).hex()
    for size in (1, 2, 5, 8, 13):
        for i in range(size):
            p = led.proof(i, size)
            assert p["root"] == ref_root(raw[:size]).hex()
            assert p["entry_hash"] == entries[i]["hash"]
            assert check_proof(p)
            assert not check_proof(p, root=ref_root(raw[:size - 1]).hex()) if size > 1 else True
        for first in range(1, size + 1):
            c = led.consistency(first, size)
            assert c["first_root"] == ref_root(raw[:first]).hex()
            assert check_consistency(c)
    led.close()
    # Reopened: the same chain, still appendable.
    again = Ledger.open(path)
    assert again.manifest()["merkle_root"] == m["merkle_root"]
    i, h = again.append({"after": "reopen"})
    assert i == 13 and again.entry(13)["previous_hash"] == entries[-1]["hash"]
    assert again.verify()["valid"]
    again.close()


def _record_spans(path):
    """[(start, end)) byte span of each record, from the framing."""
    blob = open(path, "rb").read()
    spans, pos = [], 8
    while pos < len(blob):
        n = struct.unpack_from("<I", blob, pos)[0]
        spans.append((pos, pos + 8 + n + 32))
        pos += 8 + n + 32
    assert pos == len(blob)
    return blob, spans


def test_a_flipped_byte_anywhere_is_found_at_its_index(tmp_path):
    led, path, _ = make(tmp_path, n=6)
    led.close()
    blob, spans = _record_spans(path)
    bad = str(tmp_path / "bad.aal")
    for pos in range(len(blob)):
        want = None if pos < 8 else next(i for i, (a, b) in enumerate(spans) if a <= pos < b)
        for bit in (0, 7):
            tampered = bytearray(blob)
            tampered[pos] ^= 1 << bit
            with open(bad, "wb") as fh:
                fh.write(tampered)
            out = verify_file(bad)
            assert not out["valid"], (pos, bit)
            if want is None:
                assert "magic" in out["reason"]
            else:
                assert out["first_bad_index"] == want, (pos, bit, out)
                assert "torn_bytes" not in out, (pos, bit, out)
            with pytest.raises(LedgerError) as ei:
                Ledger.open(bad)
            assert ei.value.index == want
    # The daemon-facing error names the index and says nothing was changed.
    assert "nothing was changed" in str(ei.value)


def test_torn_tails_are_cut_off_and_logged(tmp_path, caplog):
    led, path, acks = make(tmp_path, n=4)
    led.close()
    # The mark before the last append: the state of a crash after the last
    # record's write began and before its mark was written (never acknowledged).
    mark_before = open(path + ".mark", "rb").read()
    led = Ledger.open(path)
    led.append({"seq": 4, "note": "", "ok": True, "n": None})
    led.close()
    blob, spans = _record_spans(path)
    last_start = spans[-1][0]
    torn_path = str(tmp_path / "torn.aal")
    cases = [blob[:cut] for cut in range(last_start + 1, len(blob))]
    cases += [blob + bytes(z) for z in (1, 7, 8, 100, 4096)]          # zero fill after a good record
    cases += [blob[:last_start + 8] + bytes(len(blob) - last_start - 8)]  # header then zeros
    for case in cases:
        with open(torn_path, "wb") as fh:
            fh.write(case)
        with open(torn_path + ".mark", "wb") as fh:
            fh.write(mark_before)
        full = len(case) >= len(blob) and case[:len(blob)] == blob
        caplog.clear()
        led = Ledger.open(torn_path)
        assert led.count == (6 if full else 5)
        assert os.path.getsize(torn_path) == (len(blob) if full else last_start)
        rec = [r for r in caplog.records if r.msg == "ledger_torn_tail"]
        assert len(rec) == 1
        assert rec[0].kv["bytes"] == len(case) - (len(blob) if full else last_start)
        assert rec[0].kv["index"] == (6 if full else 5)
        assert led.verify()["valid"]
        i, _ = led.append({"after": "torn"})
        assert i == led.count - 1
        led.close()


def test_read_only_open_leaves_a_torn_file_alone(tmp_path):
    led, path, _ = make(tmp_path, n=3)
    led.close()
    with open(path, "ab") as fh:
        fh.write(b"\x10\x00\x00")
    size = os.path.getsize(path)
    ro = Ledger.open(path, repair_torn_tail=False)
    assert ro.count == 4 and ro.torn is not None and ro.torn.torn_bytes == 3
    ro.close()
    assert os.path.getsize(path) == size
    out = verify_file(path)
    assert not out["valid"] and out["torn_bytes"] == 3 and out["first_bad_index"] == 4


def test_other_damage_refuses_to_open(tmp_path):
    led, path, _ = make(tmp_path, n=3)
    led.close()
    blob, spans = _record_spans(path)
    # A complete last record whose hash was rewritten: corruption, not a torn write.
    tampered = bytearray(blob)
    tampered[-1] ^= 0xFF
    bad = str(tmp_path / "b.aal")
    open(bad, "wb").write(tampered)
    with pytest.raises(LedgerError) as ei:
        Ledger.open(bad)
    assert ei.value.index == 3 and "hash mismatch" in str(ei.value)
    assert open(bad, "rb").read() == tampered   # never "repaired"
    # Records swapped: each is intact, the chain is not.
    a, b = spans[1], spans[2]
    swapped = blob[:a[0]] + blob[b[0]:b[1]] + blob[a[0]:a[1]] + blob[b[1]:]
    open(bad, "wb").write(swapped)
    with pytest.raises(LedgerError) as ei:
        Ledger.open(bad)
    assert ei.value.index == 1 and "previous_hash" in str(ei.value)
    # A record dropped from the middle.
    open(bad, "wb").write(blob[:a[0]] + blob[a[1]:])
    with pytest.raises(LedgerError) as ei:
        Ledger.open(bad)
    assert ei.value.index == 1
    # Not a ledger, empty file, magic only.
    for content, idx in ((b"hello world, not a ledger", None), (b"", None), (blob[:8], 0)):
        open(bad, "wb").write(content)
        with pytest.raises(LedgerError) as ei:
            Ledger.open(bad)
        assert ei.value.index == idx


def test_second_writer_is_refused(tmp_path):
    led, path, _ = make(tmp_path, n=1)
    with pytest.raises(LedgerError, match="in use"):
        Ledger.open(path)
    led.close()


def test_bad_entries_are_refused_and_change_nothing(tmp_path):
    led, path, _ = make(tmp_path, n=2)
    before = led.manifest()
    for bad in ({"x": float("nan")}, {"x": 2 ** 64}, ["not", "an", "object"], {"s": "\ud800"}):
        with pytest.raises(EntryError):
            led.append(bad)
    led.max_entry_bytes = 100
    with pytest.raises(EntryError, match="max_entry_bytes"):
        led.append({"big": "x" * 200})
    after = led.manifest()
    assert {k: after[k] for k in ("chain_length", "latest_hash", "merkle_root")} == \
           {k: before[k] for k in ("chain_length", "latest_hash", "merkle_root")}
    assert led.verify()["valid"]
    led.close()


def test_failed_write_leaves_the_chain_as_it_was(tmp_path):
    """A real write failure (EFBIG from RLIMIT_FSIZE, mid-batch): the partial
    write is cut back, the chain is unchanged, later appends work."""
    led, path, _ = make(tmp_path, n=2)
    size = os.path.getsize(path)
    before = led.manifest()
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 300, old_limit[1]))
        with pytest.raises(LedgerError, match="cannot append") as ei:
            led.append_many([{"x": "y" * 100}] * 5)   # ~1 KB: the first records fit, the rest do not
        assert "File too large" in str(ei.value)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    assert led.count == 3 and led.manifest()["latest_hash"] == before["latest_hash"]
    assert os.path.getsize(path) == size
    i, _ = led.append({"x": 2})
    assert i == 3 and led.verify()["valid"]
    led.close()


def test_write_failure_that_cannot_be_undone_stops_appends(tmp_path):
    led, path, _ = make(tmp_path, n=2)
    real_fd = led.store._fd
    led.store._fd = os.open(path, os.O_RDONLY)   # write and ftruncate both fail
    try:
        with pytest.raises(LedgerError, match="cannot append"):
            led.append({"x": 1})
    finally:
        os.close(led.store._fd)
        led.store._fd = real_fd
    with pytest.raises(LedgerError, match="refused until a restart"):
        led.append({"x": 2})
    led.close()
    again = Ledger.open(path)
    assert again.count == 3 and again.verify()["valid"]
    again.close()


@pytest.mark.parametrize("group", [True, False])
def test_group_commit_shares_fsyncs(tmp_path, group):
    led, path, _ = make(tmp_path, n=0)

    async def main():
        gc = GroupCommitter(led, group=group, max_batch=64)
        futs = [gc.submit({"k": i}) for i in range(200)]
        res = await asyncio.gather(*futs)
        await gc.close()
        return gc, res

    gc, res = asyncio.run(main())
    assert [i for i, _ in res] == list(range(1, 201))
    assert len({h for _, h in res}) == 200
    if group:
        assert gc.batches < 20    # 200 appends, at most 64 per fsync
    else:
        assert gc.batches == 200
    for i, h in res[::37]:
        assert led.entry(i)["hash"] == h and led.entry(i)["data"] == {"k": i - 1}
    led.close()
    again = Ledger.open(path)
    assert again.count == 201 and again.verify()["valid"]
    again.close()


def test_group_commit_failure_fails_only_that_batch(tmp_path):
    led, path, _ = make(tmp_path, n=1)
    real_write = led.write
    calls = {"n": 0}

    def flaky(batch):
        calls["n"] += 1
        if calls["n"] == 1:
            raise LedgerError("cannot append to ledger x: no space left on device")
        real_write(batch)

    led.write = flaky

    async def main():
        gc = GroupCommitter(led, group=True)
        first = [gc.submit({"a": i}) for i in range(3)]
        r1 = await asyncio.gather(*first, return_exceptions=True)
        r2 = await gc.submit({"b": 1})
        await gc.close()
        return r1, r2

    r1, r2 = asyncio.run(main())
    assert all(isinstance(r, LedgerError) and "no space" in str(r) for r in r1)
    assert r2[0] == 2 and led.entry(2)["data"] == {"b": 1}
    assert led.verify()["valid"]
    led.close()


def test_memory_ledger_same_hashes_as_file(tmp_path):
    clock_a, clock_b = ManualClock(), ManualClock()
    mem = Ledger.memory(clock=clock_a)
    fil = Ledger.open(str(tmp_path / "f.aal"), clock=clock_b)
    for i in range(5):
        assert mem.append({"i": i}) == fil.append({"i": i})
    assert mem.manifest() == fil.manifest()
    assert mem.verify()["valid"]
    fil.close()


def test_a_failed_mark_write_stops_appends_and_the_restart_takes_the_records_in(tmp_path, caplog):
    """The records were fsync'd, the mark could not be written: the caller
    gets the error (not acknowledged), appends are refused until a restart,
    and the restart keeps the records and advances the mark over them."""
    led, path, _ = make(tmp_path, n=2)
    real_fd = led.mark._fd
    led.mark._fd = os.open(path + ".mark", os.O_RDONLY)   # the mark's pwrite fails (EBADF)
    try:
        with pytest.raises(LedgerError, match="cannot write the high-water mark"):
            led.append({"x": 1})
    finally:
        os.close(led.mark._fd)
        led.mark._fd = real_fd
    assert led.count == 3 and led.verify()["valid"]
    with pytest.raises(LedgerError, match="refused until a restart"):
        led.append({"x": 2})
    led.close()
    caplog.clear()
    caplog.set_level("INFO")
    again = Ledger.open(path)
    assert again.count == 4 and again.entry(3)["data"] == {"x": 1}
    assert any(r.msg == "ledger_mark_advanced" for r in caplog.records)
    assert again.append({"x": 3})[0] == 4
    again.close()
