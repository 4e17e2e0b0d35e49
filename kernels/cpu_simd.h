/* Shared by the CPU kernels (the kernels/..._cpu.c files): fixed-width vectors through GCC's vector
 * extensions (compiled to the widest the machine has: -march=native) and a dot product whose
 * summation order is fixed (16 lanes, then the lanes in order, then the tail), so a result never
 * depends on anything but its inputs. */
#ifndef MINIMAX_M1_CPU_SIMD_H
#define MINIMAX_M1_CPU_SIMD_H

#include <stdint.h>
#include <string.h>

#define LANES 16

typedef float vfloat __attribute__((vector_size(LANES * sizeof(float))));

static inline vfloat vload(const float *p) {
    vfloat v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline float dot(const float *a, const float *b, int64_t n) {
    vfloat acc = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES) acc += vload(a + i) * vload(b + i);
    float s = 0.0f;
    for (int j = 0; j < LANES; j++) s += acc[j];
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

#endif
