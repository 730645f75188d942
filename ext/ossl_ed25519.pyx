# cython: language_level=3
"""Ed25519 through OpenSSL's libcrypto (the one the ledger already hashes
with), for the daemon's signing key (aal_core.keys).

Why here and not the `cryptography` package: in the daemon, importing
cryptography's bindings cost ~7 MiB of RSS for one key, a signature now and
then and a PEM file; libcrypto is mapped anyway.  OpenSSL >= 1.1.1 (raw
keys, EVP_DigestSign).  Ed25519 is deterministic, so the differential test
(tests/test_ed25519_diff.py) requires the same public key, PEM bytes and
signatures as cryptography's for the same seeds and messages.
"""
from libc.string cimport memcpy

cdef extern from "openssl/evp.h" nogil:
    ctypedef struct EVP_PKEY:
        pass
    ctypedef struct EVP_MD_CTX:
        pass
    ctypedef struct EVP_PKEY_CTX:
        pass
    ctypedef struct EVP_MD:
        pass
    ctypedef struct ENGINE:
        pass
    ctypedef struct EVP_CIPHER:
        pass
    enum: EVP_PKEY_ED25519
    EVP_PKEY *EVP_PKEY_new_raw_private_key(int type, ENGINE *e, const unsigned char *priv, size_t n)
    EVP_PKEY *EVP_PKEY_new_raw_public_key(int type, ENGINE *e, const unsigned char *pub, size_t n)
    int EVP_PKEY_get_raw_public_key(const EVP_PKEY *pkey, unsigned char *pub, size_t *n)
    int EVP_PKEY_id(const EVP_PKEY *pkey)
    void EVP_PKEY_free(EVP_PKEY *pkey)
    EVP_MD_CTX *EVP_MD_CTX_new()
    void EVP_MD_CTX_free(EVP_MD_CTX *ctx)
    int EVP_DigestSignInit(EVP_MD_CTX *ctx, EVP_PKEY_CTX **pctx, const EVP_MD *t, ENGINE *e, EVP_PKEY *pkey)
    int EVP_DigestSign(EVP_MD_CTX *ctx, unsigned char *sig, size_t *siglen,
                       const unsigned char *tbs, size_t tbslen)
    int EVP_DigestVerifyInit(EVP_MD_CTX *ctx, EVP_PKEY_CTX **pctx, const EVP_MD *t, ENGINE *e,
                             EVP_PKEY *pkey)
    int EVP_DigestVerify(EVP_MD_CTX *ctx, const unsigned char *sig, size_t siglen,
                         const unsigned char *tbs, size_t tbslen)

cdef extern from "openssl/bio.h" nogil:
    ctypedef struct BIO:
        pass
    ctypedef struct BIO_METHOD:
        pass
    BIO *BIO_new_mem_buf(const void *buf, int n)
    BIO *BIO_new(const BIO_METHOD *t)
    const BIO_METHOD *BIO_s_mem()
    long BIO_get_mem_data(BIO *b, char **pp)
    int BIO_free(BIO *b)

cdef extern from "openssl/pem.h" nogil:
    ctypedef int pem_password_cb(char *buf, int size, int rwflag, void *u)
    EVP_PKEY *PEM_read_bio_PrivateKey(BIO *bp, EVP_PKEY **x, pem_password_cb *cb, void *u)
    int PEM_write_bio_PKCS8PrivateKey(BIO *bp, EVP_PKEY *x, const EVP_CIPHER *enc, char *kstr, int klen,
                                      pem_password_cb *cb, void *u)

cdef extern from "openssl/err.h" nogil:
    void ERR_clear_error()

import os

cdef enum:
    C_SEED_LEN = 32
    C_PUBLIC_LEN = 32
    C_SIGNATURE_LEN = 64

SEED_LEN = C_SEED_LEN
PUBLIC_LEN = C_PUBLIC_LEN
SIGNATURE_LEN = C_SIGNATURE_LEN


cdef int _no_password(char *buf, int size, int rwflag, void *u) noexcept nogil:
    # An encrypted key is refused, never prompted for on a terminal.
    return -1


cdef class PrivateKey:
    """An Ed25519 private key held by libcrypto (never shown: no repr of it)."""

    cdef EVP_PKEY *pkey
    cdef EVP_MD_CTX *ctx

    def __cinit__(self):
        self.pkey = NULL
        self.ctx = NULL

    def __dealloc__(self):
        if self.ctx != NULL:
            EVP_MD_CTX_free(self.ctx)
        if self.pkey != NULL:
            EVP_PKEY_free(self.pkey)

    def __repr__(self):
        return f"PrivateKey(ed25519, public={self.public_bytes().hex()})"

    def __reduce__(self):
        raise TypeError("a private key is not pickled")

    @staticmethod
    def from_seed(seed) -> PrivateKey:
        """The key whose 32-byte private seed is `seed` (RFC 8032)."""
        cdef const unsigned char[::1] s = seed
        cdef PrivateKey k = PrivateKey.__new__(PrivateKey)
        if s.shape[0] != C_SEED_LEN:
            raise ValueError("an Ed25519 private seed is 32 bytes")
        k.pkey = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, &s[0], C_SEED_LEN)
        if k.pkey == NULL:
            ERR_clear_error()
            raise ValueError("libcrypto refused the Ed25519 seed")
        return k

    @staticmethod
    def generate() -> PrivateKey:
        """A new key from the kernel's CSPRNG (os.urandom)."""
        return PrivateKey.from_seed(os.urandom(C_SEED_LEN))

    @staticmethod
    def from_pem(pem) -> PrivateKey:
        """Load an unencrypted PKCS#8 PEM key: ValueError when it is not one
        (or is encrypted), TypeError when it is a key of another algorithm."""
        cdef const unsigned char[::1] p = pem
        cdef BIO *bio
        cdef EVP_PKEY *pk
        cdef PrivateKey k
        if p.shape[0] == 0 or p.shape[0] > (1 << 20):
            raise ValueError("not a PEM private key")
        bio = BIO_new_mem_buf(&p[0], <int>p.shape[0])
        if bio == NULL:
            raise MemoryError()
        pk = PEM_read_bio_PrivateKey(bio, NULL, _no_password, NULL)
        BIO_free(bio)
        if pk == NULL:
            ERR_clear_error()
            raise ValueError("not an unencrypted PKCS#8 PEM private key")
        if EVP_PKEY_id(pk) != EVP_PKEY_ED25519:
            EVP_PKEY_free(pk)
            raise TypeError("not an Ed25519 key")
        k = PrivateKey.__new__(PrivateKey)
        k.pkey = pk
        return k

    def pem(self) -> bytes:
        """Unencrypted PKCS#8 PEM (what `openssl pkey` reads)."""
        cdef BIO *bio = BIO_new(BIO_s_mem())
        cdef char *data = NULL
        cdef long n
        if bio == NULL:
            raise MemoryError()
        try:
            if PEM_write_bio_PKCS8PrivateKey(bio, self.pkey, NULL, NULL, 0, NULL, NULL) != 1:
                ERR_clear_error()
                raise RuntimeError("libcrypto could not write the key as PEM")
            n = BIO_get_mem_data(bio, &data)
            return data[:n]
        finally:
            BIO_free(bio)

    def public_bytes(self) -> bytes:
        """The raw 32-byte public key."""
        cdef unsigned char out[C_PUBLIC_LEN]
        cdef size_t n = C_PUBLIC_LEN
        if EVP_PKEY_get_raw_public_key(self.pkey, out, &n) != 1 or n != C_PUBLIC_LEN:
            ERR_clear_error()
            raise RuntimeError("libcrypto could not derive the Ed25519 public key")
        return out[:C_PUBLIC_LEN]

    def sign(self, data) -> bytes:
        """The raw 64-byte Ed25519 signature of `data` (bytes-like)."""
        cdef const unsigned char[::1] d = data
        cdef unsigned char sig[C_SIGNATURE_LEN]
        cdef size_t n = C_SIGNATURE_LEN
        cdef const unsigned char *p = &d[0] if d.shape[0] else <const unsigned char *>b""
        if self.ctx == NULL:
            self.ctx = EVP_MD_CTX_new()
            if self.ctx == NULL:
                raise MemoryError()
        if EVP_DigestSignInit(self.ctx, NULL, NULL, NULL, self.pkey) != 1 or \
                EVP_DigestSign(self.ctx, sig, &n, p, d.shape[0]) != 1 or n != C_SIGNATURE_LEN:
            ERR_clear_error()
            raise RuntimeError("libcrypto could not sign")
        return sig[:C_SIGNATURE_LEN]


def verify(public_key, signature, data) -> bool:
    """True when `signature` (raw 64 bytes) is `public_key`'s (raw 32) over
    `data`; ValueError for a public key or signature of the wrong length."""
    cdef const unsigned char[::1] pub = public_key
    cdef const unsigned char[::1] sig = signature
    cdef const unsigned char[::1] d = data
    cdef const unsigned char *p = &d[0] if d.shape[0] else <const unsigned char *>b""
    cdef EVP_PKEY *pk
    cdef EVP_MD_CTX *ctx
    cdef int ok
    if pub.shape[0] != C_PUBLIC_LEN:
        raise ValueError("an Ed25519 public key is 32 bytes")
    if sig.shape[0] != C_SIGNATURE_LEN:
        raise ValueError("an Ed25519 signature is 64 bytes")
    pk = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, &pub[0], C_PUBLIC_LEN)
    if pk == NULL:
        ERR_clear_error()
        raise ValueError("not an Ed25519 public key")
    ctx = EVP_MD_CTX_new()
    if ctx == NULL:
        EVP_PKEY_free(pk)
        raise MemoryError()
    ok = EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, pk) == 1 and \
        EVP_DigestVerify(ctx, &sig[0], C_SIGNATURE_LEN, p, d.shape[0]) == 1
    EVP_MD_CTX_free(ctx)
    EVP_PKEY_free(pk)
    ERR_clear_error()
    return bool(ok)
