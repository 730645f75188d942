/* OpenSSL 3 vs 1.1.1 for ext/includes/openssl.pxd: on 3.x the real
 * EVP_MD_fetch / EVP_DigestInit_ex2; on 1.1.1 a fetch that returns NULL (the
 * caller falls back to EVP_sha3_256()) and Init_ex2 as Init_ex.  Older
 * OpenSSL has no SHA3 and is refused at compile time. */
#ifndef AAL_OSSL3_H
#define AAL_OSSL3_H
#include <openssl/opensslv.h>
#include <openssl/evp.h>

#if OPENSSL_VERSION_NUMBER < 0x10101000L
#error "aal-core needs OpenSSL >= 1.1.1 (SHA3-256); install libssl-dev from a current distribution"
#endif

#if OPENSSL_VERSION_NUMBER >= 0x30000000L
#define AAL_OPENSSL3 1
#else
#define AAL_OPENSSL3 0
typedef struct ossl_lib_ctx_st OSSL_LIB_CTX;
typedef struct ossl_param_st OSSL_PARAM;
static inline EVP_MD *EVP_MD_fetch(OSSL_LIB_CTX *l, const char *a, const char *p)
{ (void)l; (void)a; (void)p; return NULL; }
static inline int EVP_DigestInit_ex2(EVP_MD_CTX *c, const EVP_MD *t, const OSSL_PARAM *p)
{ (void)p; return EVP_DigestInit_ex(c, t, NULL); }
#endif
#endif
