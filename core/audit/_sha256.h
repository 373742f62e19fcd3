/*
 * SHA-256 (FIPS 180-4) for the audit chain's append path, with the x86 SHA extensions.
 *
 * Appending to a chained topic hashes every record's bytes once. Through hashlib that meant
 * building the whole block's canonical form as one bytes object first (megabytes per flush,
 * fresh pages each time) and holding the GIL while doing so. Here the canonical form is fed to
 * the hash as it is cut, from a small buffer that stays in cache, with the GIL released: the
 * hash runs beside the batch's compression. OpenSSL is not callable from an extension without
 * linking to it, so this is a small implementation of our own, used only where the CPU has the
 * SHA instructions (a portable C loop would be slower than hashlib's OpenSSL); elsewhere the
 * caller keeps to hashlib. tests/audit/test_chain.py checks it against hashlib.
 */
#ifndef MILLPOND_SHA256_H
#define MILLPOND_SHA256_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* whole 64-byte blocks are gathered here before they are compressed: small enough to stay in L2 */
#define SHA256_BUFFER 16384

typedef struct {
    uint32_t state[8];
    uint64_t length; /* bytes fed so far */
    size_t used;     /* bytes waiting in buffer */
    unsigned char buffer[SHA256_BUFFER];
} Sha256;

/* Does this CPU have the SHA extensions (and SSSE3, SSE4.1) the implementation needs? */
int sha256_available(void);
void sha256_init(Sha256 *ctx);
void sha256_update(Sha256 *ctx, const void *data, size_t len);
void sha256_final(Sha256 *ctx, unsigned char out[32]);

/* sha256_update for many short pieces (keys, values): a copy into the buffer while they fit */
static inline void sha256_feed(Sha256 *ctx, const void *data, size_t len) {
    if (ctx->used + len < SHA256_BUFFER) {
        memcpy(ctx->buffer + ctx->used, data, len);
        ctx->used += len;
        ctx->length += len;
    } else {
        sha256_update(ctx, data, len);
    }
}

#endif
