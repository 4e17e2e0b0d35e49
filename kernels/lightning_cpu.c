/* CPU lightning attention kernel: the recurrence of lightning_ref, fp32, one thread.
 *
 * Built and loaded with the other CPU kernels by kernels/cpu_kernels.py (called through ctypes).
 * Legend: S sequences, H heads, D head dim, P slots in the state pool.
 *
 * For each sequence i, with state pool[slot[i]] ([H, D, D] fp32, updated in place), and each of
 * its tokens t (rows cu[i] .. cu[i + 1] - 1), for every head with decay rate s:
 *     KV = exp(-s) KV + k_t^T v_t          o_t = q_t KV
 * Sequences whose slot is negative are skipped (padding rows); where fresh is given and fresh[i] is
 * set, sequence i starts from a zero state (a new sequence in a reused slot). The recurrence is
 * both the decode step and the prefill (token by token: 2 D^2 multiply-adds per token and head, fewer than the
 * chunked form's 2 D^2 + 2 c D, and the state stays in L1/L2). A token's arithmetic depends only
 * on its own sequence, so results do not depend on the batch, and a prompt prefilled in chunks
 * gives exactly what it gives in one piece.
 *
 *   q, k, v   rows of H heads of D values; element (n, h, d) at base + n * row_stride +
 *             h * head_stride + d (the views of a fused qkv projection are accepted as they are)
 *   out       [N, H, D] contiguous, written for the rows of sequences with a slot
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

void lightning_scan(const float *q, const float *k, const float *v, int64_t row_stride, int64_t head_stride,
                    const float *slope, float *pool, const int64_t *slots, const int64_t *cu, const uint8_t *fresh,
                    int64_t S, int64_t H, int64_t D, float *out) {
    for (int64_t i = 0; i < S; i++) {
        if (slots[i] < 0) continue;
        float *states = pool + slots[i] * H * D * D;
        if (fresh && fresh[i]) memset(states, 0, (size_t)(H * D * D) * sizeof(float));
        for (int64_t h = 0; h < H; h++) {
            float *kv = states + h * D * D;
            const float decay = expf(-slope[h]);
            for (int64_t t = cu[i]; t < cu[i + 1]; t++) {
                const float *qt = q + t * row_stride + h * head_stride;
                const float *kt = k + t * row_stride + h * head_stride;
                const float *vt = v + t * row_stride + h * head_stride;
                float *ot = out + (t * H + h) * D;
                memset(ot, 0, (size_t)D * sizeof(float));
                for (int64_t a = 0; a < D; a++) {
                    float *row = kv + a * D;
                    const float ka = kt[a], qa = qt[a];
                    for (int64_t b = 0; b < D; b++) {
                        row[b] = decay * row[b] + ka * vt[b];
                        ot[b] += qa * row[b];
                    }
                }
            }
        }
    }
}
