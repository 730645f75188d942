"""Canonical JSON (RFC 8785) of ledger entries: published vectors, the
number rules, round-trips, and refusals of data that has no canonical form."""
from __future__ import annotations

import json
import re
import math

import pytest
from hypothesis import given, settings, strategies as st

from aal_core.ledger import EntryError, canonical, canonical_data, format_number, preimage
from aal_core.ledger_canon import canonical as compiled_canonical


def test_rfc8785_section_3_2_2_example():
    # RFC 8785 section 3.2.2: input with every kind of value, and its canonical form.
    text = ('{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],'
            '"string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",'
            '"literals": [null, true, false]}')
    want = ('{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
            '"string":"\u20ac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}')
    assert canonical(json.loads(text)) == want.encode("utf-8")


def test_rfc8785_key_order_is_by_utf16_code_units():
    # RFC 8785 section 3.2.3: the emoji (surrogates D83D DE00) sorts before U+FB33.
    obj = {"\u20ac": "Euro Sign", "\r": "Carriage Return", "\ufb33": "Hebrew Letter Dalet With Dagesh",
           "1": "One", "\U0001F600": "Emoji: Grinning Face", "\u0080": "Control", "\u00f6": "Latin Small Letter O With Diaeresis"}
    keys = list(json.loads(canonical(obj)))
    assert [k.encode("utf-16-be") for k in keys] == sorted(k.encode("utf-16-be") for k in keys)
    assert keys == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001F600", "\ufb33"]


@pytest.mark.parametrize("value,text", [
    (0.0, "0"), (-0.0, "0"), (1.0, "1"), (-1.5, "-1.5"), (0.1, "0.1"), (0.1 + 0.2, "0.30000000000000004"),
    (1e20, "100000000000000000000"), (1e21, "1e+21"), (1.5e21, "1.5e+21"), (1e-6, "0.000001"),
    (1e-7, "1e-7"), (1.25e-7, "1.25e-7"), (123456789.125, "123456789.125"), (5e-324, "5e-324"),
    (1.7976931348623157e308, "1.7976931348623157e+308"), (-1e-300, "-1e-300"),
    (1700000000.123456, "1700000000.123456"), (2 ** 53, "9007199254740992"), (-(2 ** 53), "-9007199254740992"),
    (42, "42"), (-7, "-7"), (37693753620324490, "37693753620324490"),
])
def test_number_formatting_follows_ecmascript(value, text):
    assert format_number(value) == text


@settings(max_examples=500)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_numbers_round_trip(x):
    s = format_number(x)
    assert float(s) == x
    assert " " not in s and s == s.lower() or "e" not in s.lower()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 53), 2 ** 53)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4),
    max_leaves=20)


def _norm(v):
    """JSON equality with 5.0 == 5 (canonical JSON numbers are doubles)."""
    if isinstance(v, dict):
        return {k: _norm(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_norm(x) for x in v]
    if type(v) in (int, float):
        return float(v)
    return v


@settings(max_examples=300, deadline=None)
@given(json_values.filter(lambda v: not _has_surrogate(v)))
def test_canonical_round_trips_and_is_idempotent(v):
    c = canonical(v)
    back = json.loads(c)
    assert _norm(back) == _norm(v)
    assert canonical(back) == c
    # no whitespace at all outside string literals (inside them it is data)
    outside = re.sub(r'"(?:[^"\\]|\\.)*"', '""', c.decode("utf-8"))
    assert not re.search(r"\s", outside), outside


def _has_surrogate(v) -> bool:
    if isinstance(v, str):
        return any(0xD800 <= ord(c) <= 0xDFFF for c in v)
    if isinstance(v, dict):
        return any(_has_surrogate(k) or _has_surrogate(x) for k, x in v.items())
    if isinstance(v, list):
        return any(_has_surrogate(x) for x in v)
    return False


def test_strings_escape_only_what_rfc8785_says():
    s = "é\u2028\x7f\x00\x1f\b\f\n\r\t\"\\/"
    assert canonical(s) == '"é\u2028\x7f\\u0000\\u001f\\b\\f\\n\\r\\t\\"\\\\/"'.encode("utf-8")


@pytest.mark.parametrize("bad,words", [
    ({"x": float("nan")}, "NaN"),
    ({"x": float("inf")}, "infinities"),
    ({"x": 2 ** 53 + 1}, "2**53"),
    ({"x": -(2 ** 60) - 1}, "2**53"),
    ({"x": 2 ** 60}, "2**53"),
    ({"x": 10 ** 400}, "2**53"),
    ({"x": "\ud800"}, "lone surrogate"),
    ({"\udfff": 1}, "lone surrogate"),
    ({1: "a"}, "keys must be strings"),
    ({"x": b"bytes"}, "not a JSON value"),
    ({"x": {1, 2}}, "not a JSON value"),
    ([1, 2], "must be a JSON object"),
    ("text", "must be a JSON object"),
])
def test_data_without_a_canonical_form_is_refused_clearly(bad, words):
    with pytest.raises(EntryError) as ei:
        canonical_data(bad)
    assert words in str(ei.value)


def test_too_deep_is_refused():
    v: dict = {}
    cur = v
    for _ in range(70):
        cur["a"] = {}
        cur = cur["a"]
    with pytest.raises(EntryError, match="deeper than 64"):
        canonical_data(v)


def test_preimage_is_the_canonical_form_of_the_whole_entry():
    data = {"b": [1, 2.5, "ü"], "a": None}
    pre = preimage(canonical_data(data), 7, "ab" * 32, 1700000000.25)
    entry = {"index": 7, "timestamp": 1700000000.25, "data": data, "previous_hash": "ab" * 32}
    assert pre == canonical(entry)


@settings(max_examples=400, deadline=None)
@given(json_values | st.dictionaries(st.text(), json_values, max_size=5))
def test_compiled_canonical_matches_the_reference(v):
    try:
        want = canonical(v)
    except EntryError as exc:
        with pytest.raises(EntryError) as ei:
            compiled_canonical(v)
        assert str(ei.value) == str(exc)
        return
    assert compiled_canonical(v) == want


@pytest.mark.parametrize("bad", [{"x": float("nan")}, {"x": 2 ** 53 + 1}, {1: 2}, {"x": {1, 2}}, {"s": "\ud800"}])
def test_compiled_canonical_refuses_the_same(bad):
    with pytest.raises(EntryError) as a:
        canonical(bad)
    with pytest.raises(EntryError) as b:
        compiled_canonical(bad)
    assert str(a.value) == str(b.value)
