# C declarations of ext/includes/aal_sha3.h (vendored SHA3-256 + RFC 9162 hashing).
from libc.stdint cimport uint8_t

cdef extern from "aal_sha3.h" nogil:
    void aal_sha3_256(const uint8_t *data, size_t n, uint8_t *out)
    void aal_merkle_leaf(const uint8_t *data, size_t n, uint8_t *out)
    void aal_merkle_node(const uint8_t *left, const uint8_t *right, uint8_t *out)
