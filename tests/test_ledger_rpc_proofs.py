"""What the ledger RPC hands out, checked without aal-core's own code: a real
daemon with 1,300 entries; `ledger.get` pages of at most 1,000 entries;
every hash recomputed from the entry; `ledger.proof` / `ledger.consistency`
paths equal to RFC 9162's PATH / PROOF computed here from the entry hashes
(so the order is the RFC's), as lowercase hex, and accepted by verifiers
written here from RFC 9162 sections 2.1.3.2 and 2.1.4.2 with hashlib."""
from __future__ import annotations

import asyncio
import hashlib
import re

import pytest

from aal_core.client import AsyncClient, RpcCallError
from aal_core.errors import INVALID_PARAMS, NOT_FOUND
from helpers import cleanup, start_daemon
from test_ledger_core import mth, path, subproof
from test_ledger_file import ref_entry_hash

N = 1300
HEX64 = re.compile(r"[0-9a-f]{64}")


def H(b: bytes) -> bytes:
    return hashlib.sha3_256(b).digest()


def rfc_verify_inclusion(index: int, size: int, leaf_input: bytes, proof: list[bytes], root: bytes) -> bool:
    """RFC 9162 2.1.3.2, step by step."""
    if index >= size:
        return False
    fn, sn = index, size - 1
    r = H(b"\x00" + leaf_input)
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = H(b"\x01" + p + r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = H(b"\x01" + r + p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def rfc_verify_consistency(first: int, second: int, first_hash: bytes, second_hash: bytes,
                           proof: list[bytes]) -> bool:
    """RFC 9162 2.1.4.2, step by step."""
    if first == second:
        return not proof and first_hash == second_hash
    if first & (first - 1) == 0:
        proof = [first_hash] + proof
    if not proof:
        return False
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = H(b"\x01" + c + fr)
            sr = H(b"\x01" + c + sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = H(b"\x01" + sr + c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == first_hash and sr == second_hash


def raw(hexes: list[str]) -> list[bytes]:
    assert all(HEX64.fullmatch(h) for h in hexes), hexes
    return [bytes.fromhex(h) for h in hexes]


@pytest.fixture(scope="module")
def big():
    """A daemon (control loop off, so the chain only grows by our appends)
    with N entries, and every entry fetched page by page."""
    d = start_daemon(config="[venom]\nenabled = false\n")
    try:
        async def fill():
            async with AsyncClient(d.socket) as c:
                n0 = (await c.call("ledger.manifest"))["chain_length"]
                await asyncio.gather(*[c.call("ledger.append", {"data": {"k": i, "s": "ü" * (i % 4)}})
                                       for i in range(N - n0)])
        asyncio.run(fill())
        assert d.call("ledger.manifest")["chain_length"] == N
        pages = [d.call("ledger.get", {"start": s})["entries"] for s in range(0, N, 1000)]
        yield d, pages
    finally:
        cleanup(d)


def test_get_pages_hold_at_most_1000_entries(big):
    d, pages = big
    assert [len(p) for p in pages] == [1000, N - 1000]        # start alone: up to 1,000
    entries = pages[0] + pages[1]
    assert [e["index"] for e in entries] == list(range(N))
    assert len(d.call("ledger.get", {"start": 0, "end": 1000})["entries"]) == 1000
    assert d.call("ledger.get", {"start": 1200, "end": 2200})["entries"] == entries[1200:]   # clamped
    assert d.call("ledger.get", {"start": N})["entries"] == []
    with pytest.raises(RpcCallError) as ei:
        d.call("ledger.get", {"start": 100, "end": 1101})
    assert ei.value.code == INVALID_PARAMS and "at most 1000" in ei.value.message
    assert ei.value.data["max"] == 1000
    with pytest.raises(RpcCallError) as ei:
        d.call("ledger.get", {"start": N + 1})
    assert ei.value.code == NOT_FOUND
    assert d.call("ledger.get", {"index": 1234})["entries"] == [entries[1234]]


def test_every_hash_and_link_recomputed_independently(big):
    _, pages = big
    entries = pages[0] + pages[1]
    assert entries[0]["previous_hash"] == "0" * 64
    for prev, e in zip([None] + entries, entries):
        if prev is not None:
            assert e["previous_hash"] == prev["hash"]
        assert e["hash"] == ref_entry_hash(e["index"], e["timestamp"], e["data"], e["previous_hash"])


@pytest.mark.parametrize("index,size", [(0, 1), (0, 2), (1, 2), (5, 7), (6, 7), (511, 512), (512, 513),
                                        (0, N), (999, N), (N - 1, N), (700, 1000), (1023, 1025)])
def test_inclusion_proofs_are_rfc_paths_in_rfc_order(big, index, size):
    d, pages = big
    leaves = raw([e["hash"] for e in pages[0] + pages[1]])
    p = d.call("ledger.proof", {"index": index, "tree_size": size})
    assert (p["index"], p["tree_size"]) == (index, size)
    assert raw(p["path"]) == path(index, leaves[:size])            # exactly PATH(m, D[n]), leaf to root
    root = mth(leaves[:size])
    assert bytes.fromhex(p["root"]) == root and p["entry_hash"] == leaves[index].hex()
    assert rfc_verify_inclusion(index, size, leaves[index], raw(p["path"]), root)
    # the verifier here is not vacuous: a wrong leaf, root, index or path fails
    assert not rfc_verify_inclusion(index, size, leaves[index - 1] if index else leaves[1], raw(p["path"]), root)
    other_root = mth(leaves[1:size + 1] if size < N else leaves[:size - 1])
    assert not rfc_verify_inclusion(index, size, leaves[index], raw(p["path"]), other_root)
    if p["path"]:
        assert not rfc_verify_inclusion(index ^ 1, size, leaves[index], raw(p["path"]), root)
        assert not rfc_verify_inclusion(index, size, leaves[index], raw(p["path"])[::-1] + [root], root)


@pytest.mark.parametrize("first,second", [(1, 1), (1, 2), (2, 3), (3, 7), (4, 8), (6, 8), (7, 13),
                                          (1000, N), (1024, N), (N - 1, N), (100, 1024)])
def test_consistency_proofs_are_rfc_proofs_in_rfc_order(big, first, second):
    d, pages = big
    leaves = raw([e["hash"] for e in pages[0] + pages[1]])
    c = d.call("ledger.consistency", {"first": first, "second": second})
    assert (c["first"], c["second"]) == (first, second)
    want = subproof(first, leaves[:second], True) if first < second else []
    assert raw(c["path"]) == want                                  # exactly PROOF(m, D[n])
    r1, r2 = mth(leaves[:first]), mth(leaves[:second])
    assert (bytes.fromhex(c["first_root"]), bytes.fromhex(c["second_root"])) == (r1, r2)
    assert rfc_verify_consistency(first, second, r1, r2, raw(c["path"]))
    if first < second:
        other = mth(leaves[1:first + 1])                           # a different history of the same size
        assert not rfc_verify_consistency(first, second, other, r2, raw(c["path"]))
        assert not rfc_verify_consistency(first, second, r1, mth(leaves[:second - 1] + [leaves[0]]),
                                          raw(c["path"]))


def test_manifest_root_is_the_rfc_root_of_every_entry(big):
    d, pages = big
    leaves = raw([e["hash"] for e in pages[0] + pages[1]])
    m = d.call("ledger.manifest")
    assert m["chain_length"] == N and m["merkle_root"] == mth(leaves).hex()
    assert m["genesis_hash"] == leaves[0].hex() and m["latest_hash"] == leaves[-1].hex()
    assert d.call("ledger.consistency", {"first": N})["second_root"] == m["merkle_root"]
