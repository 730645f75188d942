# cdef API of aal_core.ledger_core: the ledger's compiled hashing, Merkle tree
# and file scanner (see ledger_core.pyx).
from libc.stdint cimport uint8_t, uint64_t

cdef enum:
    HASH_LEN = 32
    MAX_LEVELS = 64

cdef class MerkleTree:
    cdef uint8_t *levels[MAX_LEVELS]
    cdef size_t caps[MAX_LEVELS]
    cdef size_t n

    cdef int _ensure(self, int level, size_t nodes) noexcept nogil
    cdef int push(self, const uint8_t *entry_hash) noexcept nogil
    cdef void root_into(self, size_t size, uint8_t *out) noexcept nogil
    cdef void mth(self, size_t a, size_t b, uint8_t *out) noexcept nogil
    cdef size_t _check_size(self, object size) except *
