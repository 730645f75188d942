"""The provenance log on its own: durable lines, torn-line repair, run_id
rules, and verify() naming the first edited, removed, reordered or added record."""
from __future__ import annotations

import json
import os

from aal_core.overlays import provenance as prov


def _log(tmp_path, n=4):
    log = prov.ProvenanceLog(str(tmp_path / "p.jsonl")).open()
    anchors = []
    for i in range(n):
        seq, h = log.append({"run_id": f"r{i}", "outcome": "ok", "n": i})
        anchors.append({"seq": seq, "run_id": f"r{i}", "record_hash": h, "ledger_index": 10 + i})
    return log, anchors


def test_records_are_canonical_lines_linked_by_hash(tmp_path):
    log, anchors = _log(tmp_path)
    lines = prov.read_lines(log.path)
    assert len(lines) == 4
    recs = [json.loads(x) for x in lines]
    assert [r["seq"] for r in recs] == [0, 1, 2, 3]
    assert recs[0]["prev"] == "0" * 64 and recs[1]["prev"] == prov.record_hash(lines[0])
    assert lines[0] == json.dumps(recs[0], sort_keys=True, separators=(",", ":")).encode()
    assert prov.verify(lines, anchors) == {"ok": True, "records": 4, "anchored": 4}
    assert log.get(2)["run_id"] == "r2" and log.find_run("r3") == [3]


def test_edited_record_is_named(tmp_path):
    log, anchors = _log(tmp_path)
    lines = prov.read_lines(log.path)
    rec = json.loads(lines[1])
    rec["outcome"] = "timeout"
    lines[1] = prov.canonical(rec)
    v = prov.verify(lines, anchors)
    assert not v["ok"] and v["first_bad"]["seq"] == 1 and v["first_bad"]["run_id"] == "r1"
    assert "record 1 was edited" in v["first_bad"]["reason"] and v["first_bad"]["ledger_index"] == 11


def test_removed_reordered_added_truncated(tmp_path):
    log, anchors = _log(tmp_path)
    lines = prov.read_lines(log.path)
    v = prov.verify(lines[:2] + lines[3:], anchors)
    assert v["first_bad"]["seq"] == 2 and "line 2 holds record 3" in v["first_bad"]["reason"]
    v = prov.verify([lines[0], lines[2], lines[1], lines[3]], anchors)
    assert v["first_bad"]["seq"] == 1 and "holds record 2" in v["first_bad"]["reason"]
    v = prov.verify(lines + [lines[0]], anchors)
    assert v["first_bad"]["seq"] == 4 and "has no ledger entry" in v["first_bad"]["reason"]
    v = prov.verify(lines[:3], anchors)
    assert v["first_bad"]["seq"] == 3 and "missing from the log" in v["first_bad"]["reason"]
    v = prov.verify([b"not json"] + lines[1:], anchors)
    assert v["first_bad"]["seq"] == 0 and "not a JSON record" in v["first_bad"]["reason"]


def test_a_torn_last_line_is_cut_off_and_kept(tmp_path):
    log, _ = _log(tmp_path, 2)
    log.close()
    with open(log.path, "ab") as fh:
        fh.write(b'{"run_id":"half')
    again = prov.ProvenanceLog(log.path).open()
    assert again.torn == len(b'{"run_id":"half') and again.count == 2
    with open(log.path + ".torn", "rb") as fh:
        assert fh.read() == b'{"run_id":"half\n'
    seq, _ = again.append({"run_id": "r2"})
    assert seq == 2 and len(prov.read_lines(log.path)) == 3
    assert json.loads(prov.read_lines(log.path)[2])["prev"] == again.hash_of(1)


def test_run_id_rules():
    a = prov.run_id("ov", "1", "scan", "OPEN", {"x": 1}, 7)
    assert a == prov.run_id("ov", "1", "scan", "OPEN", {"x": 1}, 7)
    assert a == prov.sha256_json({"overlay": "ov", "version": "1", "capability": "scan", "phase": "OPEN",
                                  "payload": {"x": 1}, "seed": 7})
    assert a != prov.run_id("ov", "2", "scan", "OPEN", {"x": 1}, 7)
    assert prov.run_id("ov", "1", "scan", "OPEN", {"x": 1}, None) != prov.run_id("ov", "1", "scan", "OPEN", {"x": 1}, None)


def test_anchors_from_ledger_entries():
    entries = [{"index": 0, "data": {"type": "govern.submit"}},
               {"index": 1, "data": {"type": "overlay.provenance", "seq": 0, "run_id": "r", "record_hash": "h"}}]
    assert prov.anchors_from_entries(entries) == [{"seq": 0, "run_id": "r", "record_hash": "h", "ledger_index": 1}]


def test_unit_metrics_families(tmp_path):
    """The metrics hook's format: counters by overlay/capability/outcome, a cumulative histogram."""
    from aal_core.clock import SYSTEM
    from aal_core.config import Config
    from aal_core.overlays.unit import OverlayUnit
    from aal_core.units import Context
    u = OverlayUnit(Context(config=Config(), clock=SYSTEM, hub=None, state_dir=str(tmp_path)))
    u._count("abraxas", "scan", "ok", 0.004)
    u._count("abraxas", "scan", "ok", 0.2)
    u._count("abraxas", "align", "timeout", None)       # refused or not run: counted, no duration
    fams = {f["name"]: f for f in u.metrics()}
    calls = fams["aal_core_overlay_calls_total"]
    assert calls["type"] == "counter"
    assert {(s["labels"]["overlay"], s["labels"]["capability"], s["labels"]["outcome"]): s["value"]
            for s in calls["samples"]} == {("abraxas", "scan", "ok"): 2.0, ("abraxas", "align", "timeout"): 1.0}
    h = fams["aal_core_overlay_call_duration_seconds"]["samples"][0]["value"]
    assert h["count"] == 2 and abs(h["sum"] - 0.204) < 1e-9
    buckets = dict((str(b), n) for b, n in h["buckets"])
    assert buckets["0.005"] == 1 and buckets["0.25"] == 2 and buckets["+Inf"] == 2
    counts = [n for _, n in h["buckets"]]
    assert counts == sorted(counts)                # cumulative
    assert fams["aal_core_overlay_running"]["type"] == "gauge"


# ------------------------------------------------------------ at scale

def _rotating(tmp_path, n, max_bytes=600, keep=0):
    log = prov.ProvenanceLog(str(tmp_path / "p.jsonl"), max_bytes=max_bytes, keep=keep).open()
    anchors, pruned = [], 0
    for i in range(n):
        seq, h = log.append({"run_id": f"r{i % 7}", "overlay": "ov_a" if i % 3 else "ov_b", "n": i})
        anchors.append({"seq": seq, "run_id": f"r{i % 7}", "record_hash": h, "ledger_index": 100 + i})
        if log.rotate_if_full():
            pruned = log.pruned_before
    return log, anchors, pruned


def _all_lines(log):
    return [line for _, line in log.lines(log.pruned_before)]


def test_rotation_makes_segments_that_still_verify_and_index_on_disk(tmp_path):
    log, anchors, _ = _rotating(tmp_path, 60)
    assert len(log.segments) >= 5 and log.count == 60
    # Memory holds the active file's offsets only; the segments' are in .idx files.
    assert len(log.offsets) == log.count - log.first < 60
    for s in log.segments:
        assert os.path.getsize(s.path + ".idx") == 8 * s.count
    assert [json.loads(line)["n"] for line in _all_lines(log)] == list(range(60))
    assert prov.verify(_all_lines(log), anchors) == {"ok": True, "records": 60, "anchored": 60}
    for seq in (0, 1, log.segments[1].first, log.first - 1, 59):
        assert log.get(seq)["n"] == seq
    assert log.find_run("r3") == [i for i in range(60) if i % 7 == 3]
    assert log.find_run("nope") == []
    assert [r["n"] for r in log.latest(5, "ov_b")] == [i for i in range(60) if i % 3 == 0][-5:]
    assert [r["n"] for r in log.latest(4)] == [56, 57, 58, 59]
    assert [r["n"] for r in log.latest(3, "ov_a", start=10)] == [10, 11, 13]
    # Reopened: the same view, and the chain continues across the segments.
    log.close()
    again = prov.ProvenanceLog(log.path, max_bytes=600).open()
    assert again.count == 60 and again.last_hash() == anchors[-1]["record_hash"]
    seq, h = again.append({"run_id": "r9", "overlay": "ov_a", "n": 60})
    anchors.append({"seq": seq, "run_id": "r9", "record_hash": h})
    assert prov.verify(_all_lines(again), anchors)["ok"]


def test_edits_removals_and_reorders_inside_rotated_segments_are_named(tmp_path):
    log, anchors, _ = _rotating(tmp_path, 40)
    seg = log.segments[1]
    lines = _all_lines(log)
    k = seg.first + 1
    rec = json.loads(lines[k])
    rec["n"] = -1
    edited = lines[:k] + [prov.canonical(rec)] + lines[k + 1:]
    v = prov.verify(edited, anchors)
    assert v["first_bad"]["seq"] == k and f"record {k} was edited" in v["first_bad"]["reason"]
    v = prov.verify(lines[:seg.first] + lines[seg.first + seg.count:], anchors)      # a segment deleted
    assert v["first_bad"]["seq"] == seg.first and "removed or reordered" in v["first_bad"]["reason"]
    swapped = lines[:k] + [lines[k + 1], lines[k]] + lines[k + 2:]
    assert prov.verify(swapped, anchors)["first_bad"]["seq"] == k


def test_keep_deletes_the_oldest_segments_and_verify_starts_where_the_ledger_says(tmp_path):
    log, anchors, pruned = _rotating(tmp_path, 60, keep=2)
    assert len(log.segments) == 2 and pruned == log.pruned_before == log.segments[0].first > 0
    assert not log.has(0) and log.has(pruned)
    lines = _all_lines(log)
    assert prov.verify(lines, anchors, start=pruned) == {"ok": True, "records": 60 - pruned,
                                                          "anchored": 60 - pruned, "pruned_before": pruned}
    # Without the ledger's word (start=0) the deleted records are missing.
    assert not prov.verify(lines, anchors)["ok"]
    # The first kept record must still link to the deleted one's anchor.
    rec = json.loads(lines[0])
    rec["prev"] = "f" * 64
    v = prov.verify([prov.canonical(rec)] + lines[1:], anchors, start=pruned)
    assert not v["ok"] and v["first_bad"]["seq"] == pruned
    assert log.find_run("r0") == [i for i in range(pruned, 60) if i % 7 == 0]


def test_verifier_fed_in_chunks_agrees_with_verify(tmp_path):
    log, anchors, _ = _rotating(tmp_path, 50)
    lines = _all_lines(log)
    for variant in (lines, lines[:20] + lines[21:], lines[:30], lines + [lines[3]]):
        v = prov.Verifier(0, window=4)
        la, ll = list(anchors), list(variant)
        while not (v.lines_done and v.anchors_done):
            if la:
                v.feed_anchors([la.pop(0) for _ in range(min(3, len(la)))])
            else:
                v.anchors_done = True
            if ll:
                v.feed_lines([ll.pop(0) for _ in range(min(5, len(ll)))])
            else:
                v.lines_done = True
            if v.run():
                break
        got = v.finish()
        want = prov.verify(variant, anchors)
        assert got["ok"] == want["ok"] and got.get("first_bad", {}).get("seq") == want.get("first_bad", {}).get("seq")
        if got["ok"]:       # what is left in memory is the window, not the whole ledger
            assert len(v.anchors) <= 4 + 1


# ------------------------------------------------------------ run_id index

def _scan(log, rid):
    """The reference answer: every line read."""
    return [seq for seq, line in log.lines(log.pruned_before) if json.loads(line).get("run_id") == rid]


def test_run_id_index_finds_runs_in_rotated_segments_and_the_active_file(tmp_path):
    log, _, _ = _rotating(tmp_path, 60)
    assert len(log.segments) >= 5
    for s in log.segments:
        data = open(s.path + ".rid", "rb").read()
        assert len(data) == prov.RID * s.count
        pairs = [(int.from_bytes(data[i:i + 8], "little"), int.from_bytes(data[i + 8:i + 16], "little"))
                 for i in range(0, len(data), prov.RID)]
        assert pairs == sorted(pairs) and sorted(q for _, q in pairs) == list(range(s.first, s.first + s.count))
    assert os.path.getsize(log.path + ".rid") == prov.RID * (log.count - log.first)
    fresh = prov.ProvenanceLog(log.path, max_bytes=600).open()      # no cached answers
    for rid in [f"r{i}" for i in range(7)] + ["nope"]:
        assert fresh.find_run(rid) == _scan(fresh, rid)
    # A run_id only in one rotated segment: found by its segment's binary search.
    seg = fresh.segments[2]
    seq, h = fresh.append({"run_id": "only-here", "n": 99})
    assert fresh.find_run("only-here") == [seq]
    assert seg.find(prov.rid_key("r3")) == [q for q in _scan(fresh, "r3") if seg.first <= q < seg.first + seg.count]
    assert seg.find(prov.rid_key("only-here")) == []
    os.unlink(seg.path + ".rid")            # removed by hand while open: the segment is scanned instead
    assert seg.find(prov.rid_key("r3")) == [q for q in _scan(fresh, "r3") if seg.first <= q < seg.first + seg.count]


def test_a_missing_index_is_rebuilt_from_the_log(tmp_path):
    log, _, _ = _rotating(tmp_path, 40)
    for i in range(3):              # and some in the active file
        log.append({"run_id": f"r{i + 1}", "n": 100 + i})
    want = {rid: _scan(log, rid) for rid in ("r1", "r4", "nope")}
    log.close()
    for s in log.segments:
        os.unlink(s.path + ".rid")
    os.unlink(log.path + ".rid")
    again = prov.ProvenanceLog(log.path, max_bytes=600).open()
    assert all(s.rebuilt_rid for s in again.segments)
    assert again.rid_rebuilt == again.count - again.first > 0
    for s in again.segments:
        assert os.path.getsize(s.path + ".rid") == prov.RID * s.count
    assert {rid: again.find_run(rid) for rid in want} == want


def test_an_index_torn_or_stale_by_a_crash_is_cut_and_rebuilt(tmp_path):
    log, _, _ = _rotating(tmp_path, 40)
    for i in range(3):
        log.append({"run_id": f"r{2 * i}", "n": 100 + i})
    want = {rid: _scan(log, rid) for rid in ("r0", "r2", "r6")}
    n_active = log.count - log.first
    assert n_active >= 2
    log.close()
    seg = log.segments[1]
    # A crash mid-write: the active index ends inside an entry; a segment's
    # index was being written (its .tmp left, the index itself torn short).
    with open(log.path + ".rid", "r+b") as fh:
        fh.truncate(prov.RID * (n_active - 1) + 5)
    os.replace(seg.path + ".rid", seg.path + ".rid.tmp")
    with open(seg.path + ".rid", "wb") as fh:
        fh.write(b"\0" * (prov.RID * seg.count - 3))
    again = prov.ProvenanceLog(log.path, max_bytes=600).open()
    assert again.rid_rebuilt == 1
    assert not os.path.exists(seg.path + ".rid.tmp")
    assert [s.rebuilt_rid for s in again.segments] == [s.first == seg.first for s in again.segments]
    assert os.path.getsize(again.path + ".rid") == prov.RID * n_active
    assert {rid: again.find_run(rid) for rid in want} == want
    again.close()
    # Stale: a rotation cut short after the segment's rename leaves the old
    # active index beside a new log; its entries name other seqs: dropped.
    with open(log.path + ".rid", "r+b") as fh:
        fh.seek(0)
        fh.write(prov._pack(prov.rid_key("r0"), 0))
    third = prov.ProvenanceLog(log.path, max_bytes=600).open()
    assert third.rid_rebuilt == n_active
    assert {rid: third.find_run(rid) for rid in want} == want


def test_an_index_entry_that_lies_never_answers_a_wrong_record(tmp_path):
    log, _ = _log(tmp_path, 4)
    log.close()
    with open(log.path + ".rid", "r+b") as fh:      # entry 1 claims run r3's key; its seq stays right
        fh.seek(prov.RID * 1)
        fh.write(prov.rid_key("r3").to_bytes(8, "little"))
    again = prov.ProvenanceLog(log.path).open()
    assert again.find_run("r3") == [3]          # the lying entry is checked against its line


def test_a_failed_write_leaves_no_part_of_its_line(tmp_path):
    """A write cut short (here: EFBIG past RLIMIT_FSIZE, a real short write)
    is cut back, so the next record starts on a line of its own."""
    import resource
    import signal
    log, anchors = _log(tmp_path, 2)
    size = os.path.getsize(log.path)
    old_sig = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 100, old[1]))
        try:
            log.append({"run_id": "big", "blob": "x" * 5000})
            raise AssertionError("the write past RLIMIT_FSIZE succeeded")
        except OSError:
            pass
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, old_sig)
    assert os.path.getsize(log.path) == size and log.count == 2
    seq, h = log.append({"run_id": "r2", "outcome": "ok", "n": 2})
    anchors.append({"seq": seq, "run_id": "r2", "record_hash": h})
    assert seq == 2 and prov.verify(prov.read_lines(log.path), anchors)["ok"]
    log.close()
    again = prov.ProvenanceLog(log.path).open()
    assert again.torn == 0 and again.count == 3 and again.find_run("r2") == [2] and again.find_run("big") == []
