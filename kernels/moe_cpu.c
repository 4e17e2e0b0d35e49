/* CPU mixture-of-experts kernel: the SiLU-gated expert FFNs of moe_experts_ref, fp32, one thread.
 *
 * Built and loaded with the other CPU kernels by kernels/cpu_kernels.py (plain C, no torch headers;
 * called through ctypes). Also the router without a threshold (route_topk, at the end).
 * Legend: T tokens, K experts per token, E local experts, h hidden, I expert intermediate size.
 *
 *   x    [T, h]     fp32, contiguous
 *   ids  [T, K]     int64 global expert ids; ids outside [offset, offset + E) are skipped
 *   wts  [T, K]     fp32 routing weights
 *   w13  [E, h, 2I] input-major: row k holds input feature k's weights for the gate (w1)
 *                   outputs, then the up (w3) outputs
 *   w2   [E, I, h]  input-major
 *   bf16            0: w13 and w2 are fp32; 1: they are bf16 (widened exactly to fp32 as they are
 *                   read; all arithmetic is fp32 either way)
 *   out  [T, h]     fp32, written (not accumulated into)
 *
 * out[t] = sum over t's kept entries, in expert order, of wts * w2 (silu(w1 x) * w3 x).
 *
 * Why: torch's per-expert GEMM calls cost ~4 us each whatever their size, and a decode step of
 * the demo model makes ~300 of them; this kernel makes one call per MoE layer. An expert's rows are
 * computed in groups of up to 4 sharing each weight load (4 rows x 4 vectors of 16 columns of
 * accumulators), and every row's arithmetic is the same whatever the batch (rows never mix, the
 * summation order is fixed), so a token's output does not depend on which other tokens share the
 * step.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_simd.h" /* LANES: output columns per register block */

#define ROWS 4   /* rows sharing each weight load */
#define WIDE 4   /* vectors of columns sharing each row value */

typedef uint32_t vuint32 __attribute__((vector_size(LANES * sizeof(uint32_t))));
typedef uint16_t vuint16 __attribute__((vector_size(LANES * sizeof(uint16_t))));

/* LANES weights from w[idx] on, as fp32: stored fp32, or bf16 (the top half of an fp32, so
 * widening is exact). */
static inline __attribute__((always_inline)) vfloat load_lanes(const void *w, int64_t idx, int bf16) {
    vfloat f;
    if (bf16) {
        vuint16 half;
        memcpy(&half, (const uint16_t *)w + idx, sizeof half);
        const vuint32 bits = __builtin_convertvector(half, vuint32) << 16;
        memcpy(&f, &bits, sizeof f);
    } else {
        memcpy(&f, (const float *)w + idx, sizeof f);
    }
    return f;
}

static inline __attribute__((always_inline)) float load_one(const void *w, int64_t idx, int bf16) {
    float f;
    if (bf16) {
        const uint32_t bits = (uint32_t)((const uint16_t *)w)[idx] << 16;
        memcpy(&f, &bits, sizeof f);
    } else {
        f = ((const float *)w)[idx];
    }
    return f;
}

/* y[r, :] = xs[r, :] @ w for nr (1..ROWS) rows; xs [nr, in] (row stride in), w [in, out]
 * input-major. Inlined into one function per weight type and row count (the table below), so each
 * is compiled for constants; all do the same fp32 arithmetic for a given row. */
static inline __attribute__((always_inline)) void rows_matmul(const float *xs, const void *w, int bf16, int nr,
                                                              int64_t in, int64_t out, float *y) {
    int64_t n0 = 0;
    for (; n0 + WIDE * LANES <= out; n0 += WIDE * LANES) { /* nr x WIDE vectors of accumulators */
        vfloat a[ROWS][WIDE] = {{{0}}};
        for (int64_t k = 0; k < in; k++) {
            vfloat wk[WIDE];
            for (int b = 0; b < WIDE; b++) wk[b] = load_lanes(w, k * out + n0 + b * LANES, bf16);
            for (int r = 0; r < nr; r++) {
                const float xr = xs[r * in + k];
                for (int b = 0; b < WIDE; b++) a[r][b] += xr * wk[b];
            }
        }
        for (int r = 0; r < nr; r++) memcpy(y + r * out + n0, a[r], sizeof a[r]);
    }
    for (; n0 + LANES <= out; n0 += LANES) {
        vfloat a[ROWS] = {{0}};
        for (int64_t k = 0; k < in; k++) {
            const vfloat wk = load_lanes(w, k * out + n0, bf16);
            for (int r = 0; r < nr; r++) a[r] += xs[r * in + k] * wk;
        }
        for (int r = 0; r < nr; r++) memcpy(y + r * out + n0, &a[r], sizeof a[r]);
    }
    for (; n0 < out; n0++) { /* the columns past the last full block */
        for (int r = 0; r < nr; r++) {
            float a = 0.0f;
            for (int64_t k = 0; k < in; k++) a += xs[r * in + k] * load_one(w, k * out + n0, bf16);
            y[r * out + n0] = a;
        }
    }
}

typedef void (*rows_matmul_fn)(const float *, const void *, int64_t, int64_t, float *);

#define ROWS_MATMUL(NAME, BF16, NR) \
    static void NAME(const float *xs, const void *w, int64_t in, int64_t out, float *y) { \
        rows_matmul(xs, w, BF16, NR, in, out, y); \
    }
ROWS_MATMUL(f32_1, 0, 1)
ROWS_MATMUL(f32_2, 0, 2)
ROWS_MATMUL(f32_3, 0, 3)
ROWS_MATMUL(f32_4, 0, 4)
ROWS_MATMUL(bf16_1, 1, 1)
ROWS_MATMUL(bf16_2, 1, 2)
ROWS_MATMUL(bf16_3, 1, 3)
ROWS_MATMUL(bf16_4, 1, 4)
static const rows_matmul_fn MATMUL[2][ROWS] = {{f32_1, f32_2, f32_3, f32_4}, {bf16_1, bf16_2, bf16_3, bf16_4}};

/* Returns 0, or -1 when scratch memory could not be allocated. */
int moe_experts(const float *x, const int64_t *ids, const float *wts, const void *w13, const void *w2, int bf16,
                float *out, int64_t T, int64_t K, int64_t E, int64_t h, int64_t I, int64_t offset) {
    const int64_t wsize = bf16 ? 2 : 4;
    const int64_t n_entries = T * K;
    int64_t *count = calloc((size_t)E + 1, sizeof(int64_t));
    int64_t *order = malloc((size_t)(n_entries > 0 ? n_entries : 1) * sizeof(int64_t));
    float *xs = malloc((size_t)ROWS * h * sizeof(float));
    float *gu = malloc((size_t)ROWS * 2 * I * sizeof(float));
    float *act = malloc((size_t)ROWS * I * sizeof(float));
    float *ys = malloc((size_t)ROWS * h * sizeof(float));
    int64_t *fill = malloc((size_t)(E > 0 ? E : 1) * sizeof(int64_t));
    int rc = 0;
    if (!count || !order || !xs || !gu || !act || !ys || !fill) {
        rc = -1;
        goto done;
    }
    memset(out, 0, (size_t)T * h * sizeof(float));

    /* Counting sort of the kept entries by expert, stable (token order within an expert). */
    for (int64_t i = 0; i < n_entries; i++) {
        const int64_t e = ids[i] - offset;
        if (e >= 0 && e < E) count[e + 1]++;
    }
    for (int64_t e = 0; e < E; e++) count[e + 1] += count[e]; /* count[e] = start of expert e */
    memcpy(fill, count, (size_t)E * sizeof(int64_t));
    for (int64_t i = 0; i < n_entries; i++) {
        const int64_t e = ids[i] - offset;
        if (e >= 0 && e < E) order[fill[e]++] = i;
    }

    const int64_t w13_bytes = h * 2 * I * wsize, w2_bytes = I * h * wsize;
    for (int64_t e = 0; e < E; e++) {
        const char *we13 = (const char *)w13 + e * w13_bytes, *we2 = (const char *)w2 + e * w2_bytes;
        if (count[e] < count[e + 1]) { /* ask for the next busy expert's weights while this one computes */
            int64_t next = e + 1;
            while (next < E && count[next] == count[next + 1]) next++;
            if (next < E) {
                const char *p13 = (const char *)w13 + next * w13_bytes, *p2 = (const char *)w2 + next * w2_bytes;
                for (int64_t b = 0; b < w13_bytes; b += 64) __builtin_prefetch(p13 + b, 0, 2);
                for (int64_t b = 0; b < w2_bytes; b += 64) __builtin_prefetch(p2 + b, 0, 2);
            }
        }
        for (int64_t s = count[e]; s < count[e + 1]; s += ROWS) {
            const int nr = count[e + 1] - s < ROWS ? (int)(count[e + 1] - s) : ROWS;
            const rows_matmul_fn matmul = MATMUL[bf16 ? 1 : 0][nr - 1];
            for (int r = 0; r < nr; r++) memcpy(xs + r * h, x + (order[s + r] / K) * h, (size_t)h * sizeof(float));
            matmul(xs, we13, h, 2 * I, gu);
            for (int r = 0; r < nr; r++) {
                const float *g = gu + r * 2 * I, *u = g + I;
                for (int64_t i = 0; i < I; i++) act[r * I + i] = g[i] / (1.0f + expf(-g[i])) * u[i];
            }
            matmul(act, we2, I, h, ys);
            for (int r = 0; r < nr; r++) {
                const int64_t entry = order[s + r];
                const float wt = wts[entry];
                float *o = out + (entry / K) * h;
                for (int64_t j = 0; j < h; j++) o[j] += ys[r * h + j] * wt;
            }
        }
    }
done:
    free(count);
    free(order);
    free(xs);
    free(gu);
    free(act);
    free(ys);
    free(fill);
    return rc;
}

/* The router without a threshold (route_topk_ref): per row of logits [N, E], softmax in fp32, the
 * K largest probabilities (the lower expert id first among equals), renormalised to sum to 1.
 * ids [N, K] int64, weights [N, K] fp32. */
void route_topk(const float *logits, int64_t N, int64_t E, int64_t K, int64_t *ids, float *weights) {
    for (int64_t n = 0; n < N; n++) {
        const float *l = logits + n * E;
        float top = -INFINITY;
        for (int64_t e = 0; e < E; e++) top = l[e] > top ? l[e] : top;
        float total = 0.0f;
        for (int64_t e = 0; e < E; e++) total += expf(l[e] - top);
        int64_t *row_ids = ids + n * K;
        float *row_w = weights + n * K;
        float kept = 0.0f;
        for (int64_t j = 0; j < K; j++) {
            int64_t best = -1;
            for (int64_t e = 0; e < E; e++) {
                int taken = 0;
                for (int64_t i = 0; i < j; i++) taken |= row_ids[i] == e;
                if (!taken && (best < 0 || l[e] > l[best])) best = e;
            }
            row_ids[j] = best;
            row_w[j] = best < 0 ? 0.0f : expf(l[best] - top) / total;
            kept += row_w[j];
        }
        for (int64_t j = 0; j < K; j++) row_w[j] /= kept;
    }
}
