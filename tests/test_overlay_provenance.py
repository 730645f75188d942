"""The provenance log on its own: durable lines, torn-line repair, run_id
rules, and verify() naming the first edited, removed, reordered or added record."""
from __future__ import annotations

import json

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
    assert log.get(2)["run_id"] == "r2" and log.by_run["r3"] == [3]


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
    assert json.loads(prov.read_lines(log.path)[2])["prev"] == again.hashes[1]


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
    """The metrics hook's format: counters by overlay/outcome, a cumulative histogram."""
    from aal_core.clock import SYSTEM
    from aal_core.config import Config
    from aal_core.overlays.unit import OverlayUnit
    from aal_core.units import Context
    u = OverlayUnit(Context(config=Config(), clock=SYSTEM, hub=None, state_dir=str(tmp_path)))
    u._count("abraxas", "ok", 0.004)
    u._count("abraxas", "ok", 0.2)
    u._count("abraxas", "timeout", None)        # refused or not run: counted, no duration
    fams = {f["name"]: f for f in u.metrics()}
    calls = fams["aal_core_overlay_calls_total"]
    assert calls["type"] == "counter"
    assert {(s["labels"]["overlay"], s["labels"]["outcome"]): s["value"] for s in calls["samples"]} == \
        {("abraxas", "ok"): 2.0, ("abraxas", "timeout"): 1.0}
    h = fams["aal_core_overlay_call_duration_seconds"]["samples"][0]["value"]
    assert h["count"] == 2 and abs(h["sum"] - 0.204) < 1e-9
    buckets = dict((str(b), n) for b, n in h["buckets"])
    assert buckets["0.005"] == 1 and buckets["0.25"] == 2 and buckets["+Inf"] == 2
    counts = [n for _, n in h["buckets"]]
    assert counts == sorted(counts)                # cumulative
    assert fams["aal_core_overlay_running"]["type"] == "gauge"
