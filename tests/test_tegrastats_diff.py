"""Differential test: the Cython tegrastats parser against the pure-Python
reference, on every recorded line, on mutated recorded lines and on lines
generated from the tokens tegrastats prints (and near-misses of them)."""
from __future__ import annotations

import glob
import os

import pytest
from hypothesis import given, settings, strategies as st

from aal_core.errors import ParseError
from aal_core.sources import _ref
from aal_core.tegrastats import parse_tegrastats

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "tegrastats")


def recorded_lines() -> list[bytes]:
    out = []
    for path in sorted(glob.glob(os.path.join(FIX, "*.txt"))):
        with open(path, "rb") as fh:
            out += [ln.rstrip(b"\n") for ln in fh if ln.strip() and not ln.startswith(b"#")]
    return out


LINES = recorded_lines()


def outcome(fn, line):
    try:
        return ("ok", fn(line))
    except ParseError as exc:
        return ("error", str(exc), exc.line, exc.column, exc.expected, exc.found)


def same(line):
    a = outcome(parse_tegrastats, line)
    b = outcome(_ref.parse_tegrastats, line)
    assert a == b, line


def test_every_recorded_line_agrees():
    assert len(LINES) >= 50
    for line in LINES:
        same(line)


VOCAB = [
    b"RAM", b"SWAP", b"IRAM", b"CPU", b"cpu", b"EMC_FREQ", b"EMC", b"GR3D_FREQ", b"GR3D", b"GR3D2_FREQ",
    b"MTS", b"fg", b"bg", b"EDP", b"limit", b"APE", b"VIC", b"NVENC0_FREQ", b"NC", b"VDD_IN", b"GPU",
    b"(lfb", b"(cached", b"off", b"1%", b"12%@1300", b"@[1,2]", b"0%@[305]", b"@[314,314,314]", b"@76",
    b"2448/62840MB", b"0/252kB(lfb", b"0/252kB", b"252kB)", b"2x4MB)", b"1x512kB)", b"3MB)", b"0MB)",
    b"[1%@729,off,3%@2201]", b"[2%,5%]@1734", b"[off]", b"[]", b"[1%@]", b"4824mW/4824mW",
    b"4548mW/4548mW/4548mW", b"5000mW", b"-7mW", b"3632/3611", b"-392mW/0mW", b"1/2/3/4", b"tj@48.875C", b"GPU@-256C",
    b"PMIC@100C", b"cpu@52.968C/52.968C", b"soc0@1C/", b"x@1", b"@1C", b"07-25-2026", b"09:08:28",
    b"174", b"1234567890123456", b"-0", b"%", b"@", b"\xff\xfe", b"RAM\xc3\xa9",
]


@st.composite
def generated(draw):
    toks = draw(st.lists(st.one_of(st.sampled_from(VOCAB), st.binary(min_size=1, max_size=6)), max_size=40))
    seps = draw(st.lists(st.sampled_from([b" ", b"  ", b"\t", b"         ", b"\r", b"\x0c"]),
                         min_size=len(toks) + 1, max_size=len(toks) + 1))
    out = seps[0]
    for t, s in zip(toks, seps[1:]):
        out += t + s
    return out


@settings(max_examples=1500, deadline=None)
@given(generated())
def test_generated_lines_agree(line):
    same(line)


@st.composite
def mutated(draw):
    line = draw(st.sampled_from(LINES))
    toks = line.split()
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["drop", "dup", "swap", "byte", "cut", "insert", "digits"]))
        if not toks:
            break
        i = draw(st.integers(0, len(toks) - 1))
        if op == "drop":
            del toks[i]
        elif op == "dup":
            toks.insert(i, toks[i])
        elif op == "swap":
            j = draw(st.integers(0, len(toks) - 1))
            toks[i], toks[j] = toks[j], toks[i]
        elif op == "byte" and toks[i]:
            k = draw(st.integers(0, len(toks[i]) - 1))
            toks[i] = toks[i][:k] + bytes([draw(st.integers(0, 255))]) + toks[i][k + 1:]
        elif op == "cut" and toks[i]:
            toks[i] = toks[i][:draw(st.integers(0, len(toks[i])))]
        elif op == "insert":
            toks.insert(i, draw(st.sampled_from(VOCAB)))
        elif op == "digits":
            toks[i] = toks[i].replace(b"1", draw(st.sampled_from([b"1", b"9" * 16, b"", b"-1", b".5"])))
    return b" ".join(t for t in toks if t)


@settings(max_examples=1500, deadline=None)
@given(mutated())
def test_mutated_lines_agree(line):
    same(line)


def test_too_many_tokens_is_a_parse_error_in_both():
    line = b" ".join([b"APE 1"] * 300)
    assert outcome(parse_tegrastats, line)[0] == "error"
    same(line)


digits = st.text("0123456789", min_size=1, max_size=18)


@settings(max_examples=1500, deadline=None)
@given(st.sampled_from([b"", b"-"]), digits, st.one_of(st.just(""), digits.map(lambda d: "." + d), st.just(".")),
       st.sampled_from([b"C", b"C/1.5C", b"", b"CC"]))
def test_temperature_decimals_agree(sign, whole, frac, tail):
    """Temperatures are decimals: the compiled fast path (up to 15 digits,
    one exact division) must give float()'s value; longer ones go to strtod."""
    line = b"RAM 1/2MB cpu@" + sign + (whole + frac).encode() + tail
    same(line)
    got = parse_tegrastats(line).get("temps_c", {}).get("cpu")
    if got is not None and len(whole) <= 15 and len(frac) <= 16:
        want = float((sign + (whole + frac).encode()).rstrip(b"."))
        assert got == want and str(got) == str(want)   # the same double, sign of zero included


def test_buffers_other_than_bytes_parse_the_same():
    line = LINES[0]
    want = parse_tegrastats(line)
    assert parse_tegrastats(bytearray(line)) == want
    assert parse_tegrastats(memoryview(line)) == want
    with pytest.raises(TypeError):
        parse_tegrastats(line.decode())


@settings(max_examples=800, deadline=None)
@given(st.lists(st.sampled_from(VOCAB + [b"\x80", b"\xff", b"\x08", b"\x0e", b"\x1f", b"!"]), max_size=60),
       st.lists(st.sampled_from([b" ", b"\t", b"\n", b"\x0b", b"\x0c", b"\r", b"  \t "]), min_size=61, max_size=61))
def test_token_boundaries_agree(toks, seps):
    """Tokens found 16 bytes a step (ext/tegrastats.pyx aal_tokens) split where
    the reference's bytes.split() does: every whitespace byte, never a
    control or high byte, across block edges, at the start and the end."""
    line = seps[0] + b"".join(t + s for t, s in zip(toks, seps[1:]))
    same(line)
    same(line.strip())
