"""Differential tests: the compiled parsers (ext/) against the pure-Python
references (aal_core.sources._ref) on recorded files and generated input."""
from __future__ import annotations

import glob
import os

import pytest
from hypothesis import given, settings, strategies as st

from aal_core import kvfile, psi
from aal_core.sources import _ref

FIX = os.path.join(os.path.dirname(__file__), "fixtures")
MEMINFO_KEYS = (b"MemTotal", b"MemFree", b"MemAvailable", b"Buffers", b"Cached", b"SwapTotal",
                b"SwapFree", b"Shmem", b"SReclaimable", b"NvMapMemUsed", b"NvMapMemFree",
                b"CmaTotal", b"CmaFree", b"Active(file)")


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(FIX, "meminfo", "*.txt"))))
def test_keyed_recorded_meminfo(path):
    data = open(path, "rb").read()
    got = kvfile.parse_keyed(data, MEMINFO_KEYS)
    assert got == _ref.parse_keyed(data, MEMINFO_KEYS)
    assert got[0] is not None and got[0] > 0          # MemTotal is always there


def test_keyed_live_files():
    for path, keys in (("/proc/meminfo", MEMINFO_KEYS), ("/proc/vmstat", (b"oom_kill", b"pgfault", b"nr_free_pages"))):
        f = kvfile.KeyedFile(path, keys)
        raw = f.raw()
        assert kvfile.parse_keyed(raw, keys) == _ref.parse_keyed(raw, keys)
        assert f.read()[0] is not None


key_bytes = st.sampled_from(list(MEMINFO_KEYS) + [b"MemTotalX", b"Mem", b"", b"oom_kill", b"Cached "])
sep = st.sampled_from([b":", b": ", b":        ", b" ", b"\t", b"::", b"", b": -", b":\t"])
num = st.one_of(st.integers(0, 2**64 + 5).map(lambda v: str(v).encode()),
                st.sampled_from([b"", b"x", b"12a", b"0", b"00000000000000000000001", b"18446744073709551615",
                                 b"18446744073709551616", b"-5"]))
unit = st.sampled_from([b"", b" kB", b"kB", b"\tkB", b" ", b"x"])
line = st.one_of(st.tuples(key_bytes, sep, num, unit).map(b"".join), st.binary(max_size=30))


@settings(max_examples=400, deadline=None)
@given(st.lists(line, max_size=30), st.sampled_from([b"\n", b"\r\n"]),
       st.lists(st.sampled_from(MEMINFO_KEYS), min_size=1, max_size=8, unique=True))
def test_keyed_generated(lines, nl, keys):
    data = nl.join(lines)
    assert kvfile.parse_keyed(data, keys) == _ref.parse_keyed(data, keys)


@settings(max_examples=300, deadline=None)
@given(st.lists(line, max_size=30),
       st.lists(key_bytes.filter(bool), min_size=1, max_size=8))
def test_keyed_generated_any_keys(lines, keys):
    """Keys given twice (the last position gets the value, as in the
    reference's dict) and keys holding a separator (never match)."""
    data = b"\n".join(lines)
    keys = tuple(keys)
    assert kvfile.parse_keyed(data, keys) == _ref.parse_keyed(data, keys)


def test_keyed_repeated_and_unmatchable_keys():
    data = b"a 1\nb 2\na 3\nCached : 4\n"
    keys = (b"a", b"b", b"a", b"Cached ")
    assert kvfile.parse_keyed(data, keys) == _ref.parse_keyed(data, keys) == (None, 2, 1, None)


def test_keyed_file_follows_changes(tmp_path):
    """The kept-open reader reuses unchanged values but reports every change."""
    p = tmp_path / "meminfo"
    p.write_bytes(b"MemTotal: 100 kB\nMemFree: 50 kB\n")
    f = kvfile.KeyedFile(str(p), (b"MemTotal", b"MemFree", b"Cached"))
    first = f.read()
    assert first == (100, 50, None)
    assert f.read() == first
    p.write_bytes(b"MemTotal: 100 kB\nMemFree: 40 kB\nCached: 7 kB\n")
    assert f.read() == (100, 40, 7)
    p.write_bytes(b"MemTotal: 100 kB\n")
    assert f.read() == (100, None, None)
    p.write_bytes(b"MemTotal: 18446744073709551615 kB\nMemFree: 99999999999999999999 kB\n")
    assert f.read() == (2**64 - 1, None, None)        # 20 digits: the overflow check


@settings(max_examples=300, deadline=None)
@given(st.one_of(num, st.binary(max_size=25),
                 st.tuples(st.sampled_from([b"", b" ", b"\n"]), num, st.sampled_from([b"", b"\n", b" \n"])).map(b"".join),
                 st.sampled_from([b"max", b"max\n", b" max ", b"maxx", b"9223372036854775807", b"9223372036854775808"])))
def test_value_generated(data):
    assert kvfile.parse_value(data) == _ref.parse_value(data)


def test_value_examples():
    assert kvfile.parse_value(b"max\n") == -1
    assert kvfile.parse_value(b"536870912\n") == 536870912
    assert kvfile.parse_value(b"9223372036854771712\n") == 9223372036854771712   # v1 "no limit"
    assert kvfile.parse_value(b"12 kB") is None
    assert kvfile.parse_value(b"") is None


PSI_SAMPLE = (b"some avg10=1.25 avg60=0.50 avg300=0.10 total=123456\n"
              b"full avg10=0.75 avg60=0.25 avg300=0.00 total=65432\n")


def test_psi_recorded_and_live():
    assert psi.parse_psi(PSI_SAMPLE) == (1.25, 0.5, 0.1, 123456, 0.75, 0.25, 0.0, 65432)
    assert psi.parse_psi(PSI_SAMPLE) == _ref.parse_psi(PSI_SAMPLE)
    # older kernels print only the "some" line
    only_some = PSI_SAMPLE.split(b"\n")[0]
    assert psi.parse_psi(only_some)[4:] == (None,) * 4
    if os.path.exists("/proc/pressure/memory"):
        f = psi.PsiFile("/proc/pressure/memory")
        raw = f.raw()
        assert psi.parse_psi(raw) == _ref.parse_psi(raw)
        assert f.read()[3] is not None


psi_word = st.sampled_from([b"some", b"full", b"somex", b"", b"avg10=1.0"])
psi_key = st.sampled_from([b"avg10", b"avg60", b"avg300", b"total", b"avg", b"totals", b""])
psi_val = st.one_of(st.floats(0, 1e6, allow_nan=False).map(lambda f: repr(f).encode()),
                    st.integers(-5, 2**64 + 3).map(lambda v: str(v).encode()),
                    st.sampled_from([b"", b"1.", b".5", b"1.2.3", b"1e5", b"0.0000000000000001", b"-1.0",
                                     b"1234567890123456.5", b"inf", b"nan", b"1=2"]))
psi_tok = st.one_of(st.tuples(psi_key, st.just(b"="), psi_val).map(b"".join), st.binary(max_size=8))
psi_line = st.tuples(psi_word, st.lists(st.tuples(st.sampled_from([b" ", b"\t", b"  ", b"\x0b"]), psi_tok).map(b"".join),
                                        max_size=6).map(b"".join)).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(st.lists(psi_line, max_size=4))
def test_psi_generated(lines):
    data = b"\n".join(lines)
    assert psi.parse_psi(data) == _ref.parse_psi(data)
