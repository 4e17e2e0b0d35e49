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

/* Returns 0, or -1 when the scratch buffer could not be allocated. One pass over each sequence's
 * tokens, reading a token's keys and values once for all heads, with an online softmax per head
 * (running maximum, the sum and the weighted values rescaled when it grows). */
int paged_decode_attention(const float *q, const float *kc, const float *vc, const int64_t *tables, int64_t nb,
                           const int64_t *lengths, int64_t B, int64_t H, int64_t Hkv, int64_t D, int64_t BS,
                           float scale, float *out) {
    float *run_max = malloc((size_t)H * 2 * sizeof(float));
    if (!run_max) return -1;
    float *run_sum = run_max + H;
    const int64_t group = H / Hkv, token_stride = Hkv * D;
    for (int64_t b = 0; b < B; b++) {
        const int64_t L = lengths[b];
        const int64_t *table = tables + b * nb;
        const float *qb = q + b * H * D;
        float *ob = out + b * H * D;
        memset(ob, 0, (size_t)H * D * sizeof(float));
        for (int64_t h = 0; h < H; h++) run_max[h] = -INFINITY, run_sum[h] = 0.0f;
        for (int64_t t = 0; t < L; t++) {
            if (t % BS == 0 && t + BS < L) { /* blocks are scattered: ask for the next one's keys and values */
                const int64_t next = table[t / BS + 1] * BS * token_stride;
                for (int64_t byte = 0; byte < BS * token_stride * (int64_t)sizeof(float); byte += 64) {
                    __builtin_prefetch((const char *)(kc + next) + byte, 0, 1);
                    __builtin_prefetch((const char *)(vc + next) + byte, 0, 1);
                }
            }
            const int64_t row = (table[t / BS] * BS + t % BS) * token_stride;
            for (int64_t h = 0; h < H; h++) {
                const int64_t g = h / group;
                const float *kt = kc + row + g * D, *vt = vc + row + g * D;
                float *oh = ob + h * D;
                const float s = dot(qb + h * D, kt, D) * scale;
                if (s > run_max[h]) { /* rescale what was summed against the old maximum */
                    const float shrink = expf(run_max[h] - s);
                    run_sum[h] *= shrink;
                    for (int64_t d = 0; d < D; d++) oh[d] *= shrink;
                    run_max[h] = s;
                }
                const float p = expf(s - run_max[h]);
                run_sum[h] += p;
                for (int64_t d = 0; d < D; d++) oh[d] += p * vt[d];
            }
        }
        for (int64_t h = 0; h < H; h++) {
            const float inv = L > 0 ? 1.0f / run_sum[h] : 0.0f;
            for (int64_t d = 0; d < D; d++) ob[h * D + d] *= inv;
        }
    }
    free(run_max);
    return 0;
}
