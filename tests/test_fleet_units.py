"""The fleet's pure parts: the exporter's bounded buffer and the head check."""
from __future__ import annotations

import asyncio

from aal_core.config import FleetConfig
from aal_core.export.fleet import Buffer, FleetState, _safe_url, stream_names
from aal_core.fleet import check_head, parse_stream
from aal_core.keys import SigningKey
from aal_core.ledger.chain import Ledger
from aal_core.ledger.head import make_head


def buffer(n: int) -> Buffer:
    async def make():
        return Buffer(FleetState(FleetConfig(buffer_max=n, node_id="b1")))
    return asyncio.run(make())


def test_buffer_drops_the_oldest_sample_first_keeps_heads_and_counts():
    b = buffer(3)
    b.put("heads", {"size": 1})
    for i in range(4):
        b.put("samples", {"i": i})
    kinds = [(k, f.get("i")) for k, f in b.items]
    assert kinds == [("heads", None), ("samples", "2"), ("samples", "3")]
    assert b.state.dropped == 2
    # A batch Redis did not take goes back in front, the bound still holds.
    batch = b.take(2)
    b.put("events", {"type": "x"})
    b.put("events", {"type": "y"})
    b.give_back(batch)
    assert len(b) == 3 and b.state.dropped == 4
    assert [k for k, _ in b.items] == ["heads", "events", "events"]
    # Every entry carries a seq, strings only (dicts and lists as JSON).
    b.put("events", {"effect": {"a": 1}, "none": None})
    f = b.items[-1][1]
    assert f["effect"] == '{"a": 1}' and "none" not in f and int(f["seq"]) == b.seq


def test_stream_names_and_secrets():
    assert stream_names("b1") == {"samples": "aal-core:b1:samples", "events": "aal-core:b1:events",
                                  "heads": "aal-core:b1:heads"}
    assert parse_stream("aal-core:b1:heads") == ("b1", "heads")
    assert parse_stream("aal-core:fleet:g") is None and parse_stream("other:b1:heads") is None
    assert "secret" not in _safe_url("redis://user:secret@host:6379/0")


def _chain_heads(tmp_path):
    key = SigningKey.load_or_create(str(tmp_path))
    led = Ledger.memory()
    heads = []
    for i in range(6):
        led.append({"type": "t", "i": i})
        heads.append(make_head(led.count, led.root(), 1000 + i, key.sign, key.public_hex))
    return key, led, heads


def _with_proof(led, prev, head):
    p = led.consistency(prev["size"], head["size"])
    return {**head, "prev_size": prev["size"], "consistency": p["path"]}


def test_check_head_accepts_a_consistent_extension(tmp_path):
    key, led, heads = _chain_heads(tmp_path)
    last = {"size": heads[1]["size"], "root": heads[1]["root"], "public_key": key.public_hex}
    assert check_head(heads[1], None) is None
    assert check_head(_with_proof(led, heads[1], heads[4]), last) is None
    assert check_head(heads[1], last) is None                     # the same head again


def test_check_head_flags_each_kind(tmp_path):
    key, led, heads = _chain_heads(tmp_path)
    last = {"size": heads[2]["size"], "root": heads[2]["root"], "public_key": key.public_hex}
    good = _with_proof(led, heads[2], heads[5])
    assert check_head({**good, "root": "00" * 32}, last)[0] == "forged"
    assert check_head({**good, "signature": "zz"}, last)[0] == "forged"
    assert check_head(heads[0], last)[0] == "rewritten"             # shrank
    # Same size, another root, properly signed.
    other = make_head(heads[2]["size"], b"\x01" * 32, 5, key.sign, key.public_hex)
    assert check_head(other, last)[0] == "rewritten"
    # A valid signature over a root the proof does not connect.
    fake = make_head(heads[5]["size"], b"\x02" * 32, 6, key.sign, key.public_hex)
    assert check_head({**fake, "prev_size": good["prev_size"], "consistency": good["consistency"]}, last)[0] \
        == "rewritten"
    assert check_head({**good, "consistency_error": "fewer entries"}, last)[0] == "rewritten"
    assert check_head(heads[5], last)[0] == "unlinked"             # no proof
    assert check_head({**good, "prev_size": 1}, last)[0] == "unlinked"
    rotated = key.rotated()
    assert check_head(make_head(9, b"\x03" * 32, 7, rotated.sign, rotated.public_hex), last)[0] == "key_changed"
