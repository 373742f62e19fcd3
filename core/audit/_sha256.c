/* SHA-256 with the x86 SHA extensions: see _sha256.h for why it exists. */
#include "_sha256.h"

#include <string.h>

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#include <immintrin.h>
#define HAVE_SHA_NI 1
#else
#define HAVE_SHA_NI 0
#endif

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

#if HAVE_SHA_NI

int sha256_available(void) {
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 9)) || !(c & (1u << 19)))
        return 0; /* SSSE3, SSE4.1 */
    if (__get_cpuid_max(0, NULL) < 7)
        return 0;
    __cpuid_count(7, 0, a, b, c, d);
    return (b & (1u << 29)) != 0; /* SHA */
}

/*
 * The compression function over `blocks` 64-byte blocks. The SHA instructions keep the state as
 * two vectors, (A, B, E, F) and (C, D, G, H); sha256rnds2 does two rounds, sha256msg1/msg2 extend
 * the message schedule four words at a time.
 */
__attribute__((target("sha,ssse3,sse4.1"))) static void compress(uint32_t state[8], const unsigned char *data,
                                                                  size_t blocks) {
    const __m128i byteswap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i dcba = _mm_loadu_si128((const __m128i *)&state[0]);
    __m128i hgfe = _mm_loadu_si128((const __m128i *)&state[4]);
    __m128i cdab = _mm_shuffle_epi32(dcba, 0xB1);
    __m128i efgh = _mm_shuffle_epi32(hgfe, 0x1B);
    __m128i abef = _mm_alignr_epi8(cdab, efgh, 8);
    __m128i cdgh = _mm_blend_epi16(efgh, cdab, 0xF0);
    for (; blocks; blocks--, data += 64) {
        const __m128i abef_before = abef, cdgh_before = cdgh;
        __m128i w[4]; /* w[i % 4]: message words 4i .. 4i+3 */
        for (int i = 0; i < 16; i++) {
            __m128i words;
            if (i < 4) {
                words = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(data + 16 * i)), byteswap);
            } else {
                /* W[t] = s1(W[t-2]) + W[t-7] + s0(W[t-15]) + W[t-16], for t = 4i .. 4i+3 */
                __m128i t = _mm_sha256msg1_epu32(w[i % 4], w[(i + 1) % 4]);
                t = _mm_add_epi32(t, _mm_alignr_epi8(w[(i + 3) % 4], w[(i + 2) % 4], 4));
                words = _mm_sha256msg2_epu32(t, w[(i + 3) % 4]);
            }
            w[i % 4] = words;
            __m128i k = _mm_add_epi32(words, _mm_loadu_si128((const __m128i *)&K[4 * i]));
            cdgh = _mm_sha256rnds2_epu32(cdgh, abef, k);
            abef = _mm_sha256rnds2_epu32(abef, cdgh, _mm_shuffle_epi32(k, 0x0E));
        }
        abef = _mm_add_epi32(abef, abef_before);
        cdgh = _mm_add_epi32(cdgh, cdgh_before);
    }
    __m128i feba = _mm_shuffle_epi32(abef, 0x1B);
    __m128i dchg = _mm_shuffle_epi32(cdgh, 0xB1);
    _mm_storeu_si128((__m128i *)&state[0], _mm_blend_epi16(feba, dchg, 0xF0));
    _mm_storeu_si128((__m128i *)&state[4], _mm_alignr_epi8(dchg, feba, 8));
}

#else

int sha256_available(void) { return 0; }

static void compress(uint32_t state[8], const unsigned char *data, size_t blocks) {
    (void)state, (void)data, (void)blocks; /* never called: sha256_available() said no */
}

#endif

void sha256_init(Sha256 *ctx) {
    static const uint32_t initial[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                        0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(ctx->state, initial, sizeof(initial));
    ctx->length = 0;
    ctx->used = 0;
}

void sha256_update(Sha256 *ctx, const void *data, size_t len) {
    const unsigned char *p = data;
    ctx->length += len;
    if (ctx->used) {
        size_t take = SHA256_BUFFER - ctx->used < len ? SHA256_BUFFER - ctx->used : len;
        memcpy(ctx->buffer + ctx->used, p, take);
        ctx->used += take;
        p += take;
        len -= take;
        if (ctx->used < SHA256_BUFFER)
            return;
        compress(ctx->state, ctx->buffer, SHA256_BUFFER / 64);
        ctx->used = 0;
    }
    if (len >= 64) { /* whole blocks straight from the caller's bytes */
        compress(ctx->state, p, len / 64);
        p += len - len % 64;
        len %= 64;
    }
    memcpy(ctx->buffer, p, len);
    ctx->used = len;
}

void sha256_final(Sha256 *ctx, unsigned char out[32]) {
    uint64_t bits = ctx->length * 8;
    size_t whole = ctx->used - ctx->used % 64;
    compress(ctx->state, ctx->buffer, whole / 64);
    unsigned char tail[128] = {0};
    size_t rest = ctx->used - whole;
    memcpy(tail, ctx->buffer + whole, rest);
    tail[rest] = 0x80;
    size_t blocks = rest + 1 + 8 <= 64 ? 1 : 2;
    for (int i = 0; i < 8; i++)
        tail[64 * blocks - 1 - i] = (unsigned char)(bits >> (8 * i));
    compress(ctx->state, tail, blocks);
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (unsigned char)(ctx->state[i] >> 24);
        out[4 * i + 1] = (unsigned char)(ctx->state[i] >> 16);
        out[4 * i + 2] = (unsigned char)(ctx->state[i] >> 8);
        out[4 * i + 3] = (unsigned char)ctx->state[i];
    }
}
