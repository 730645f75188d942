/* SHA3-256 (FIPS 202) for the ledger: a small, dependency-free Keccak.
 *
 * Why vendored instead of linking OpenSSL's libcrypto: the ledger hashes
 * many short inputs (33-byte leaves, 65-byte nodes, ~200-byte entries), where
 * EVP's per-call context set-up costs more than the permutation itself, and
 * a header with no library keeps the build free of libssl-dev on the Jetson.
 * hashlib.sha3_256 (OpenSSL) is the cross-check in the tests and the floor in
 * bench/ledger.py.
 *
 * Written for aal-core from the FIPS 202 specification; the round constants
 * and rotation offsets are the standard Keccak-f[1600] tables.  Lanes are
 * read little-endian byte by byte, so the code is endian-neutral (compilers
 * turn it into plain loads on x86_64 and aarch64).
 */
#ifndef AAL_SHA3_H
#define AAL_SHA3_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define AAL_SHA3_256_RATE 136
#define AAL_SHA3_256_LEN 32

static const uint64_t aal_keccak_rc[24] = {
    0x0000000000000001ULL, 0x0000000000008082ULL, 0x800000000000808aULL,
    0x8000000080008000ULL, 0x000000000000808bULL, 0x0000000080000001ULL,
    0x8000000080008081ULL, 0x8000000000008009ULL, 0x000000000000008aULL,
    0x0000000000000088ULL, 0x0000000080008009ULL, 0x000000008000000aULL,
    0x000000008000808bULL, 0x800000000000008bULL, 0x8000000000008089ULL,
    0x8000000000008003ULL, 0x8000000000008002ULL, 0x8000000000000080ULL,
    0x000000000000800aULL, 0x800000008000000aULL, 0x8000000080008081ULL,
    0x8000000000008080ULL, 0x0000000080000001ULL, 0x8000000080008008ULL};

#define AAL_ROTL64(x, s) (((x) << (s)) | ((x) >> (64 - (s))))

/* One Keccak-f[1600] permutation, rounds unrolled lane by lane. */
static void aal_keccakf(uint64_t s[25])
{
    uint64_t b0, b1, b2, b3, b4, d0, d1, d2, d3, d4, t;
    int r;
    for (r = 0; r < 24; r++) {
        /* theta */
        b0 = s[0] ^ s[5] ^ s[10] ^ s[15] ^ s[20];
        b1 = s[1] ^ s[6] ^ s[11] ^ s[16] ^ s[21];
        b2 = s[2] ^ s[7] ^ s[12] ^ s[17] ^ s[22];
        b3 = s[3] ^ s[8] ^ s[13] ^ s[18] ^ s[23];
        b4 = s[4] ^ s[9] ^ s[14] ^ s[19] ^ s[24];
        d0 = b4 ^ AAL_ROTL64(b1, 1);
        d1 = b0 ^ AAL_ROTL64(b2, 1);
        d2 = b1 ^ AAL_ROTL64(b3, 1);
        d3 = b2 ^ AAL_ROTL64(b4, 1);
        d4 = b3 ^ AAL_ROTL64(b0, 1);
        s[0] ^= d0; s[5] ^= d0; s[10] ^= d0; s[15] ^= d0; s[20] ^= d0;
        s[1] ^= d1; s[6] ^= d1; s[11] ^= d1; s[16] ^= d1; s[21] ^= d1;
        s[2] ^= d2; s[7] ^= d2; s[12] ^= d2; s[17] ^= d2; s[22] ^= d2;
        s[3] ^= d3; s[8] ^= d3; s[13] ^= d3; s[18] ^= d3; s[23] ^= d3;
        s[4] ^= d4; s[9] ^= d4; s[14] ^= d4; s[19] ^= d4; s[24] ^= d4;
        /* rho and pi: walk the 24-lane cycle starting at lane 1 */
        t = s[1];
        b0 = s[10]; s[10] = AAL_ROTL64(t, 1);  t = b0;
        b0 = s[7];  s[7]  = AAL_ROTL64(t, 3);  t = b0;
        b0 = s[11]; s[11] = AAL_ROTL64(t, 6);  t = b0;
        b0 = s[17]; s[17] = AAL_ROTL64(t, 10); t = b0;
        b0 = s[18]; s[18] = AAL_ROTL64(t, 15); t = b0;
        b0 = s[3];  s[3]  = AAL_ROTL64(t, 21); t = b0;
        b0 = s[5];  s[5]  = AAL_ROTL64(t, 28); t = b0;
        b0 = s[16]; s[16] = AAL_ROTL64(t, 36); t = b0;
        b0 = s[8];  s[8]  = AAL_ROTL64(t, 45); t = b0;
        b0 = s[21]; s[21] = AAL_ROTL64(t, 55); t = b0;
        b0 = s[24]; s[24] = AAL_ROTL64(t, 2);  t = b0;
        b0 = s[4];  s[4]  = AAL_ROTL64(t, 14); t = b0;
        b0 = s[15]; s[15] = AAL_ROTL64(t, 27); t = b0;
        b0 = s[23]; s[23] = AAL_ROTL64(t, 41); t = b0;
        b0 = s[19]; s[19] = AAL_ROTL64(t, 56); t = b0;
        b0 = s[13]; s[13] = AAL_ROTL64(t, 8);  t = b0;
        b0 = s[12]; s[12] = AAL_ROTL64(t, 25); t = b0;
        b0 = s[2];  s[2]  = AAL_ROTL64(t, 43); t = b0;
        b0 = s[20]; s[20] = AAL_ROTL64(t, 62); t = b0;
        b0 = s[14]; s[14] = AAL_ROTL64(t, 18); t = b0;
        b0 = s[22]; s[22] = AAL_ROTL64(t, 39); t = b0;
        b0 = s[9];  s[9]  = AAL_ROTL64(t, 61); t = b0;
        b0 = s[6];  s[6]  = AAL_ROTL64(t, 20); t = b0;
        s[1] = AAL_ROTL64(t, 44);
        /* chi, row by row */
#define AAL_CHI_ROW(j)                                                        \
        b0 = s[j]; b1 = s[j + 1]; b2 = s[j + 2]; b3 = s[j + 3]; b4 = s[j + 4]; \
        s[j]     = b0 ^ (~b1 & b2);                                            \
        s[j + 1] = b1 ^ (~b2 & b3);                                            \
        s[j + 2] = b2 ^ (~b3 & b4);                                            \
        s[j + 3] = b3 ^ (~b4 & b0);                                            \
        s[j + 4] = b4 ^ (~b0 & b1);
        AAL_CHI_ROW(0) AAL_CHI_ROW(5) AAL_CHI_ROW(10) AAL_CHI_ROW(15) AAL_CHI_ROW(20)
#undef AAL_CHI_ROW
        /* iota */
        s[0] ^= aal_keccak_rc[r];
    }
}

static inline uint64_t aal_load64_le(const uint8_t *p)
{
    return (uint64_t)p[0] | ((uint64_t)p[1] << 8) | ((uint64_t)p[2] << 16) |
           ((uint64_t)p[3] << 24) | ((uint64_t)p[4] << 32) | ((uint64_t)p[5] << 40) |
           ((uint64_t)p[6] << 48) | ((uint64_t)p[7] << 56);
}

static inline void aal_store64_le(uint8_t *p, uint64_t v)
{
    int i;
    for (i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

/* Incremental state, for inputs made of several parts (Merkle nodes). */
typedef struct {
    uint64_t s[25];
    uint8_t buf[AAL_SHA3_256_RATE];
    size_t used;
} aal_sha3_ctx;

static inline void aal_sha3_init(aal_sha3_ctx *c)
{
    memset(c, 0, sizeof(*c));
}

static inline void aal_sha3_absorb_block(aal_sha3_ctx *c, const uint8_t *p)
{
    int i;
    for (i = 0; i < AAL_SHA3_256_RATE / 8; i++) c->s[i] ^= aal_load64_le(p + 8 * i);
    aal_keccakf(c->s);
}

static void aal_sha3_update(aal_sha3_ctx *c, const uint8_t *in, size_t len)
{
    size_t take;
    if (c->used) {
        take = AAL_SHA3_256_RATE - c->used;
        if (take > len) take = len;
        memcpy(c->buf + c->used, in, take);
        c->used += take; in += take; len -= take;
        if (c->used < AAL_SHA3_256_RATE) return;
        aal_sha3_absorb_block(c, c->buf);
        c->used = 0;
    }
    while (len >= AAL_SHA3_256_RATE) {
        aal_sha3_absorb_block(c, in);
        in += AAL_SHA3_256_RATE; len -= AAL_SHA3_256_RATE;
    }
    if (len) {
        memcpy(c->buf, in, len);
        c->used = len;
    }
}

static void aal_sha3_final(aal_sha3_ctx *c, uint8_t out[AAL_SHA3_256_LEN])
{
    int i;
    memset(c->buf + c->used, 0, AAL_SHA3_256_RATE - c->used);
    c->buf[c->used] ^= 0x06;                 /* SHA-3 domain bits + pad10*1 start */
    c->buf[AAL_SHA3_256_RATE - 1] ^= 0x80;   /* pad10*1 end */
    aal_sha3_absorb_block(c, c->buf);
    for (i = 0; i < 4; i++) aal_store64_le(out + 8 * i, c->s[i]);
}

static inline void aal_sha3_256(const uint8_t *in, size_t len, uint8_t out[AAL_SHA3_256_LEN])
{
    aal_sha3_ctx c;
    aal_sha3_init(&c);
    aal_sha3_update(&c, in, len);
    aal_sha3_final(&c, out);
}

/* RFC 9162 with SHA3-256: leaf = H(0x00 || data), node = H(0x01 || left || right). */
static inline void aal_merkle_leaf(const uint8_t *data, size_t len, uint8_t out[32])
{
    aal_sha3_ctx c;
    uint8_t z = 0x00;
    aal_sha3_init(&c);
    aal_sha3_update(&c, &z, 1);
    aal_sha3_update(&c, data, len);
    aal_sha3_final(&c, out);
}

static inline void aal_merkle_node(const uint8_t *left, const uint8_t *right, uint8_t out[32])
{
    /* 65 bytes < one 136-byte block: build the padded block directly. */
    aal_sha3_ctx c;
    memset(c.s, 0, sizeof(c.s));
    memset(c.buf, 0, sizeof(c.buf));
    c.buf[0] = 0x01;
    memcpy(c.buf + 1, left, 32);
    memcpy(c.buf + 33, right, 32);
    c.buf[65] = 0x06;
    c.buf[AAL_SHA3_256_RATE - 1] = 0x80;
    aal_sha3_absorb_block(&c, c.buf);
    {
        int i;
        for (i = 0; i < 4; i++) aal_store64_le(out + 8 * i, c.s[i]);
    }
}

#endif /* AAL_SHA3_H */
