"""Differential test of the daemon's meminfo sample: MeminfoFile.sample()
(the Meminfo built in C, ext/kvfile.pyx) against the pure-Python reference
from_values(_ref.parse_keyed(...)) on recorded and generated files, sample
after sample through one kept-open reader (its reuse of unchanged values
and of an unchanged sample must never show an old value)."""
from __future__ import annotations

import dataclasses
import glob
import os

import pytest
from hypothesis import given, settings, strategies as st

from aal_core.errors import SourceError
from aal_core.kvfile import MeminfoFile
from aal_core.sources import _ref
from aal_core.sources.meminfo import KEYS, Meminfo, MeminfoReader, from_values

FIX = os.path.join(os.path.dirname(__file__), "fixtures", "meminfo")


def reference(data: bytes, path: str):
    """What the pure-Python path returns for `data`, or the SourceError it raises."""
    try:
        return from_values(_ref.parse_keyed(data, KEYS), path)
    except SourceError as exc:
        return exc


def assert_same(got, want):
    if isinstance(want, SourceError):
        assert isinstance(got, SourceError) and str(got) == str(want)
        return
    assert type(got) is Meminfo
    assert got == want and hash(got) == hash(want) and repr(got) == repr(want)
    assert dataclasses.asdict(got) == dataclasses.asdict(want) and got.to_dict() == want.to_dict()
    for f in dataclasses.fields(Meminfo):                 # same types too (bool is not an int here)
        assert type(getattr(got, f.name)) is type(getattr(want, f.name)), f.name
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.total = 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        del got.free
    assert dataclasses.replace(got, total=1).total == 1 and got == want


def sample(f: MeminfoFile):
    try:
        return f.sample()
    except SourceError as exc:
        return exc


@pytest.mark.parametrize("name", sorted(os.path.basename(p) for p in glob.glob(os.path.join(FIX, "*.txt"))))
def test_recorded_meminfo(tmp_path, name):
    p = tmp_path / "meminfo"
    data = open(os.path.join(FIX, name), "rb").read()
    p.write_bytes(data)
    f = MeminfoFile(str(p), KEYS, Meminfo, from_values)
    assert_same(sample(f), reference(data, str(p)))
    assert_same(sample(f), reference(data, str(p)))       # the second, reused sample too


value = st.one_of(st.integers(0, 2**20), st.integers(0, 2**50 + 2),
                  st.sampled_from([0, 1, 2**50 - 1, 2**50, 2**50 + 1, 2**53, 2**64 - 1, 2**64]))
line = st.tuples(st.sampled_from(KEYS + (b"Active", b"MemTotalX")), value,
                 st.sampled_from([b":  ", b":", b" "]), st.sampled_from([b" kB", b""]))
files = st.lists(line, max_size=20).map(lambda ls: b"".join(k + s + str(v).encode() + u + b"\n"
                                                           for k, v, s, u in ls))


@settings(max_examples=400, deadline=None)
@given(st.lists(files, min_size=1, max_size=6))
def test_generated_samples_in_sequence(tmp_path_factory, contents):
    p = tmp_path_factory.mktemp("mi") / "meminfo"
    p.write_bytes(b"")
    f = MeminfoFile(str(p), KEYS, Meminfo, from_values)
    for data in contents:
        p.write_bytes(data)
        assert_same(sample(f), reference(data, str(p)))


def typical(total, free, avail, rest):
    keys = (b"MemTotal", b"MemFree", b"MemAvailable") + KEYS[3:]
    vals = (total, free, avail) + rest
    return b"".join(k + b":  " + str(v).encode() + b" kB\n" for k, v in zip(keys, vals) if v is not None)


kb = st.integers(0, 2**49)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 2**49), kb, st.one_of(st.none(), kb),
                          st.tuples(*[st.one_of(st.none(), kb)] * 9)), min_size=1, max_size=6))
def test_typical_files_the_c_path_builds(tmp_path_factory, seq):
    """Files with MemTotal and MemFree and values below 2**50 kB: the ones the
    compiled path builds itself (no fallback), with and without MemAvailable."""
    p = tmp_path_factory.mktemp("mi") / "meminfo"
    p.write_bytes(b"")
    f = MeminfoFile(str(p), KEYS, Meminfo, lambda v, path: pytest.fail("fell back on a typical file"))
    for total, free, avail, rest in seq:
        data = typical(total, free, avail, rest)
        p.write_bytes(data)
        assert_same(f.sample(), reference(data, str(p)))


def test_unchanged_sample_is_the_same_object_and_a_change_is_seen(tmp_path):
    p = tmp_path / "meminfo"
    p.write_bytes(typical(1000, 500, 600, (None,) * 9))
    f = MeminfoFile(str(p), KEYS, Meminfo, from_values)
    a = f.sample()
    assert f.sample() is a
    p.write_bytes(typical(1000, 499, 600, (None,) * 9))
    b = f.sample()
    assert b is not a and b.free == 499 * 1024 and a.free == 500 * 1024 and b.total is a.total


def test_wrong_keys_are_refused(tmp_path):
    p = tmp_path / "meminfo"
    p.write_bytes(b"MemTotal: 1 kB\n")
    with pytest.raises(ValueError, match="KEYS"):
        MeminfoFile(str(p), KEYS[:-1], Meminfo, from_values)


def test_reader_errors_name_the_path(tmp_path):
    p = tmp_path / "meminfo"
    p.write_bytes(b"MemTotal: 0 kB\nMemFree: 1 kB\n")
    r = MeminfoReader(str(tmp_path))
    with pytest.raises(SourceError, match=r"meminfo: MemTotal is 0"):
        r.read()
    p.write_bytes(typical(1000, 500, 600, (None,) * 9))
    assert r.read().total == 1000 * 1024                  # the bad sample lost nothing
    r.close()
    with pytest.raises(ValueError, match="closed"):
        r.read()


def test_live_sample_is_the_reference():
    r = MeminfoReader("/proc")
    raw = r._f.raw()
    got = r._f.sample()
    assert got.total == reference(raw, "/proc/meminfo").total
    assert_same(r.read(), r.read())
