// 16 x 16 fp32 transpose in registers (AVX-512): the X packing of the GEMM drivers
// (matmul.cc, matmul_bf16dot.cc), where each row is 16 tokens' values of one k or k pair.
#pragma once

#include <immintrin.h>

#include "cpu/simd.h"

namespace gptoss::cpu {

GPTOSS_TARGET_AVX512 inline void transpose16_avx512(__m512 r[16]) {
  __m512 t[16], u[16];
#pragma GCC unroll 16
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
#pragma GCC unroll 16
  for (int i = 0; i < 16; i += 4) {
    __m512d a = _mm512_castps_pd(t[i]), b = _mm512_castps_pd(t[i + 1]);
    __m512d c = _mm512_castps_pd(t[i + 2]), d = _mm512_castps_pd(t[i + 3]);
    u[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));      // column 4L+0 of rows i..i+3
    u[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));  // column 4L+1
    u[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));  // column 4L+2
    u[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));  // column 4L+3
  }
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {
    __m512 v0 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0x88);
    __m512 w0 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0xDD);
    __m512 v1 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0x88);
    __m512 w1 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0xDD);
    r[j] = _mm512_shuffle_f32x4(v0, v1, 0x88);
    r[8 + j] = _mm512_shuffle_f32x4(v0, v1, 0xDD);
    r[4 + j] = _mm512_shuffle_f32x4(w0, w1, 0x88);
    r[12 + j] = _mm512_shuffle_f32x4(w0, w1, 0xDD);
  }
}

}  // namespace gptoss::cpu
