/* CPU paged decode attention: the meaning of paged_decode_attention_ref, fp32, one thread.
 *
 * Built and loaded with the other CPU kernels by kernels/cpu_kernels.py (called through ctypes).
 * Legend: B sequences (one new token each), H query heads, Hkv key/value heads (H / Hkv query heads
 * share one), D head dim, NB blocks of BS tokens in the pools, nb blocks per table row.
 *
 *   q        [B, H, D] contiguous
 *   kc, vc   [NB, BS, Hkv, D] contiguous block pools
 *   tables   [B, nb] int64: sequence b's token t lives in block tables[b, t / BS] at offset t % BS
 *   lengths  [B] int64: tokens to attend to (at most nb * BS)
 *   out      [B, H, D]: softmax(q k^T * scale) v over each sequence's first lengths[b] tokens
 *
 * The keys are read in place through the block tables (no gathered copy), and each sequence's
 * arithmetic depends only on its own tokens, so the result does not depend on the batch.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_simd.h"

/* Returns 0, or -1 when the score buffer could not be allocated. */
int paged_decode_attention(const float *q, const float *kc, const float *vc, const int64_t *tables, int64_t nb,
                           const int64_t *lengths, int64_t B, int64_t H, int64_t Hkv, int64_t D, int64_t BS,
                           float scale, float *out) {
    int64_t longest = 1;
    for (int64_t b = 0; b < B; b++) longest = lengths[b] > longest ? lengths[b] : longest;
    float *scores = malloc((size_t)longest * sizeof(float));
    if (!scores) return -1;
    const int64_t group = H / Hkv, token_stride = Hkv * D;
    for (int64_t b = 0; b < B; b++) {
        const int64_t L = lengths[b];
        const int64_t *table = tables + b * nb;
        for (int64_t h = 0; h < H; h++) {
            const int64_t g = h / group;
            const float *qh = q + (b * H + h) * D;
            float *oh = out + (b * H + h) * D;
            float best = -INFINITY;
            for (int64_t t = 0; t < L; t++) {
                const float *kt = kc + (table[t / BS] * BS + t % BS) * token_stride + g * D;
                const float s = dot(qh, kt, D) * scale;
                scores[t] = s;
                best = s > best ? s : best;
            }
            float total = 0.0f;
            memset(oh, 0, (size_t)D * sizeof(float));
            for (int64_t t = 0; t < L; t++) {
                const float p = expf(scores[t] - best);
                const float *vt = vc + (table[t / BS] * BS + t % BS) * token_stride + g * D;
                total += p;
                for (int64_t d = 0; d < D; d++) oh[d] += p * vt[d];
            }
            const float inv = L > 0 ? 1.0f / total : 0.0f;
            for (int64_t d = 0; d < D; d++) oh[d] *= inv;
        }
    }
    free(scores);
    return 0;
}
