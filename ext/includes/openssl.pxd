# C declarations of the part of OpenSSL's libcrypto (openssl/evp.h) the
# ledger hashes with: SHA3-256 through EVP.  Modules that cimport this link
# -lcrypto (setup.py LIBRARIES).  OpenSSL 3 API, with EVP_sha3_256() for 1.1.1.

cdef extern from "openssl/evp.h" nogil:
    ctypedef struct EVP_MD:
        pass
    ctypedef struct EVP_MD_CTX:
        pass
    ctypedef struct OSSL_LIB_CTX:
        pass
    ctypedef struct OSSL_PARAM:
        pass

    const EVP_MD *EVP_sha3_256()
    EVP_MD_CTX *EVP_MD_CTX_new()
    void EVP_MD_CTX_free(EVP_MD_CTX *ctx)
    int EVP_DigestUpdate(EVP_MD_CTX *ctx, const void *d, size_t cnt)
    int EVP_DigestFinal_ex(EVP_MD_CTX *ctx, unsigned char *md, unsigned int *s)

# OpenSSL 3 only: fetched (provider) digests, whose explicit fetch skips the
# per-call implicit lookup; aal_ossl3.h maps them onto the 1.1.1 calls there.
cdef extern from "aal_ossl3.h" nogil:
    bint AAL_OPENSSL3
    EVP_MD *EVP_MD_fetch(OSSL_LIB_CTX *libctx, const char *algorithm, const char *properties)
    int EVP_DigestInit_ex2(EVP_MD_CTX *ctx, const EVP_MD *type, const OSSL_PARAM *params)

cdef extern from "openssl/crypto.h" nogil:
    enum: OPENSSL_VERSION
    const char *OpenSSL_version(int t)
