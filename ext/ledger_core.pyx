# cython: language_level=3
"""The ledger's hot paths: SHA3-256 (OpenSSL's libcrypto, through EVP), the
RFC 9162 Merkle tree (SHA3-256, leaf = H(0x00 || entry_hash), node =
H(0x01 || left || right), no duplicated odd node), inclusion/consistency
proofs and their verifiers, and the scanner that checks a ledger file's
records at start.

Why compiled: the daemon verifies the whole file before it serves, and a
board that has run for a year holds hundreds of thousands of entries.  The
scan hashes on every CPU without the GIL (see scan()).  The pure-Python
reference of every function here is aal_core.ledger._ref; the hypothesis
tests run both on the same inputs.

The tree keeps every complete (perfect, aligned) subtree node, level by
level: appending a leaf costs O(1) amortised hashes, the root of any size
m <= n costs O(log m), and a proof costs O(log n) hashes.  Memory: about
2 x 32 bytes per entry.
"""
from libc.stdint cimport uint8_t, uint64_t
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcpy, memcmp

from openssl cimport (
    AAL_OPENSSL3, EVP_MD, EVP_MD_CTX, EVP_MD_CTX_free, EVP_MD_CTX_new, EVP_MD_fetch,
    EVP_DigestFinal_ex, EVP_DigestInit_ex2, EVP_DigestUpdate, EVP_sha3_256, OPENSSL_VERSION,
    OpenSSL_version,
)

cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned int pthread_key_t
    ctypedef unsigned long pthread_t
    ctypedef struct pthread_attr_t:
        pass
    int pthread_create(pthread_t *thread, const pthread_attr_t *attr, void *(*start)(void *) noexcept nogil,
                       void *arg)
    int pthread_join(pthread_t thread, void **retval)
    int pthread_key_create(pthread_key_t *key, void (*destructor)(void *) noexcept nogil)
    void *pthread_getspecific(pthread_key_t key)
    int pthread_setspecific(pthread_key_t key, const void *value)

cdef extern from *:
    """
    static inline int aal_ctz64(unsigned long long x) { return __builtin_ctzll(x); }
    static inline int aal_clz64(unsigned long long x) { return __builtin_clzll(x); }
    """
    int aal_ctz64(unsigned long long x) nogil
    int aal_clz64(unsigned long long x) nogil

cdef extern from *:
    """
    static inline size_t aal_atomic_add(size_t *p, size_t v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
    static inline size_t aal_atomic_load(size_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
    static inline void aal_atomic_set_int(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
    static inline void aal_atomic_min(size_t *p, size_t v) {
        size_t cur = __atomic_load_n(p, __ATOMIC_RELAXED);
        while (v < cur && !__atomic_compare_exchange_n(p, &cur, v, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {}
    }
    """
    size_t aal_atomic_add(size_t *p, size_t v) nogil
    size_t aal_atomic_load(size_t *p) nogil
    void aal_atomic_set_int(int *p, int v) nogil
    void aal_atomic_min(size_t *p, size_t v) nogil

import os
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


# -- SHA3-256 through OpenSSL's EVP ---------------------------------------
#
# One production SHA3: libcrypto's (hand-written assembly on x86_64 and
# aarch64).  The digest is fetched once here; each thread hashes with its own
# reused EVP_MD_CTX (a pthread key, freed at thread exit), so the loops below
# run without the GIL and set up no context per hash.  The pure-Python
# reference (aal_core.ledger._ref, hashlib) is the cross-check in the tests.

cdef const EVP_MD *SHA3 = NULL
cdef pthread_key_t CTX_KEY


cdef void _free_ctx(void *ctx) noexcept nogil:
    EVP_MD_CTX_free(<EVP_MD_CTX *>ctx)


cdef int _init_openssl() except -1:
    global SHA3
    if AAL_OPENSSL3:
        SHA3 = EVP_MD_fetch(NULL, b"SHA3-256", NULL)
    if SHA3 == NULL:
        SHA3 = EVP_sha3_256()
    if SHA3 == NULL:
        raise ImportError("aal_core.ledger_core: OpenSSL's libcrypto offers no SHA3-256 "
                          "(a FIPS-only provider configuration?); the ledger cannot hash")
    if pthread_key_create(&CTX_KEY, _free_ctx) != 0:
        raise ImportError("aal_core.ledger_core: pthread_key_create failed")
    return 0


_init_openssl()


cdef EVP_MD_CTX *thread_ctx() noexcept nogil:
    """This thread's digest context (created on first use; NULL if out of
    memory)."""
    cdef EVP_MD_CTX *c = <EVP_MD_CTX *>pthread_getspecific(CTX_KEY)
    if c == NULL:
        c = EVP_MD_CTX_new()
        if c == NULL:
            return NULL
        if pthread_setspecific(CTX_KEY, c) != 0:
            EVP_MD_CTX_free(c)
            return NULL
    return c


cdef EVP_MD_CTX *need_ctx() except NULL:
    cdef EVP_MD_CTX *c = thread_ctx()
    if c == NULL:
        raise MemoryError("ledger: cannot allocate an OpenSSL digest context")
    return c


cdef int digest(EVP_MD_CTX *c, const uint8_t *a, size_t na, const uint8_t *b, size_t nb,
                uint8_t *out) noexcept nogil:
    """out = SHA3-256(a || b); 1 on success, 0 if OpenSSL failed."""
    cdef unsigned int olen
    if not EVP_DigestInit_ex2(c, SHA3, NULL):
        return 0
    if na and not EVP_DigestUpdate(c, a, na):
        return 0
    if nb and not EVP_DigestUpdate(c, b, nb):
        return 0
    return EVP_DigestFinal_ex(c, out, &olen)


cdef inline int merkle_leaf(EVP_MD_CTX *c, const uint8_t *entry_hash, uint8_t *out) noexcept nogil:
    """RFC 9162 leaf over a 32-byte entry hash: H(0x00 || hash), one update."""
    cdef uint8_t buf[1 + HASH_LEN]
    buf[0] = 0
    memcpy(buf + 1, entry_hash, HASH_LEN)
    return digest(c, buf, 1 + HASH_LEN, NULL, 0, out)


cdef inline int merkle_node(EVP_MD_CTX *c, const uint8_t *left, const uint8_t *right,
                            uint8_t *out) noexcept nogil:
    """RFC 9162 node: H(0x01 || left || right), one update (out may alias)."""
    cdef uint8_t buf[1 + 2 * HASH_LEN]
    buf[0] = 1
    memcpy(buf + 1, left, HASH_LEN)
    memcpy(buf + 1 + HASH_LEN, right, HASH_LEN)
    return digest(c, buf, 1 + 2 * HASH_LEN, NULL, 0, out)


cdef inline int empty_root(EVP_MD_CTX *c, uint8_t *out) noexcept nogil:
    return digest(c, NULL, 0, NULL, 0, out)


cdef int _hash_failed() except -1:
    raise RuntimeError("ledger: OpenSSL SHA3-256 failed")


def openssl_version() -> str:
    """The libcrypto the ledger hashes with (for logs and the benchmark)."""
    return OpenSSL_version(OPENSSL_VERSION).decode()


def sha3_256(data) -> bytes:
    """SHA3-256 of a bytes-like object."""
    cdef const uint8_t[::1] v = data
    cdef uint8_t out[HASH_LEN]
    cdef EVP_MD_CTX *c = need_ctx()
    cdef int ok
    cdef size_t n = v.shape[0]
    if n < 4096:  # short inputs: releasing the GIL costs more than it frees
        ok = digest(c, &v[0] if n else NULL, n, NULL, 0, out)
    else:
        with nogil:
            ok = digest(c, &v[0], n, NULL, 0, out)
    if not ok:
        _hash_failed()
    return out[:HASH_LEN]


def leaf_hash(data) -> bytes:
    """RFC 9162 leaf hash: SHA3-256(0x00 || data)."""
    cdef const uint8_t[::1] v = data
    cdef uint8_t out[HASH_LEN]
    cdef uint8_t zero = 0
    if not digest(need_ctx(), &zero, 1, &v[0] if v.shape[0] else NULL, v.shape[0], out):
        _hash_failed()
    return out[:HASH_LEN]


def node_hash(bytes left, bytes right) -> bytes:
    """RFC 9162 interior node: SHA3-256(0x01 || left || right)."""
    cdef uint8_t out[HASH_LEN]
    if len(left) != HASH_LEN or len(right) != HASH_LEN:
        raise ValueError("node_hash takes two 32-byte hashes")
    if not merkle_node(need_ctx(), <const uint8_t *><char *>left, <const uint8_t *><char *>right, out):
        _hash_failed()
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

    cdef int push(self, EVP_MD_CTX *c, const uint8_t *entry_hash) noexcept nogil:
        """Add a leaf: -1 out of memory, -2 hash failure (the tree is unchanged)."""
        cdef size_t i = self.n
        cdef int l = 0
        if self._ensure(0, i + 1) < 0:
            return -1
        if not merkle_leaf(c, entry_hash, self.levels[0] + HASH_LEN * i):
            return -2
        while i & 1:
            if self._ensure(l + 1, (i >> 1) + 1) < 0:
                return -1
            if not merkle_node(c, self.levels[l] + HASH_LEN * (i - 1), self.levels[l] + HASH_LEN * i,
                               self.levels[l + 1] + HASH_LEN * (i >> 1)):
                return -2
            i >>= 1
            l += 1
        self.n += 1
        return 0

    cdef int root_into(self, EVP_MD_CTX *c, size_t size, uint8_t *out) noexcept nogil:
        """Root of the first `size` leaves (size <= n): fold the perfect
        subtrees of size's binary decomposition from the right.  0 if a
        hash failed."""
        cdef int l
        cdef uint8_t acc[HASH_LEN]
        if size == 0:
            return empty_root(c, out)
        l = aal_ctz64(size)
        memcpy(acc, self.levels[l] + HASH_LEN * ((size >> l) - 1), HASH_LEN)
        l += 1
        while l < MAX_LEVELS and (size >> l):
            if (size >> l) & 1:
                if not merkle_node(c, self.levels[l] + HASH_LEN * ((size >> l) - 1), acc, acc):
                    return 0
            l += 1
        memcpy(out, acc, HASH_LEN)
        return 1

    cdef int mth(self, EVP_MD_CTX *c, size_t a, size_t b, uint8_t *out) noexcept nogil:
        """MTH(D[a:b]) for b <= n, from stored nodes where the range is a
        perfect aligned subtree, else split as RFC 9162 does.  0 if a hash
        failed."""
        cdef size_t size = b - a
        cdef size_t k
        cdef int l
        cdef uint8_t left[HASH_LEN]
        cdef uint8_t right[HASH_LEN]
        if (size & (size - 1)) == 0 and (a & (size - 1)) == 0:
            l = aal_ctz64(size)
            memcpy(out, self.levels[l] + HASH_LEN * (a >> l), HASH_LEN)
            return 1
        k = split_point(size)
        return (self.mth(c, a, a + k, left) and self.mth(c, a + k, b, right)
                and merkle_node(c, left, right, out))

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
        self._pushed(self.push(need_ctx(), &v[0]))
        return self.n

    cdef int _pushed(self, int rc) except -1:
        if rc == -1:
            raise MemoryError("merkle tree: out of memory")
        if rc < 0:
            _hash_failed()
        return 0

    def extend(self, hashes) -> int:
        """Add the concatenation of many 32-byte entry hashes (one call)."""
        cdef const uint8_t[::1] v = hashes
        cdef size_t i, count
        cdef int rc = 0
        cdef EVP_MD_CTX *c = need_ctx()
        if v.shape[0] % HASH_LEN:
            raise ValueError("extend takes a concatenation of 32-byte hashes")
        count = v.shape[0] // HASH_LEN
        with nogil:
            for i in range(count):
                rc = self.push(c, &v[0] + HASH_LEN * i)
                if rc < 0:
                    break
        self._pushed(rc)
        return self.n

    def truncate(self, size_t size) -> int:
        """Drop the leaves from `size` on (a batch staged by prepare whose
        write failed).  Only n moves: every stored node of a perfect subtree
        below `size` is still right, and push rewrites the rest as leaves
        come back."""
        if size > self.n:
            raise ValueError(f"tree size {size} out of range 0..{self.n}")
        self.n = size
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
        if not self.root_into(need_ctx(), m, out):
            _hash_failed()
        return out[:HASH_LEN]

    cdef size_t _check_size(self, object size) except *:
        if size < 0 or size > self.n:
            raise ValueError(f"tree size {size} out of range 0..{self.n}")
        return size

    def inclusion_proof(self, size_t index, size_t size) -> list:
        """RFC 9162 2.1.3.1 PATH(index, D[size]), leaf-to-root order."""
        cdef uint8_t buf[MAX_LEVELS * HASH_LEN]
        cdef int count = 0, ok = 1
        cdef size_t a = 0, b, k
        cdef EVP_MD_CTX *c = need_ctx()
        self._check_size(size)
        if index >= size:
            raise ValueError(f"index {index} is not below tree size {size}")
        b = size
        with nogil:
            while ok and b - a > 1:
                k = split_point(b - a)
                if index < a + k:
                    ok = self.mth(c, a + k, b, buf + HASH_LEN * count)
                    b = a + k
                else:
                    ok = self.mth(c, a, a + k, buf + HASH_LEN * count)
                    a = a + k
                count += 1
        if not ok:
            _hash_failed()
        return [buf[HASH_LEN * i:HASH_LEN * (i + 1)] for i in range(count - 1, -1, -1)]

    def consistency_proof(self, size_t first, size_t second) -> list:
        """RFC 9162 2.1.4.1 PROOF(first, D[second]), in RFC order."""
        cdef uint8_t buf[(MAX_LEVELS + 1) * HASH_LEN]
        cdef int count = 0, ok = 1
        cdef size_t a = 0, b, k, m
        cdef bint flag = True
        cdef EVP_MD_CTX *c = need_ctx()
        self._check_size(second)
        if first < 1 or first > second:
            raise ValueError(f"consistency needs 1 <= first <= second, got {first}, {second}")
        if first == second:
            return []
        b = second
        m = first
        with nogil:
            while ok:
                if m == b - a:
                    if not flag:
                        ok = self.mth(c, a, b, buf + HASH_LEN * count)
                        count += 1
                    break
                k = split_point(b - a)
                if m <= k:
                    ok = self.mth(c, a + k, b, buf + HASH_LEN * count)
                    b = a + k
                else:
                    ok = self.mth(c, a, a + k, buf + HASH_LEN * count)
                    m -= k
                    a = a + k
                    flag = False
                count += 1
        if not ok:
            _hash_failed()
        return [buf[HASH_LEN * i:HASH_LEN * (i + 1)] for i in range(count - 1, -1, -1)]


def naive_root(hashes) -> bytes:
    """Root of the concatenated 32-byte entry hashes, rebuilt from scratch
    level by level (the O(n) baseline bench/ledger.py compares against)."""
    cdef const uint8_t[::1] v = hashes
    cdef size_t n = v.shape[0] // HASH_LEN, i, w
    cdef uint8_t *work
    cdef uint8_t out[HASH_LEN]
    cdef EVP_MD_CTX *c = need_ctx()
    cdef int ok = 1
    if v.shape[0] % HASH_LEN:
        raise ValueError("naive_root takes a concatenation of 32-byte hashes")
    if n == 0:
        return sha3_256(b"")
    work = <uint8_t *>malloc(n * HASH_LEN)
    if work == NULL:
        raise MemoryError()
    with nogil:
        for i in range(n):
            ok &= merkle_leaf(c, &v[0] + HASH_LEN * i, work + HASH_LEN * i)
        # Pairs left to right; an odd last node is carried up unchanged (no
        # duplication), which gives the same root as RFC 9162's split rule.
        while n > 1:
            w = 0
            i = 0
            while i + 1 < n:
                ok &= merkle_node(c, work + HASH_LEN * i, work + HASH_LEN * (i + 1), work + HASH_LEN * w)
                w += 1
                i += 2
            if i < n:
                memcpy(work + HASH_LEN * w, work + HASH_LEN * i, HASH_LEN)
                w += 1
            n = w
        memcpy(out, work, HASH_LEN)
    free(work)
    if not ok:
        _hash_failed()
    return out[:HASH_LEN]


cdef inline bint _lsb(size_t x) noexcept nogil:
    return x & 1


cdef inline int _node(EVP_MD_CTX *c, const uint8_t *left, const uint8_t *right, uint8_t *out) except -1:
    if not merkle_node(c, left, right, out):
        _hash_failed()
    return 0


def verify_inclusion(entry_hash, size_t index, size_t size, path, root) -> bool:
    """RFC 9162 2.1.3.2: does `path` prove entry_hash at `index` in the tree
    of `size` leaves with `root`?"""
    cdef size_t fn = index, sn
    cdef uint8_t r[HASH_LEN]
    cdef const uint8_t[::1] e = entry_hash
    cdef bytes p
    cdef EVP_MD_CTX *c = need_ctx()
    if index >= size or e.shape[0] != HASH_LEN or len(root) != HASH_LEN:
        return False
    sn = size - 1
    if not merkle_leaf(c, &e[0], r):
        _hash_failed()
    for p in path:
        if len(p) != HASH_LEN or sn == 0:
            return False
        if _lsb(fn) or fn == sn:
            _node(c, <const uint8_t *><char *>p, r, r)
            if not _lsb(fn):
                while not _lsb(fn) and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            _node(c, r, <const uint8_t *><char *>p, r)
        fn >>= 1
        sn >>= 1
    return sn == 0 and memcmp(r, <const uint8_t *><char *>root, HASH_LEN) == 0


def verify_consistency(size_t first, size_t second, bytes first_root, bytes second_root, path) -> bool:
    """RFC 9162 2.1.4.2: does `path` prove the tree of `first` leaves with
    first_root is a prefix of the tree of `second` leaves with second_root?"""
    cdef size_t fn, sn
    cdef uint8_t fr[HASH_LEN]
    cdef uint8_t sr[HASH_LEN]
    cdef bytes p
    cdef list items
    cdef EVP_MD_CTX *c = need_ctx()
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
    for p in items:
        if len(p) != HASH_LEN:
            return False
    fn = first - 1
    sn = second - 1
    while _lsb(fn):
        fn >>= 1
        sn >>= 1
    memcpy(fr, <const uint8_t *><char *>items[0], HASH_LEN)
    memcpy(sr, fr, HASH_LEN)
    for p in items[1:]:
        if sn == 0:
            return False
        if _lsb(fn) or fn == sn:
            _node(c, <const uint8_t *><char *>p, fr, fr)
            _node(c, <const uint8_t *><char *>p, sr, sr)
            if not _lsb(fn):
                while not _lsb(fn) and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            _node(c, sr, <const uint8_t *><char *>p, sr)
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
    E_CRYPTO = 8

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
    cdef bint linked
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
    # Equal to prev_hex means valid lowercase hex; only a mismatch needs the
    # character check (malformed, or a well-formed wrong link?).  Skipping
    # it on the common path halves the cost of this whole pass.
    linked = memcmp(p + hexpos, prev_hex, 64) == 0
    if not linked:
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
    if not linked:
        return E_LINK
    if v != index:
        return E_INDEX
    return E_NONE


cdef inline void to_hex(const uint8_t *h, uint8_t *out) noexcept nogil:
    cdef int i
    for i in range(HASH_LEN):
        out[2 * i] = HEX[h[i] >> 4]
        out[2 * i + 1] = HEX[h[i] & 15]


cdef inline const uint8_t *stored_hash(const uint8_t *base, const uint64_t *offs, size_t i) noexcept nogil:
    """The 32 hash bytes at the end of record i."""
    return base + offs[i] + HEADER_LEN + <size_t>rd32(base + offs[i])


cdef struct ScanWork:
    # Shared by the scan's threads; the counters (`next`, `m_next`),
    # `first_bad` (lowest mismatching record so far, n if none) and `failed`
    # are only touched through the atomic helpers.
    const uint8_t *base
    const uint64_t *offs
    size_t n
    size_t block
    size_t next
    size_t first_bad
    int failed
    # Merkle subtrees: m_blocks aligned blocks of 2**m_k leaves from leaf
    # m_leaf0 (= record m_rec0), written into the tree's level arrays, which
    # are sized beforehand and do not move while the threads run.
    uint8_t **levels
    size_t m_leaf0
    size_t m_rec0
    size_t m_blocks
    size_t m_next
    int m_k


cdef int fill_subtree(EVP_MD_CTX *c, ScanWork *w, size_t b) noexcept nogil:
    """Leaves and inner nodes (levels 1..m_k) of Merkle block b: the same
    nodes, at the same places, as pushing its leaves one by one."""
    cdef size_t width = (<size_t>1) << w.m_k
    cdef size_t leaf0 = w.m_leaf0 + b * width
    cdef size_t rec0 = w.m_rec0 + b * width
    cdef size_t j, lo, hi
    cdef int l
    cdef uint8_t *dst = w.levels[0] + HASH_LEN * leaf0
    for j in range(width):
        if not merkle_leaf(c, stored_hash(w.base, w.offs, rec0 + j), dst + HASH_LEN * j):
            return 0
    for l in range(1, w.m_k + 1):
        lo = leaf0 >> l
        hi = lo + (width >> l)
        for j in range(lo, hi):
            if not merkle_node(c, w.levels[l - 1] + HASH_LEN * (2 * j), w.levels[l - 1] + HASH_LEN * (2 * j + 1),
                               w.levels[l] + HASH_LEN * j):
                return 0
    return 1


cdef void scan_worker(ScanWork *w) noexcept nogil:
    """Merkle blocks first, then hash-check blocks of records in file order;
    a worker stops checking at its first mismatch, or when a lower one is
    already known.  Blocks are taken in increasing order, so every block
    before the lowest mismatch has been checked in full by the time all
    workers return."""
    cdef EVP_MD_CTX *c = thread_ctx()
    cdef size_t start, end, i
    cdef const uint8_t *rec
    cdef size_t plen
    cdef uint8_t h[HASH_LEN]
    if c == NULL:
        aal_atomic_set_int(&w.failed, 1)
        return
    while True:
        start = aal_atomic_add(&w.m_next, 1)
        if start >= w.m_blocks:
            break
        if not fill_subtree(c, w, start):
            aal_atomic_set_int(&w.failed, 1)
            return
    while True:
        start = aal_atomic_add(&w.next, w.block)
        if start >= w.n or start > aal_atomic_load(&w.first_bad):
            return
        end = start + w.block if start + w.block < w.n else w.n
        for i in range(start, end):
            rec = w.base + w.offs[i]
            plen = <size_t>rd32(rec)
            if not digest(c, rec + HEADER_LEN, plen, NULL, 0, h):
                aal_atomic_set_int(&w.failed, 1)
                aal_atomic_min(&w.first_bad, i)
                return
            if memcmp(h, rec + HEADER_LEN + plen, HASH_LEN) != 0:
                aal_atomic_min(&w.first_bad, i)
                return


cdef void *scan_thread(void *arg) noexcept nogil:
    scan_worker(<ScanWork *>arg)
    return NULL


cdef int merkle_finish(MerkleTree t, EVP_MD_CTX *c, size_t a, size_t b, int k) noexcept nogil:
    """After the blocks [a, b) (aligned, 2**k leaves each) are filled: the
    nodes above level k that they complete, then n = b.  -1/-2 as push."""
    cdef int l = k + 1
    cdef size_t j
    while l < MAX_LEVELS and (b >> l):
        if t._ensure(l, b >> l) < 0:
            return -1
        for j in range(a >> l, b >> l):
            if not merkle_node(c, t.levels[l - 1] + HASH_LEN * (2 * j), t.levels[l - 1] + HASH_LEN * (2 * j + 1),
                               t.levels[l] + HASH_LEN * j):
                return -2
        l += 1
    t.n = b
    return 0


def default_threads() -> int:
    """Threads a scan uses by default: the CPUs this process may run on
    (at most 8; the hashing is CPU-bound and the file is in memory)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(8, n))


def scan(buf, size_t offset, uint64_t index, bytes prev_hash, MerkleTree tree, bint want_offsets=True,
         int threads=0, size_t block=1024):
    """Check records from `offset` to the end of `buf` (a file's bytes,
    magic excluded), expecting `index` next and chaining from `prev_hash`.
    Each good record's hash is pushed into `tree`.

    Returns (status, next_index, end_offset, last_hash, reason, offsets):
    status SCAN_OK (clean end), SCAN_TORN (the bytes from end_offset on are
    an incomplete last record, or zero fill), SCAN_CORRUPT (record
    `next_index` at end_offset is bad; reason says why).  offsets are the
    record start offsets as little-endian uint64 bytes.

    How (the result is the same as one pass checking record by record):
    1. one pass over the frames, no hashing: lengths, the canonical layout,
       the index and the link, taken against the previous record's *stored*
       hash (equal to its real hash wherever step 2 finds no mismatch);
    2. `threads` threads (0: default_threads()) re-hash the records, `block`
       records at a time, for the lowest index whose stored hash is wrong,
       while this thread pushes the stored hashes into the Merkle tree;
    3. the lower of the two failure points wins (a hash mismatch first, at
       the same record, as the one-pass order has it); the tree is cut back
       to the good records.  No Python object is made per record."""
    cdef const uint8_t[::1] v = buf
    cdef const uint8_t *base
    cdef size_t size = v.shape[0], pos = offset, rest, plen
    cdef uint64_t idx = index
    cdef uint8_t prev_hex[64]
    cdef const uint8_t *prev
    cdef uint64_t *offs = NULL
    cdef size_t noffs = 0, capoffs = 0, nlaid = 0, nhash, good, i, tree_n0 = 0
    cdef uint64_t *grown
    cdef uint64_t L, NL
    cdef int err = E_NONE
    cdef int status = S_OK
    cdef bint have_tree = tree is not None
    cdef EVP_MD_CTX *c = need_ctx()
    cdef int rc = 0, nthreads, started = 0, t, k = 0, l
    cdef size_t width, pre, mleaf0 = 0
    cdef ScanWork work
    cdef pthread_t tids[8]
    if len(prev_hash) != HASH_LEN:
        raise ValueError("prev_hash must be 32 bytes")
    if offset > size:
        raise ValueError("offset beyond the buffer")
    if block < 2:
        raise ValueError("block must be at least 2")
    while ((<size_t>2) << k) <= block:
        k += 1      # Merkle blocks: the largest power of two <= block
    width = (<size_t>1) << k
    nthreads = threads if threads > 0 else default_threads()
    if nthreads > 8:
        nthreads = 8
    base = &v[0] if size else <const uint8_t *>b""
    prev = <const uint8_t *><char *>prev_hash
    if have_tree:
        tree_n0 = tree.n
    with nogil:
        # 1. frames and layout, in order.
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
            if noffs == capoffs:
                capoffs = capoffs * 2 if capoffs else 4096
                grown = <uint64_t *>realloc(offs, capoffs * sizeof(uint64_t))
                if grown == NULL:
                    status = S_CORRUPT
                    err = E_NOMEM
                    break
                offs = grown
            offs[noffs] = pos   # a whole frame: its hash is checked in step 2
            noffs += 1
            err = check_layout(base + pos + HEADER_LEN, plen, idx, prev_hex)
            if err != E_NONE:
                status = S_CORRUPT
                break
            nlaid += 1
            prev = base + pos + HEADER_LEN + plen
            to_hex(prev, prev_hex)
            idx += 1
            pos += HEADER_LEN + plen + HASH_LEN
        nhash = noffs

        # 2. hashes and Merkle subtrees, on `nthreads` threads (this one
        # included); the tree's unaligned head and tail are pushed here.
        work.base = base
        work.offs = offs
        work.n = nhash
        work.block = block
        work.next = 0
        work.first_bad = nhash
        work.failed = 0
        work.m_k = k
        work.m_blocks = 0
        work.m_next = 0
        work.levels = NULL
        i = 0
        if err != E_NOMEM and have_tree and nlaid:
            pre = (width - tree.n % width) % width
            while i < nlaid and i < pre and rc == 0:
                rc = tree.push(c, stored_hash(base, offs, i))
                i += 1
            mleaf0 = tree.n
            if rc == 0 and nthreads > 1:
                work.m_blocks = (nlaid - i) >> k
                for l in range(k + 1):
                    if tree._ensure(l, (mleaf0 + (work.m_blocks << k)) >> l) < 0:
                        rc = -1
                        work.m_blocks = 0
                        break
            work.levels = tree.levels
            work.m_leaf0 = mleaf0
            work.m_rec0 = i
        if err != E_NOMEM and rc == 0:
            if nthreads > 1 and (nhash > block or work.m_blocks > 1):
                for t in range(nthreads - 1):
                    if pthread_create(&tids[started], NULL, scan_thread, &work) != 0:
                        break   # fewer threads; this one takes the rest
                    started += 1
            scan_worker(&work)
            for t in range(started):
                pthread_join(tids[t], NULL)
            if have_tree and not work.failed:
                if work.m_blocks:
                    rc = merkle_finish(tree, c, mleaf0, mleaf0 + (work.m_blocks << k), k)
                    i += work.m_blocks << k
                while i < nlaid and rc == 0:
                    rc = tree.push(c, stored_hash(base, offs, i))
                    i += 1

        # 3. the first failure wins.
        good = nlaid
        if work.first_bad < nhash:
            good = work.first_bad
            pos = offs[good]
            idx = index + good
            if work.failed:
                status = S_CORRUPT
                err = E_CRYPTO
            elif all_zero(base + pos + HEADER_LEN, size - pos - HEADER_LEN):
                status = S_TORN
                err = E_NONE
            else:
                status = S_CORRUPT
                err = E_HASH
        elif work.failed:
            status = S_CORRUPT
            err = E_CRYPTO
        if rc < 0 and err != E_CRYPTO:
            status = S_CORRUPT
            err = E_NOMEM if rc == -1 else E_CRYPTO
        if have_tree and tree.n > tree_n0 + good:
            # Cutting n back is a valid truncation: every stored node covers
            # a complete, aligned block of leaves, so those within the first
            # n are unchanged, and the rest are rewritten by later pushes.
            tree.n = tree_n0 + good
    try:
        if err == E_NOMEM:
            raise MemoryError("ledger scan: out of memory")
        if err == E_CRYPTO:
            _hash_failed()
        if good:
            last = (<const char *>stored_hash(base, offs, good - 1))[:HASH_LEN]
        else:
            last = prev_hash
        offsets = (<char *>offs)[:good * sizeof(uint64_t)] if (good and want_offsets) else b""
    finally:
        free(offs)
    return (status, idx, pos, last, _REASONS.get(err, ""), offsets)


def frame(bytes preimage, bytes entry_hash) -> bytes:
    """One record: u32 length, u32 ~length (little-endian), the preimage,
    the 32 raw hash bytes."""
    cdef Py_ssize_t L = len(preimage)
    if L > MAX_RECORD:
        raise ValueError("record over 16 MiB")
    if len(entry_hash) != HASH_LEN:
        raise ValueError("an entry hash is 32 bytes")
    return _HDR.pack(L, L ^ 0xFFFFFFFF) + preimage + entry_hash
