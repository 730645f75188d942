# cdef API of aal_core.ledger_core: the ledger's compiled hashing, Merkle tree
# and file scanner (see ledger_core.pyx).
from libc.stdint cimport uint8_t, uint64_t

from openssl cimport EVP_MD_CTX

cdef enum:
    HASH_LEN = 32
    MAX_LEVELS = 64

cdef EVP_MD_CTX *need_ctx() except NULL
cdef int digest(EVP_MD_CTX *c, const uint8_t *a, size_t na, const uint8_t *b, size_t nb,
                uint8_t *out) noexcept nogil

cdef class MerkleTree:
    cdef uint8_t *levels[MAX_LEVELS]
    cdef size_t caps[MAX_LEVELS]
    cdef size_t n

    cdef int _ensure(self, int level, size_t nodes) noexcept nogil
    cdef int push(self, EVP_MD_CTX *c, const uint8_t *entry_hash) noexcept nogil
    cdef int root_into(self, EVP_MD_CTX *c, size_t size, uint8_t *out) noexcept nogil
    cdef int mth(self, EVP_MD_CTX *c, size_t a, size_t b, uint8_t *out) noexcept nogil
    cdef size_t _check_size(self, object size) except *
    cdef int _pushed(self, int rc) except -1
