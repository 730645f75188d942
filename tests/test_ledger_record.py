"""The compiled record builder (ledger_canon.record / record_canonical: the
append's whole hot path) against the pure-Python reference: the same framed
bytes as _ref.frame(preimage(canonical(data), ...), sha3(...)), the same
leaves staged in the tree, the same refusals; and Ledger.append, which uses
it, builds the same chain as the batch path."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings, strategies as st

from aal_core import ledger_core as core
from aal_core.clock import ManualClock
from aal_core.ledger import EntryError, Ledger, _ref
from aal_core.ledger.canonical import canonical as ref_canonical, preimage
from aal_core.ledger_canon import canonical, record, record_canonical

leaves = (st.none() | st.booleans() | st.integers(-(2 ** 60), 2 ** 60) | st.floats()
          | st.text(max_size=8) | st.sampled_from(["\ud800x", "é", "\x00\x1f\"\\", "\U0001F600"]))
json_values = st.recursive(leaves, lambda kids: st.lists(kids, max_size=4) | st.tuples(kids)
                           | st.dictionaries(st.text(max_size=4) | st.sampled_from(["\ufb33", "\U0001F600", "a"]),
                                             kids, max_size=5), max_leaves=25)
datas = st.dictionaries(st.text(max_size=6), json_values, max_size=6)
stamps = st.floats(allow_nan=False, allow_infinity=False) | st.integers(0, 2 ** 40)


def ref_record(data, index, prev, ts):
    pre = preimage(ref_canonical(data), index, prev.hex(), ts)
    h = _ref.sha3_256(pre)
    return _ref.frame(pre, h), h


def outcome(fn):
    try:
        return ("ok", fn())
    except (EntryError, ValueError) as exc:
        return (type(exc).__name__, str(exc))


@settings(max_examples=500, deadline=None)
@given(datas, st.integers(0, 2 ** 40), st.binary(min_size=32, max_size=32), stamps)
def test_record_is_the_reference_record(data, index, prev, ts):
    tree, ref_tree = core.MerkleTree(), _ref.MerkleTree()
    want = outcome(lambda: ref_record(data, index, prev, ts))
    got = outcome(lambda: record(data, index, prev, ts, 1 << 30, tree))
    assert got == want
    if want[0] == "ok":
        ref_tree.append(want[1][1])
        assert tree.root() == ref_tree.root() and len(tree) == 1
        c = ref_canonical(data)
        assert record_canonical(c, index, prev, ts, tree) == want[1]
    else:
        assert len(tree) == 0          # nothing staged for a refused entry


@settings(max_examples=500, deadline=None)
@given(json_values)
def test_canonical_matches_the_reference_with_nasty_values(v):
    assert outcome(lambda: canonical(v)) == outcome(lambda: ref_canonical(v))


@settings(max_examples=1000, deadline=None)
@given(st.floats())
def test_every_float_is_written_as_the_reference_writes_it(x):
    assert outcome(lambda: canonical([x, -x, {"x": x}])) == outcome(lambda: ref_canonical([x, -x, {"x": x}]))


@pytest.mark.parametrize("ts", [math.nan, math.inf, -math.inf])
def test_bad_timestamps_are_refused_as_the_reference_does(ts):
    tree = core.MerkleTree()
    with pytest.raises(EntryError, match="not a JSON number"):
        record({"a": 1}, 1, b"\x00" * 32, ts, 1000, tree)
    assert len(tree) == 0


def test_size_limits_and_argument_errors():
    tree = core.MerkleTree()
    with pytest.raises(EntryError, match="over the 10-byte limit"):
        record({"a": "0123456789"}, 1, b"\x00" * 32, 1.0, 10, tree)
    with pytest.raises(EntryError, match="must be a JSON object, got list"):
        record([1], 1, b"\x00" * 32, 1.0, 10, tree)
    with pytest.raises(ValueError, match="32 bytes"):
        record({}, 1, b"\x00" * 31, 1.0, 10, tree)
    with pytest.raises(ValueError, match="16 MiB"):
        record_canonical(b'"' + b"x" * (16 << 20) + b'"', 1, b"\x00" * 32, 1.0, tree)
    assert len(tree) == 0
    big = {"k%d" % i: i for i in range(100)}       # more keys than the stack array
    assert canonical(big) == ref_canonical(big)


@settings(max_examples=50, deadline=None)
@given(st.lists(datas, min_size=1, max_size=20), st.integers(1, 5))
def test_append_builds_the_same_chain_as_append_many(items, split):
    clock = ManualClock()
    a, b = Ledger.memory(clock=clock), Ledger.memory(clock=clock)
    good = []
    for d in items:
        try:
            ref_canonical(d)
        except EntryError:
            with pytest.raises(EntryError):
                a.append(d)
            continue
        good.append(d)
        a.append(d)
    for k in range(0, len(good), split):
        if good[k:k + split]:
            b.append_many(good[k:k + split])
    assert a.store.contents() == b.store.contents()
    assert a.root() == b.root() and a.count == b.count == len(good) + 1
    assert a.latest_hash == b.latest_hash and list(a.offsets) == list(b.offsets) and a.end == b.end
    assert a.verify()["valid"]
