/* CPU RMSNorm kernel: the meaning of rms_norm_ref, fp32, one thread.
 *
 * Built and loaded with the other CPU kernels by kernels/cpu_kernels.py (called through ctypes).
 *   x       [N, C] fp32, row stride row_stride (the channels contiguous)
 *   weight  [C] fp32
 *   gate    [N, C] fp32 contiguous, or NULL
 *   out     [N, C] fp32, contiguous
 * out[n] = weight * x[n] / sqrt(mean(x[n]^2) + eps), times sigmoid(gate[n]) where a gate is given
 * (the lightning layers' output gate). One call instead of the ~6-8 torch ops of the reference,
 * ~24 times per step of the demo model.
 */
#include <math.h>
#include <stdint.h>

#include "cpu_simd.h"

void rms_norm(const float *x, int64_t N, int64_t C, int64_t row_stride, const float *weight, float eps,
              const float *gate, float *out) {
    for (int64_t n = 0; n < N; n++) {
        const float *xn = x + n * row_stride;
        float *on = out + n * C;
        const float squares = dot(xn, xn, C);
        const float scale = 1.0f / sqrtf(squares / (float)C + eps);
        for (int64_t c = 0; c < C; c++) on[c] = weight[c] * (xn[c] * scale);
        if (gate) {
            const float *gn = gate + n * C;
            for (int64_t c = 0; c < C; c++) on[c] *= 1.0f / (1.0f + expf(-gn[c]));
        }
    }
}
