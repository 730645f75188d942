"""The compiled ledger core (aal_core.ledger_core) against two references:

- an independent one written here, straight from RFC 9162's recursive
  definitions (MTH, PATH, PROOF) with hashlib's SHA3-256;
- the pure-Python reference aal_core.ledger._ref (same API), in
  hypothesis differential tests over the same inputs.
"""
from __future__ import annotations

import hashlib
import os
import struct

import pytest
from hypothesis import given, settings, strategies as st

from aal_core import ledger_core as core
from aal_core.ledger import _ref


# -- independent reference: RFC 9162 section 2.1, literally ---------------

def H(b: bytes) -> bytes:
    return hashlib.sha3_256(b).digest()


def mth(d: list[bytes]) -> bytes:
    n = len(d)
    if n == 0:
        return H(b"")
    if n == 1:
        return H(b"\x00" + d[0])
    k = 1
    while k * 2 < n:
        k *= 2
    return H(b"\x01" + mth(d[:k]) + mth(d[k:]))


def path(m: int, d: list[bytes]) -> list[bytes]:
    n = len(d)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return path(m, d[:k]) + [mth(d[k:])]
    return path(m - k, d[k:]) + [mth(d[:k])]


def subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [mth(d)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return subproof(m, d[:k], b) + [mth(d[k:])]
    return subproof(m - k, d[k:], False) + [mth(d[:k])]


def leaves(n: int, seed: int = 0) -> list[bytes]:
    return [H(struct.pack("<QQ", seed, i)) for i in range(n)]


# -- SHA3 ----------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 31, 32, 33, 64, 65, 135, 136, 137, 271, 272, 273, 4096, 100_003])
def test_sha3_matches_hashlib_at_block_edges(n):
    data = os.urandom(n)
    assert core.sha3_256(data) == hashlib.sha3_256(data).digest()


def test_sha3_known_answer():
    # FIPS 202 example values.
    assert core.sha3_256(b"").hex() == "a7ffc6f8bf1ed76651c14756a061d662f580ff4de43b49fa82d80a4b80f8434a"
    assert core.sha3_256(b"abc").hex() == "3a985da74fe225b2045c172d6bd390bd855f086e3e9d525b46bfe24511431532"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=700))
def test_sha3_differential(data):
    assert core.sha3_256(data) == _ref.sha3_256(data) == hashlib.sha3_256(data).digest()
    assert core.leaf_hash(data) == _ref.leaf_hash(data) == H(b"\x00" + data)


def test_node_hash_is_domain_separated():
    a, b = H(b"a"), H(b"b")
    assert core.node_hash(a, b) == H(b"\x01" + a + b)
    assert core.node_hash(a, b) != core.node_hash(b, a)
    assert core.leaf_hash(a + b) != core.node_hash(a, b)
    with pytest.raises(ValueError):
        core.node_hash(a, b[:31])


# -- tree against the RFC --------------------------------------------------

def test_roots_and_proofs_match_rfc_for_every_small_tree():
    d = leaves(40)
    tree = core.MerkleTree()
    assert tree.root() == H(b"")
    for e in d:
        tree.append(e)
    for n in range(1, 41):
        assert tree.root(n) == mth(d[:n]), n
        assert core.naive_root(b"".join(d[:n])) == mth(d[:n])
        for m in range(n):
            p = tree.inclusion_proof(m, n)
            assert p == path(m, d[:n]), (m, n)
            assert core.verify_inclusion(d[m], m, n, p, mth(d[:n]))
        for m in range(1, n + 1):
            c = tree.consistency_proof(m, n)
            assert c == subproof(m, d[:n], True), (m, n)
            assert core.verify_consistency(m, n, mth(d[:m]), mth(d[:n]), c)


def test_no_odd_node_duplication():
    # With duplicate-last, [a, b, c] and [a, b, c, c] share a root; here they must not.
    a, b, c = leaves(3)
    assert core.naive_root(a + b + c) != core.naive_root(a + b + c + c)
    t3, t4 = core.MerkleTree(), core.MerkleTree()
    t3.extend(a + b + c)
    t4.extend(a + b + c + c)
    assert t3.root() != t4.root()


def test_proof_argument_errors():
    tree = core.MerkleTree()
    tree.extend(b"".join(leaves(5)))
    with pytest.raises(ValueError):
        tree.inclusion_proof(5, 5)
    with pytest.raises(ValueError):
        tree.inclusion_proof(0, 6)
    with pytest.raises(ValueError):
        tree.consistency_proof(0, 5)
    with pytest.raises(ValueError):
        tree.consistency_proof(4, 3)
    with pytest.raises(ValueError):
        tree.root(6)
    with pytest.raises(ValueError):
        tree.append(b"short")
    with pytest.raises(ValueError):
        tree.extend(b"x" * 33)


# -- differential: compiled vs pure reference ------------------------------

def _mutations(p: list[bytes], draw_index: int, byte: int) -> list[bytes]:
    if not p:
        return [[H(b"extra")]]
    q = list(p)
    i = draw_index % len(q)
    flipped = bytearray(q[i])
    flipped[byte % 32] ^= 1
    q[i] = bytes(flipped)
    return [q, p[:-1], p + [p[-1]], list(reversed(p)) if len(p) > 1 else p + [H(b"x")]]


@settings(max_examples=120, deadline=None)
@given(n=st.integers(1, 300), data=st.data())
def test_tree_and_verifiers_differential(n, data):
    d = leaves(n, seed=n)
    fast, slow = core.MerkleTree(), _ref.MerkleTree()
    fast.extend(b"".join(d))
    slow.extend(b"".join(d))
    size = data.draw(st.integers(1, n), label="size")
    m = data.draw(st.integers(0, size - 1), label="index")
    assert fast.root(size) == slow.root(size) == core.naive_root(b"".join(d[:size])) == _ref.naive_root(b"".join(d[:size]))
    root = fast.root(size)
    p = fast.inclusion_proof(m, size)
    assert p == slow.inclusion_proof(m, size)
    assert core.verify_inclusion(d[m], m, size, p, root) and _ref.verify_inclusion(d[m], m, size, p, root)
    # Wrong index, leaf or path: both reject.  (A different tree_size may
    # legitimately accept: the size only fixes the path's shape, and the
    # root binds the size; so for it the two need only agree.)
    bad = [(d[m], (m + 1) % size if size > 1 else m + 1, size, p, root),
           (H(b"other"), m, size, p, root)]
    bad += [(d[m], m, size, q, root) for q in _mutations(p, data.draw(st.integers(0, 99)), data.draw(st.integers(0, 31)))]
    for args in bad:
        got = core.verify_inclusion(*args)
        assert got == _ref.verify_inclusion(*args)
        assert not got, args[1:3]
    other_size = (d[m], m, size + 1, p, root)
    assert core.verify_inclusion(*other_size) == _ref.verify_inclusion(*other_size)
    first = data.draw(st.integers(1, size), label="first")
    c = fast.consistency_proof(first, size)
    assert c == slow.consistency_proof(first, size)
    r1 = fast.root(first)
    assert core.verify_consistency(first, size, r1, root, c) and _ref.verify_consistency(first, size, r1, root, c)
    if first < size:
        for q in _mutations(c, data.draw(st.integers(0, 99)), data.draw(st.integers(0, 31))):
            assert core.verify_consistency(first, size, r1, root, q) == _ref.verify_consistency(first, size, r1, root, q)
            if q != c:
                assert not core.verify_consistency(first, size, r1, root, q)
        assert not core.verify_consistency(first, size, H(b"not the root"), root, c)
        assert not core.verify_consistency(first, size, r1, H(b"not the root"), c)


@settings(max_examples=150, deadline=None)
@given(n_entries=st.integers(1, 8), cut=st.integers(0, 10_000), flip=st.integers(0, 10_000),
       op=st.sampled_from(["flip", "truncate", "zeros", "none"]))
def test_scan_differential(n_entries, cut, flip, op):
    from aal_core.ledger import Ledger
    from aal_core.clock import ManualClock
    led = Ledger.memory(clock=ManualClock())
    for i in range(n_entries):
        led.append({"i": i, "s": "é" * (i % 3), "x": i / 7})
    buf = bytearray(led.store.contents())
    if op == "flip":
        buf[8 + flip % (len(buf) - 8)] ^= 1 << (flip % 8)
    elif op == "truncate":
        del buf[8 + cut % (len(buf) - 8):]
    elif op == "zeros":
        buf += bytes(cut % 200)
    body = bytes(buf)
    t1, t2 = core.MerkleTree(), _ref.MerkleTree()
    a = core.scan(body, 8, 0, b"\x00" * 32, t1)
    b = _ref.scan(body, 8, 0, b"\x00" * 32, t2)
    assert a == b
    assert t1.root() == t2.root()
    if op == "none":
        assert a[0] == core.SCAN_OK and a[1] == n_entries + 1


# -- the threaded scan: same answer as one pass, whatever the split --------

_BIG = {}


def _big_ledger() -> bytes:
    """~300 records, built once (hypothesis draws the damage)."""
    if "body" not in _BIG:
        from aal_core.clock import ManualClock
        from aal_core.ledger import Ledger
        led = Ledger.memory(clock=ManualClock())
        led.append_many([{"i": i, "s": "é" * (i % 5), "x": i / 7} for i in range(299)])
        _BIG["body"] = bytes(led.store.contents())
    return _BIG["body"]


@settings(max_examples=120, deadline=None)
@given(threads=st.sampled_from([1, 2, 3, 5]), block=st.sampled_from([2, 3, 16, 64, 1024]),
       pre=st.integers(0, 40), where=st.integers(0, 10 ** 9), bit=st.integers(0, 7),
       op=st.sampled_from(["flip", "flip2", "truncate", "zeros", "zero_tail", "none"]))
def test_threaded_scan_matches_one_pass(threads, block, pre, where, bit, op):
    buf = bytearray(_big_ledger())
    at = 8 + where % (len(buf) - 8)
    if op == "flip":
        buf[at] ^= 1 << bit
    elif op == "flip2":        # two faults: the lower one must be reported
        buf[at] ^= 1 << bit
        buf[8 + (where // 7) % (len(buf) - 8)] ^= 0x20
    elif op == "truncate":
        del buf[at:]
    elif op == "zeros":
        buf += bytes(where % 300)
    elif op == "zero_tail":    # a record whose bytes never reached the disk
        buf[at:] = bytes(len(buf) - at)
    body = bytes(buf)
    # A tree that already holds `pre` leaves: the scan's Merkle blocks then
    # start off alignment, as when the scan continues an open tree.
    head = os.urandom(32 * pre)
    t1, t2 = core.MerkleTree(), _ref.MerkleTree()
    t1.extend(head)
    t2.extend(head)
    a = core.scan(body, 8, 0, b"\x00" * 32, t1, True, threads, block)
    b = _ref.scan(body, 8, 0, b"\x00" * 32, t2)
    assert a == b
    assert t1.size == t2.size == pre + a[1]
    for m in {0, 1, pre, t1.size // 2, t1.size - 1, t1.size}:
        if 0 <= m <= t1.size:
            assert t1.root(m) == t2.root(m)
    if t1.size:
        i = where % t1.size
        assert t1.inclusion_proof(i, t1.size) == t2.inclusion_proof(i, t1.size)
    # The tree keeps growing correctly after a (possibly cut back) scan.
    t1.append(H(b"next"))
    t2.append(H(b"next"))
    assert t1.root() == t2.root()
    if op == "none":
        assert a[0] == core.SCAN_OK and a[1] == 300


def test_scan_without_tree_or_offsets_threaded():
    body = _big_ledger()
    one = core.scan(body, 8, 0, b"\x00" * 32, None, False, 1)
    many = core.scan(body, 8, 0, b"\x00" * 32, None, False, 4, 8)
    assert one == many and one[0] == core.SCAN_OK and one[1] == 300 and one[5] == b""


def test_scan_rejects_bad_block():
    with pytest.raises(ValueError, match="block"):
        core.scan(_big_ledger(), 8, 0, b"\x00" * 32, None, True, 2, 1)


def test_openssl_version_is_reported():
    assert core.openssl_version().startswith("OpenSSL")


def test_build_without_openssl_headers_stops_with_a_clear_message(tmp_path):
    """setup.py probes libcrypto before compiling anything: an evp.h that
    does not compile (as good as a missing one) stops the build, naming the
    package to install, instead of a late compiler error or a fallback."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    (tmp_path / "openssl").mkdir()
    (tmp_path / "openssl" / "evp.h").write_text("#error no OpenSSL headers here\n")
    env = dict(os.environ, CFLAGS=f"-I{tmp_path}")
    r = subprocess.run([sys.executable, "setup.py", "--version"], cwd=root, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "apt-get install libssl-dev" in r.stderr and "openssl/evp.h" in r.stderr


def _records(body: bytes) -> list[tuple[int, bytes]]:
    """(offset, preimage) of each framed record after the magic."""
    out, pos = [], 8
    while pos < len(body):
        n = struct.unpack_from("<I", body, pos)[0]
        out.append((pos, body[pos + 8:pos + 8 + n]))
        pos += 8 + n + 32
    return out


def _set_prev_digit(p: bytes, digit: bytes) -> bytes:
    """Overwrite previous_hash's first hex digit (same length)."""
    k = p.index(b'"previous_hash":"') + 17
    if p[k:k + 1] == digit:
        digit = b"1" if digit == b"0" else b"0"
    return p[:k] + digit + p[k + 1:]


_FORGERIES = {
    # a well-formed previous_hash that is not the previous entry's hash
    "link": lambda p: _set_prev_digit(p, b"0"),
    "hex_upper": lambda p: _set_prev_digit(p, b"A"),
    "hex_other": lambda p: _set_prev_digit(p, b"g"),
    "index": lambda p: p.replace(b',"index":', b',"index":1', 1),
    "index_zero": lambda p: p.replace(b',"index":', b',"index":0', 1),
    "key": lambda p: p.replace(b',"index":', b',"indeks":', 1),
    "no_ts": lambda p: p[:p.rindex(b":") + 1] + b"}",
    "short": lambda p: p[:40],
}


@settings(max_examples=80, deadline=None)
@given(kind=st.sampled_from(sorted(_FORGERIES)), which=st.integers(1, 299),
       threads=st.sampled_from([1, 3]), block=st.sampled_from([2, 16, 1024]))
def test_forged_records_with_valid_hashes(kind, which, threads, block):
    """Records re-hashed after an edit pass the hash check, so the layout,
    index and link checks must catch them, at the right index, with the
    same verdict as the reference and whatever the thread split."""
    body = _big_ledger()
    off, pre = _records(body)[which]
    forged = _FORGERIES[kind](pre)
    rec = core.frame(forged, H(forged))
    n_old = 8 + len(pre) + 32
    bad = body[:off] + rec + body[off + n_old:]
    a = core.scan(bad, 8, 0, b"\x00" * 32, core.MerkleTree(), True, threads, block)
    b = _ref.scan(bad, 8, 0, b"\x00" * 32, _ref.MerkleTree())
    assert a == b
    assert a[0] == core.SCAN_CORRUPT and a[1] == which and a[2] == off
    want = {"link": "previous_hash does not match", "index": "index out of sequence"}.get(
        kind, "not in the canonical record layout")
    assert want in a[4]


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 200), data=st.data())
def test_truncate_then_regrow_is_the_same_tree(n, data):
    """A staged batch whose write failed is dropped with truncate; the tree
    then grows as if it never had those leaves (compiled and reference)."""
    d = leaves(n, seed=n)
    other = leaves(n, seed=n + 1000)
    cut = data.draw(st.integers(0, n), label="cut")
    fast, slow = core.MerkleTree(), _ref.MerkleTree()
    for t in (fast, slow):
        t.extend(b"".join(d))
        t.extend(b"".join(other[:data.draw(st.integers(0, n), label="staged")]))
        t.truncate(n)
        t.truncate(cut)
        t.extend(b"".join(other[cut:]))
    ref = core.MerkleTree()
    ref.extend(b"".join(d[:cut] + other[cut:]))
    assert len(fast) == len(slow) == len(ref) == n
    for size in sorted({1, cut or 1, n, data.draw(st.integers(1, n), label="size")}):
        assert fast.root(size) == slow.root(size) == ref.root(size)
        i = data.draw(st.integers(0, size - 1), label="index")
        assert fast.inclusion_proof(i, size) == slow.inclusion_proof(i, size) == ref.inclusion_proof(i, size)
        assert fast.consistency_proof(1, size) == ref.consistency_proof(1, size)
    with pytest.raises(ValueError):
        fast.truncate(n + 1)
