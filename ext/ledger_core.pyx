# cython: language_level=3
"""The ledger's hot paths: SHA3-256, the RFC 9162 Merkle tree (SHA3-256,
leaf = H(0x00 || entry_hash), node = H(0x01 || left || right), no duplicated
odd node), inclusion/consistency proofs and their verifiers, and the scanner
that checks a ledger file's records at start.

Why compiled: the daemon verifies the whole file before it serves, and a
board that has run for a year holds hundreds of thousands of entries.  The
pure-Python reference of every function here is aal_core.ledger._ref; the
hypothesis tests run both on the same inputs.

The tree keeps every complete (perfect, aligned) subtree node, level by
level: appending a leaf costs O(1) amortised hashes, the root of any size
m <= n costs O(log m), and a proof costs O(log n) hashes.  Memory: about
2 x 32 bytes per entry.
"""
from libc.stdint cimport uint8_t, uint64_t
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcpy, memcmp, memset

from aal_sha3 cimport aal_sha3_256, aal_merkle_leaf, aal_merkle_node

cdef extern from *:
    """
    static inline int aal_ctz64(unsigned long long x) { return __builtin_ctzll(x); }
    static inline int aal_clz64(unsigned long long x) { return __builtin_clzll(x); }
    """
    int aal_ctz64(unsigned long long x) nogil
    int aal_clz64(unsigned long long x) nogil

import struct

_HDR = struct.Struct("<II")

# File format (see README "Ledger file format").
MAGIC = b"AALLDG\x00\x01"
cdef enum:
    MAGIC_LEN = 8
    HEADER_LEN = 8
    MAX_RECORD = 16 * 1024 * 1024

# scan() outcomes
cdef enum:
    S_OK = 0
    S_TORN = 1
    S_CORRUPT = 2

SCAN_OK = S_OK
SCAN_TORN = S_TORN
SCAN_CORRUPT = S_CORRUPT

cdef const char *HEX = b"0123456789abcdef"


cdef inline size_t split_point(size_t size) noexcept nogil:
    """Largest power of two strictly below size (size >= 2)."""
    return (<size_t>1) << (63 - aal_clz64(size - 1))


def sha3_256(data) -> bytes:
    """SHA3-256 of a bytes-like object."""
    cdef const uint8_t[::1] v = data
    cdef uint8_t out[HASH_LEN]
    with nogil:
        aal_sha3_256(&v[0] if v.shape[0] else <const uint8_t *>b"", v.shape[0], out)
    return out[:HASH_LEN]


def leaf_hash(data) -> bytes:
    """RFC 9162 leaf hash: SHA3-256(0x00 || data)."""
    cdef const uint8_t[::1] v = data
    cdef uint8_t out[HASH_LEN]
    aal_merkle_leaf(&v[0] if v.shape[0] else <const uint8_t *>b"", v.shape[0], out)
    return out[:HASH_LEN]


def node_hash(bytes left, bytes right) -> bytes:
    """RFC 9162 interior node: SHA3-256(0x01 || left || right)."""
    cdef uint8_t out[HASH_LEN]
    if len(left) != HASH_LEN or len(right) != HASH_LEN:
        raise ValueError("node_hash takes two 32-byte hashes")
    aal_merkle_node(<const uint8_t *><char *>left, <const uint8_t *><char *>right, out)
    return out[:HASH_LEN]


cdef class MerkleTree:
    """Append-only Merkle tree over 32-byte entry hashes."""

    def __cinit__(self):
        cdef int i
        for i in range(MAX_LEVELS):
            self.levels[i] = NULL
            self.caps[i] = 0
        self.n = 0

    def __dealloc__(self):
        cdef int i
        for i in range(MAX_LEVELS):
            free(self.levels[i])

    cdef int _ensure(self, int level, size_t nodes) noexcept nogil:
        cdef size_t cap = self.caps[level]
        cdef uint8_t *p
        if nodes <= cap:
            return 0
        cap = cap * 2 if cap else 64
        while cap < nodes:
            cap *= 2
        p = <uint8_t *>realloc(self.levels[level], cap * HASH_LEN)
        if p == NULL:
            return -1
        self.levels[level] = p
        self.caps[level] = cap
        return 0

    cdef int push(self, const uint8_t *entry_hash) noexcept nogil:
        cdef size_t i = self.n
        cdef int l = 0
        if self._ensure(0, i + 1) < 0:
            return -1
        aal_merkle_leaf(entry_hash, HASH_LEN, self.levels[0] + HASH_LEN * i)
        while i & 1:
            if self._ensure(l + 1, (i >> 1) + 1) < 0:
                return -1
            aal_merkle_node(self.levels[l] + HASH_LEN * (i - 1), self.levels[l] + HASH_LEN * i,
                            self.levels[l + 1] + HASH_LEN * (i >> 1))
            i >>= 1
            l += 1
        self.n += 1
        return 0

    cdef void root_into(self, size_t size, uint8_t *out) noexcept nogil:
        """Root of the first `size` leaves (size <= n): fold the perfect
        subtrees of size's binary decomposition from the right."""
        cdef int l
        cdef uint8_t acc[HASH_LEN]
        if size == 0:
            aal_sha3_256(<const uint8_t *>b"", 0, out)
            return
        l = aal_ctz64(size)
        memcpy(acc, self.levels[l] + HASH_LEN * ((size >> l) - 1), HASH_LEN)
        l += 1
        while l < MAX_LEVELS and (size >> l):
            if (size >> l) & 1:
                aal_merkle_node(self.levels[l] + HASH_LEN * ((size >> l) - 1), acc, acc)
            l += 1
        memcpy(out, acc, HASH_LEN)

    cdef void mth(self, size_t a, size_t b, uint8_t *out) noexcept nogil:
        """MTH(D[a:b]) for b <= n, from stored nodes where the range is a
        perfect aligned subtree, else split as RFC 9162 does."""
        cdef size_t size = b - a
        cdef size_t k
        cdef int l
        cdef uint8_t left[HASH_LEN]
        cdef uint8_t right[HASH_LEN]
        if (size & (size - 1)) == 0 and (a & (size - 1)) == 0:
            l = aal_ctz64(size)
            memcpy(out, self.levels[l] + HASH_LEN * (a >> l), HASH_LEN)
            return
        k = split_point(size)
        self.mth(a, a + k, left)
        self.mth(a + k, b, right)
        aal_merkle_node(left, right, out)

    # -- Python API -----------------------------------------------------

    @property
    def size(self):
        return self.n

    def __len__(self):
        return self.n

    @property
    def nbytes(self):
        cdef size_t total = 0
        cdef int i
        for i in range(MAX_LEVELS):
            total += self.caps[i] * HASH_LEN
        return total

    def append(self, entry_hash) -> int:
        """Add one 32-byte entry hash; returns the new size."""
        cdef const uint8_t[::1] v = entry_hash
        if v.shape[0] != HASH_LEN:
            raise ValueError("an entry hash is 32 bytes")
        if self.push(&v[0]) < 0:
            raise MemoryError("merkle tree: out of memory")
        return self.n

    def extend(self, hashes) -> int:
        """Add the concatenation of many 32-byte entry hashes (one call)."""
        cdef const uint8_t[::1] v = hashes
        cdef size_t i, count
        cdef int rc = 0
        if v.shape[0] % HASH_LEN:
            raise ValueError("extend takes a concatenation of 32-byte hashes")
        count = v.shape[0] // HASH_LEN
        with nogil:
            for i in range(count):
                rc = self.push(&v[0] + HASH_LEN * i)
                if rc < 0:
                    break
        if rc < 0:
            raise MemoryError("merkle tree: out of memory")
        return self.n

    def leaf(self, size_t index) -> bytes:
        """The stored leaf hash H(0x00 || entry_hash) at index."""
        if index >= self.n:
            raise IndexError(f"leaf {index} out of range (size {self.n})")
        return self.levels[0][HASH_LEN * index:HASH_LEN * (index + 1)]

    def root(self, size=None) -> bytes:
        """Merkle root of the first `size` leaves (default: all)."""
        cdef size_t m = self.n if size is None else self._check_size(size)
        cdef uint8_t out[HASH_LEN]
        self.root_into(m, out)
        return out[:HASH_LEN]

    cdef size_t _check_size(self, object size) except *:
        if size < 0 or size > self.n:
            raise ValueError(f"tree size {size} out of range 0..{self.n}")
        return size

    def inclusion_proof(self, size_t index, size_t size) -> list:
        """RFC 9162 2.1.3.1 PATH(index, D[size]), leaf-to-root order."""
        cdef uint8_t buf[MAX_LEVELS * HASH_LEN]
        cdef int count = 0
        cdef size_t a = 0, b, k
        self._check_size(size)
        if index >= size:
            raise ValueError(f"index {index} is not below tree size {size}")
        b = size
        with nogil:
            while b - a > 1:
                k = split_point(b - a)
                if index < a + k:
                    self.mth(a + k, b, buf + HASH_LEN * count)
                    b = a + k
                else:
                    self.mth(a, a + k, buf + HASH_LEN * count)
                    a = a + k
                count += 1
        return [buf[HASH_LEN * i:HASH_LEN * (i + 1)] for i in range(count - 1, -1, -1)]

    def consistency_proof(self, size_t first, size_t second) -> list:
        """RFC 9162 2.1.4.1 PROOF(first, D[second]), in RFC order."""
        cdef uint8_t buf[(MAX_LEVELS + 1) * HASH_LEN]
        cdef int count = 0
        cdef size_t a = 0, b, k, m
        cdef bint flag = True
        self._check_size(second)
        if first < 1 or first > second:
            raise ValueError(f"consistency needs 1 <= first <= second, got {first}, {second}")
        if first == second:
            return []
        b = second
        m = first
        with nogil:
            while True:
                if m == b - a:
                    if not flag:
                        self.mth(a, b, buf + HASH_LEN * count)
                        count += 1
                    break
                k = split_point(b - a)
                if m <= k:
                    self.mth(a + k, b, buf + HASH_LEN * count)
                    b = a + k
                else:
                    self.mth(a, a + k, buf + HASH_LEN * count)
                    m -= k
                    a = a + k
                    flag = False
                count += 1
        return [buf[HASH_LEN * i:HASH_LEN * (i + 1)] for i in range(count - 1, -1, -1)]


def naive_root(hashes) -> bytes:
    """Root of the concatenated 32-byte entry hashes, rebuilt from scratch
    level by level (the O(n) baseline bench/ledger.py compares against)."""
    cdef const uint8_t[::1] v = hashes
    cdef size_t n = v.shape[0] // HASH_LEN, i, w
    cdef uint8_t *work
    cdef uint8_t out[HASH_LEN]
    if v.shape[0] % HASH_LEN:
        raise ValueError("naive_root takes a concatenation of 32-byte hashes")
    if n == 0:
        return sha3_256(b"")
    work = <uint8_t *>malloc(n * HASH_LEN)
    if work == NULL:
        raise MemoryError()
    with nogil:
        for i in range(n):
            aal_merkle_leaf(&v[0] + HASH_LEN * i, HASH_LEN, work + HASH_LEN * i)
        # Pairs left to right; an odd last node is carried up unchanged (no
        # duplication), which gives the same root as RFC 9162's split rule.
        while n > 1:
            w = 0
            i = 0
            while i + 1 < n:
                aal_merkle_node(work + HASH_LEN * i, work + HASH_LEN * (i + 1), work + HASH_LEN * w)
                w += 1
                i += 2
            if i < n:
                memcpy(work + HASH_LEN * w, work + HASH_LEN * i, HASH_LEN)
                w += 1
            n = w
        memcpy(out, work, HASH_LEN)
    free(work)
    return out[:HASH_LEN]


cdef inline bint _lsb(size_t x) noexcept nogil:
    return x & 1


def verify_inclusion(entry_hash, size_t index, size_t size, path, root) -> bool:
    """RFC 9162 2.1.3.2: does `path` prove entry_hash at `index` in the tree
    of `size` leaves with `root`?"""
    cdef size_t fn = index, sn
    cdef uint8_t r[HASH_LEN]
    cdef const uint8_t[::1] e = entry_hash
    cdef bytes p
    if index >= size or e.shape[0] != HASH_LEN or len(root) != HASH_LEN:
        return False
    sn = size - 1
    aal_merkle_leaf(&e[0], HASH_LEN, r)
    for p in path:
        if len(p) != HASH_LEN or sn == 0:
            return False
        if _lsb(fn) or fn == sn:
            aal_merkle_node(<const uint8_t *><char *>p, r, r)
            if not _lsb(fn):
                while not _lsb(fn) and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            aal_merkle_node(r, <const uint8_t *><char *>p, r)
        fn >>= 1
        sn >>= 1
    return sn == 0 and memcmp(r, <const uint8_t *><char *>root, HASH_LEN) == 0


def verify_consistency(size_t first, size_t second, bytes first_root, bytes second_root, path) -> bool:
    """RFC 9162 2.1.4.2: does `path` prove the tree of `first` leaves with
    first_root is a prefix of the tree of `second` leaves with second_root?"""
    cdef size_t fn, sn
    cdef uint8_t fr[HASH_LEN]
    cdef uint8_t sr[HASH_LEN]
    cdef bytes c
    cdef list items
    if len(first_root) != HASH_LEN or len(second_root) != HASH_LEN:
        return False
    if first < 1 or first > second:
        return False
    items = list(path)
    if first == second:
        return len(items) == 0 and first_root == second_root
    if (first & (first - 1)) == 0:
        items.insert(0, first_root)
    if not items:
        return False
    for c in items:
        if len(c) != HASH_LEN:
            return False
    fn = first - 1
    sn = second - 1
    while _lsb(fn):
        fn >>= 1
        sn >>= 1
    memcpy(fr, <const uint8_t *><char *>items[0], HASH_LEN)
    memcpy(sr, fr, HASH_LEN)
    for c in items[1:]:
        if sn == 0:
            return False
        if _lsb(fn) or fn == sn:
            aal_merkle_node(<const uint8_t *><char *>c, fr, fr)
            aal_merkle_node(<const uint8_t *><char *>c, sr, sr)
            if not _lsb(fn):
                while not _lsb(fn) and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            aal_merkle_node(sr, <const uint8_t *><char *>c, sr)
        fn >>= 1
        sn >>= 1
    return (memcmp(fr, <const uint8_t *><char *>first_root, HASH_LEN) == 0
            and memcmp(sr, <const uint8_t *><char *>second_root, HASH_LEN) == 0
            and sn == 0)


# -- the file scanner -------------------------------------------------------

cdef enum ScanError:
    E_NONE = 0
    E_HEADER = 1
    E_TOO_BIG = 2
    E_HASH = 3
    E_MALFORMED = 4
    E_INDEX = 5
    E_LINK = 6
    E_NOMEM = 7

_REASONS = {
    E_HEADER: "bad record frame (length check failed)",
    E_TOO_BIG: "record length over the 16 MiB limit",
    E_HASH: "hash mismatch (stored hash is not SHA3-256 of the entry)",
    E_MALFORMED: "entry is not in the canonical record layout",
    E_INDEX: "index out of sequence",
    E_LINK: "previous_hash does not match the previous entry's hash",
    E_NOMEM: "out of memory while scanning",
}


cdef inline uint64_t rd32(const uint8_t *p) noexcept nogil:
    return (<uint64_t>p[0]) | (<uint64_t>p[1] << 8) | (<uint64_t>p[2] << 16) | (<uint64_t>p[3] << 24)


cdef inline bint all_zero(const uint8_t *p, size_t n) noexcept nogil:
    cdef size_t i
    for i in range(n):
        if p[i]:
            return False
    return True


cdef inline bint is_num(uint8_t c) noexcept nogil:
    return (c >= 48 and c <= 57) or c == 46 or c == 101 or c == 69 or c == 43 or c == 45


cdef int check_layout(const uint8_t *p, size_t n, uint64_t index, const uint8_t *prev_hex) noexcept nogil:
    """The preimage must read
    {"data":{...},"index":<index>,"previous_hash":"<prev_hex>","timestamp":<number>}
    Parsed from the end, where the three fixed keys sit (keys are sorted)."""
    cdef size_t j, end_digits, hexpos
    cdef int k
    cdef uint64_t v = 0, mul = 1
    if n < 8 + 2 + 9 + 1 + 18 + 64 + 14 + 1 + 1:
        return E_MALFORMED
    if memcmp(p, b'{"data":{', 9) != 0 or p[n - 1] != 125:  # '}'
        return E_MALFORMED
    j = n - 2
    while j > 0 and is_num(p[j]):
        j -= 1
    if j == n - 2:  # no timestamp digits
        return E_MALFORMED
    # p[j] is the ':' of "timestamp":
    if j < 13 + 64 + 18 + 9 + 9 or memcmp(p + j - 13, b'","timestamp":', 14) != 0:
        return E_MALFORMED
    j -= 13  # p[j] is the '"' closing previous_hash
    hexpos = j - 64
    for k in range(64):
        if not ((p[hexpos + k] >= 48 and p[hexpos + k] <= 57) or (p[hexpos + k] >= 97 and p[hexpos + k] <= 102)):
            return E_MALFORMED
    j = hexpos
    if memcmp(p + j - 18, b',"previous_hash":"', 18) != 0:
        return E_MALFORMED
    j -= 18  # p[j] is the ',' after the index digits
    end_digits = j
    while j > 0 and p[j - 1] >= 48 and p[j - 1] <= 57:
        j -= 1
        if end_digits - j > 19:
            return E_MALFORMED
        v += (p[j] - 48) * mul
        mul *= 10
    if j == end_digits or (end_digits - j > 1 and p[j] == 48):
        return E_MALFORMED
    if j < 9 + 9 or memcmp(p + j - 9, b',"index":', 9) != 0:
        return E_MALFORMED
    if p[j - 10] != 125:  # the data object's closing '}'
        return E_MALFORMED
    if memcmp(p + hexpos, prev_hex, 64) != 0:
        return E_LINK
    if v != index:
        return E_INDEX
    return E_NONE


cdef inline void to_hex(const uint8_t *h, uint8_t *out) noexcept nogil:
    cdef int i
    for i in range(HASH_LEN):
        out[2 * i] = HEX[h[i] >> 4]
        out[2 * i + 1] = HEX[h[i] & 15]


def scan(buf, size_t offset, uint64_t index, bytes prev_hash, MerkleTree tree, bint want_offsets=True):
    """Check records from `offset` to the end of `buf` (a file's bytes,
    magic excluded), expecting `index` next and chaining from `prev_hash`.
    Each good record's hash is pushed into `tree`.

    Returns (status, next_index, end_offset, last_hash, reason, offsets):
    status SCAN_OK (clean end), SCAN_TORN (the bytes from end_offset on are
    an incomplete last record, or zero fill), SCAN_CORRUPT (record
    `next_index` at end_offset is bad; reason says why).  offsets are the
    record start offsets as little-endian uint64 bytes."""
    cdef const uint8_t[::1] v = buf
    cdef const uint8_t *base
    cdef size_t size = v.shape[0], pos = offset, rest, plen
    cdef uint64_t idx = index
    cdef uint8_t prev[HASH_LEN]
    cdef uint8_t prev_hex[64]
    cdef uint8_t h[HASH_LEN]
    cdef uint64_t *offs = NULL
    cdef size_t noffs = 0, capoffs = 0
    cdef uint64_t *grown
    cdef uint64_t L, NL
    cdef int err = E_NONE
    cdef int status = S_OK
    cdef bint have_tree = tree is not None
    if len(prev_hash) != HASH_LEN:
        raise ValueError("prev_hash must be 32 bytes")
    if offset > size:
        raise ValueError("offset beyond the buffer")
    memcpy(prev, <const uint8_t *><char *>prev_hash, HASH_LEN)
    base = &v[0] if size else <const uint8_t *>b""
    with nogil:
        to_hex(prev, prev_hex)
        while pos < size:
            rest = size - pos
            if rest < HEADER_LEN:
                status = S_TORN
                break
            L = rd32(base + pos)
            NL = rd32(base + pos + 4)
            if (L ^ NL) != <uint64_t>0xFFFFFFFFu:
                if all_zero(base + pos, rest):
                    status = S_TORN
                else:
                    status = S_CORRUPT
                    err = E_HEADER
                break
            if L > MAX_RECORD:
                status = S_CORRUPT
                err = E_TOO_BIG
                break
            plen = <size_t>L
            if HEADER_LEN + plen + HASH_LEN > rest:
                status = S_TORN
                break
            aal_sha3_256(base + pos + HEADER_LEN, plen, h)
            if memcmp(h, base + pos + HEADER_LEN + plen, HASH_LEN) != 0:
                if all_zero(base + pos + HEADER_LEN, rest - HEADER_LEN):
                    status = S_TORN
                else:
                    status = S_CORRUPT
                    err = E_HASH
                break
            err = check_layout(base + pos + HEADER_LEN, plen, idx, prev_hex)
            if err != E_NONE:
                status = S_CORRUPT
                break
            if want_offsets:
                if noffs == capoffs:
                    capoffs = capoffs * 2 if capoffs else 4096
                    grown = <uint64_t *>realloc(offs, capoffs * sizeof(uint64_t))
                    if grown == NULL:
                        status = S_CORRUPT
                        err = E_NOMEM
                        break
                    offs = grown
                offs[noffs] = pos
                noffs += 1
            if have_tree:
                if tree.push(h) < 0:
                    status = S_CORRUPT
                    err = E_NOMEM
                    break
            memcpy(prev, h, HASH_LEN)
            to_hex(prev, prev_hex)
            idx += 1
            pos += HEADER_LEN + plen + HASH_LEN
    try:
        if err == E_NOMEM:
            raise MemoryError("ledger scan: out of memory")
        offsets = (<char *>offs)[:noffs * sizeof(uint64_t)] if noffs else b""
    finally:
        free(offs)
    return (status, idx, pos, prev[:HASH_LEN], _REASONS.get(err, ""), offsets)


def frame(bytes preimage, bytes entry_hash) -> bytes:
    """One record: u32 length, u32 ~length (little-endian), the preimage,
    the 32 raw hash bytes."""
    cdef Py_ssize_t L = len(preimage)
    if L > MAX_RECORD:
        raise ValueError("record over 16 MiB")
    if len(entry_hash) != HASH_LEN:
        raise ValueError("an entry hash is 32 bytes")
    return _HDR.pack(L, L ^ 0xFFFFFFFF) + preimage + entry_hash
