"""Pure-Python reference of aal_core.ledger_core (same API, same results).

Imported only by the differential tests (tests/test_ledger_core.py), which
run both on the same hypothesis-generated inputs.  Written for clarity, not
speed: hashing is hashlib's SHA3-256.
"""
from __future__ import annotations

import hashlib
import struct

HASH_LEN = 32
MAGIC = b"AALLDG\x00\x01"
HEADER_LEN = 8
MAX_RECORD = 16 * 1024 * 1024
SCAN_OK, SCAN_TORN, SCAN_CORRUPT = 0, 1, 2

_REASONS = {
    "header": "bad record frame (length check failed)",
    "big": "record length over the 16 MiB limit",
    "hash": "hash mismatch (stored hash is not SHA3-256 of the entry)",
    "layout": "entry is not in the canonical record layout",
    "index": "index out of sequence",
    "link": "previous_hash does not match the previous entry's hash",
}


def sha3_256(data) -> bytes:
    return hashlib.sha3_256(bytes(data)).digest()


def leaf_hash(data) -> bytes:
    return sha3_256(b"\x00" + bytes(data))


def node_hash(left: bytes, right: bytes) -> bytes:
    if len(left) != HASH_LEN or len(right) != HASH_LEN:
        raise ValueError("node_hash takes two 32-byte hashes")
    return sha3_256(b"\x01" + left + right)


def _split(size: int) -> int:
    return 1 << ((size - 1).bit_length() - 1)


class MerkleTree:
    """levels[l][i] is the root of the perfect subtree of leaves [i*2^l, (i+1)*2^l)."""

    def __init__(self):
        self.levels: list[list[bytes]] = [[]]

    @property
    def size(self) -> int:
        return len(self.levels[0])

    def __len__(self):
        return self.size

    def append(self, entry_hash) -> int:
        if len(entry_hash) != HASH_LEN:
            raise ValueError("an entry hash is 32 bytes")
        self.levels[0].append(leaf_hash(entry_hash))
        i, l = self.size - 1, 0
        while i & 1:
            if len(self.levels) == l + 1:
                self.levels.append([])
            lv = self.levels[l]
            self.levels[l + 1].append(node_hash(lv[i - 1], lv[i]))
            i >>= 1
            l += 1
        return self.size

    def extend(self, hashes) -> int:
        hashes = bytes(hashes)
        if len(hashes) % HASH_LEN:
            raise ValueError("extend takes a concatenation of 32-byte hashes")
        for k in range(0, len(hashes), HASH_LEN):
            self.append(hashes[k:k + HASH_LEN])
        return self.size

    def truncate(self, size: int) -> int:
        self._check_size(size)
        for l, lv in enumerate(self.levels):
            del lv[size >> l:]
        return self.size

    def leaf(self, index: int) -> bytes:
        if not 0 <= index < self.size:
            raise IndexError(f"leaf {index} out of range (size {self.size})")
        return self.levels[0][index]

    def _check_size(self, size):
        if size < 0 or size > self.size:
            raise ValueError(f"tree size {size} out of range 0..{self.size}")
        return size

    def root(self, size=None) -> bytes:
        m = self.size if size is None else self._check_size(size)
        if m == 0:
            return sha3_256(b"")
        acc = None
        for l in range(m.bit_length()):
            if (m >> l) & 1:
                node = self.levels[l][(m >> l) - 1]
                acc = node if acc is None else node_hash(node, acc)
        return acc

    def mth(self, a: int, b: int) -> bytes:
        size = b - a
        if size & (size - 1) == 0 and a & (size - 1) == 0:
            l = size.bit_length() - 1
            return self.levels[l][a >> l]
        k = _split(size)
        return node_hash(self.mth(a, a + k), self.mth(a + k, b))

    def inclusion_proof(self, index: int, size: int) -> list:
        self._check_size(size)
        if index >= size:
            raise ValueError(f"index {index} is not below tree size {size}")
        out = []
        a, b = 0, size
        while b - a > 1:
            k = _split(b - a)
            if index < a + k:
                out.append(self.mth(a + k, b))
                b = a + k
            else:
                out.append(self.mth(a, a + k))
                a += k
        return out[::-1]

    def consistency_proof(self, first: int, second: int) -> list:
        self._check_size(second)
        if first < 1 or first > second:
            raise ValueError(f"consistency needs 1 <= first <= second, got {first}, {second}")
        if first == second:
            return []
        out = []
        a, b, m, flag = 0, second, first, True
        while True:
            if m == b - a:
                if not flag:
                    out.append(self.mth(a, b))
                break
            k = _split(b - a)
            if m <= k:
                out.append(self.mth(a + k, b))
                b = a + k
            else:
                out.append(self.mth(a, a + k))
                m -= k
                a += k
                flag = False
        return out[::-1]


def naive_root(hashes) -> bytes:
    hashes = bytes(hashes)
    if len(hashes) % HASH_LEN:
        raise ValueError("naive_root takes a concatenation of 32-byte hashes")
    level = [leaf_hash(hashes[k:k + HASH_LEN]) for k in range(0, len(hashes), HASH_LEN)]
    if not level:
        return sha3_256(b"")
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def verify_inclusion(entry_hash, index, size, path, root) -> bool:
    if index >= size or len(entry_hash) != HASH_LEN or len(root) != HASH_LEN:
        return False
    fn, sn = index, size - 1
    r = leaf_hash(entry_hash)
    for p in path:
        if len(p) != HASH_LEN or sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(first, second, first_root, second_root, path) -> bool:
    if len(first_root) != HASH_LEN or len(second_root) != HASH_LEN:
        return False
    if first < 1 or first > second:
        return False
    path = list(path)
    if first == second:
        return not path and first_root == second_root
    if first & (first - 1) == 0:
        path.insert(0, first_root)
    if not path or any(len(c) != HASH_LEN for c in path):
        return False
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == first_root and sr == second_root and sn == 0


def frame(preimage: bytes, entry_hash: bytes) -> bytes:
    if len(preimage) > MAX_RECORD:
        raise ValueError("record over 16 MiB")
    if len(entry_hash) != HASH_LEN:
        raise ValueError("an entry hash is 32 bytes")
    n = len(preimage)
    return struct.pack("<II", n, n ^ 0xFFFFFFFF) + preimage + entry_hash


_TAIL_PREFIX = b'{"data":{'


def _check_layout(p: bytes, index: int, prev_hex: bytes) -> str | None:
    """Same rules as ledger_core.check_layout, written as a parse."""
    if not p.startswith(_TAIL_PREFIX) or not p.endswith(b"}"):
        return "layout"
    j = len(p) - 1
    while j > 0 and p[j - 1] in b"0123456789.eE+-":
        j -= 1
    if j == len(p) - 1:
        return "layout"
    head = p[:j]
    key_ts = b'","timestamp":'
    if not head.endswith(key_ts):
        return "layout"
    head = head[:-len(key_ts)]
    hx = head[-64:]
    head = head[:-64]
    if len(hx) != 64 or any(c not in b"0123456789abcdef" for c in hx):
        return "layout"
    if not head.endswith(b',"previous_hash":"'):
        return "layout"
    head = head[:-18]
    k = len(head)
    while k > 0 and head[k - 1:k].isdigit():
        k -= 1
    digits = head[k:]
    if not digits or len(digits) > 19 or (len(digits) > 1 and digits[:1] == b"0"):
        return "layout"
    head = head[:k]
    if not head.endswith(b',"index":') or head[:-9][-1:] != b"}" or len(head) < 18:
        return "layout"
    if hx != prev_hex:
        return "link"
    if int(digits) != index:
        return "index"
    return None


def scan(buf, offset, index, prev_hash, tree, want_offsets=True, threads=0, block=1024):
    """One pass, record by record (threads/block: the compiled scan's
    parallelism knobs, which must not change the result)."""
    buf = bytes(buf)
    size, pos, idx, prev = len(buf), offset, index, bytes(prev_hash)
    offsets = []
    status, reason = SCAN_OK, ""
    while pos < size:
        rest = size - pos
        if rest < HEADER_LEN:
            status = SCAN_TORN
            break
        n, nn = struct.unpack_from("<II", buf, pos)
        if n ^ nn != 0xFFFFFFFF:
            if not any(buf[pos:]):
                status = SCAN_TORN
            else:
                status, reason = SCAN_CORRUPT, _REASONS["header"]
            break
        if n > MAX_RECORD:
            status, reason = SCAN_CORRUPT, _REASONS["big"]
            break
        if HEADER_LEN + n + HASH_LEN > rest:
            status = SCAN_TORN
            break
        p = buf[pos + HEADER_LEN:pos + HEADER_LEN + n]
        h = sha3_256(p)
        if h != buf[pos + HEADER_LEN + n:pos + HEADER_LEN + n + HASH_LEN]:
            if not any(buf[pos + HEADER_LEN:]):
                status = SCAN_TORN
            else:
                status, reason = SCAN_CORRUPT, _REASONS["hash"]
            break
        err = _check_layout(p, idx, prev.hex().encode())
        if err:
            status, reason = SCAN_CORRUPT, _REASONS[err]
            break
        if want_offsets:
            offsets.append(pos)
        if tree is not None:
            tree.append(h)
        prev = h
        idx += 1
        pos += HEADER_LEN + n + HASH_LEN
    return (status, idx, pos, prev, reason,
            struct.pack(f"<{len(offsets)}Q", *offsets) if offsets else b"")
