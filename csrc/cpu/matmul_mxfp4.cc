// MXFP4-weight kernels (AVX-512 and AVX2+FMA), computed straight from the packed bytes.
//
// Activations come permuted per 32-block into [x0 x2 .. x30 | x1 x3 .. x31] (see matmul.cc), so
// the 16 low nibbles of a block's 16 bytes line up with the first half and the 16 high nibbles
// with the second half: no interleaving of decoded weights is ever needed.
//
// AVX-512: the 16 bytes are zero-extended to 16 int32 lanes; vpermps with the 16-entry E2M1 float
//   table maps each lane straight to a float (it only looks at index bits 0..3, so the low nibble
//   needs no masking; the high nibble is a shift by 4). The power-of-two block scale multiplies
//   the block's partial dot product once (T = 1) or the 32 decoded weights once (T > 1).
// AVX2: pshufb maps nibbles to int8 2*E2M1 values (all integers), which are widened to int32 and
//   converted to float; the factor 1/2 is folded into the block scale.

// GCC 12 reports false "may be used uninitialized" warnings inside the intrinsic headers when they
// are used from target-attributed functions (GCC PR105593); silence them for this file.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "common.h"
#include "cpu/simd.h"

#ifndef GPTOSS_MXFP4_PF
#define GPTOSS_MXFP4_PF 2
#endif

namespace gptoss::cpu {
namespace {

// ============================== AVX-512 ======================================================

// Software prefetch distance of the GEMV path, in groups of rows.
constexpr int kPrefetchGroups = GPTOSS_MXFP4_PF;

template <int R, int TT>
GPTOSS_TARGET_AVX512 static inline void mxfp4_block_avx512(const float* xp, int64_t K,
                                                           const uint8_t* blocks,
                                                           const uint8_t* scales,
                                                           const uint16_t* bias, float* Y,
                                                           int64_t ldy, int64_t n) {
  const __m512 table = _mm512_loadu_ps(kMxfp4Table);
  const int64_t nb = K / 32;
  const uint8_t* bl = blocks + n * nb * 16;
  const uint8_t* sc = scales + n * nb;
  __m512 acc[R][TT];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int t = 0; t < TT; ++t) acc[r][t] = _mm512_setzero_ps();
  // The R rows are contiguous in memory (R*nb*16 bytes); while reading them, prefetch the rows
  // kPrefetchGroups groups ahead, one cache line per 64 bytes consumed.
  const char* pf = reinterpret_cast<const char*>(bl) + kPrefetchGroups * R * nb * 16;
  const char* pfs = reinterpret_cast<const char*>(sc) + kPrefetchGroups * R * nb;
  for (int64_t b = 0; b < nb; ++b) {
    if (R * 16 * b % 64 == 0) {
      _mm_prefetch(pf + R * 16 * b, _MM_HINT_T0);
      if (R * 16 * b < R * nb) _mm_prefetch(pfs + R * 16 * b, _MM_HINT_T0);
    }
    __m512 xe[TT], xo[TT];
#pragma GCC unroll 16
    for (int t = 0; t < TT; ++t) {
      xe[t] = _mm512_loadu_ps(xp + t * K + 32 * b);
      xo[t] = _mm512_loadu_ps(xp + t * K + 32 * b + 16);
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      __m512i v = _mm512_cvtepu8_epi32(
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(bl + (r * nb + b) * 16)));
      __m512 lo = _mm512_permutexvar_ps(v, table);
      __m512 hi = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), table);
      __m512 s = _mm512_set1_ps(kE8m0.v[sc[r * nb + b]]);
      if constexpr (TT == 1) {
        __m512 p = _mm512_mul_ps(lo, xe[0]);
        p = _mm512_fmadd_ps(hi, xo[0], p);
        acc[r][0] = _mm512_fmadd_ps(p, s, acc[r][0]);
      } else {
        lo = _mm512_mul_ps(lo, s);
        hi = _mm512_mul_ps(hi, s);
#pragma GCC unroll 16
        for (int t = 0; t < TT; ++t) {
          acc[r][t] = _mm512_fmadd_ps(lo, xe[t], acc[r][t]);
          acc[r][t] = _mm512_fmadd_ps(hi, xo[t], acc[r][t]);
        }
      }
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    float bv = bias ? bf16_to_f32(bias[n + r]) : 0.0f;
#pragma GCC unroll 16
    for (int t = 0; t < TT; ++t) Y[t * ldy + n + r] = _mm512_reduce_add_ps(acc[r][t]) + bv;
  }
}

template <int TT>
GPTOSS_TARGET_AVX512 static void mxfp4_rows_tt_avx512(const float* xp, int64_t K,
                                                      const uint8_t* blocks,
                                                      const uint8_t* scales, const uint16_t* bias,
                                                      float* Y, int64_t ldy, int64_t n0,
                                                      int64_t n1) {
  constexpr int R = 4;
  int64_t n = n0;
  for (; n + R <= n1; n += R) mxfp4_block_avx512<R, TT>(xp, K, blocks, scales, bias, Y, ldy, n);
  for (; n < n1; ++n) mxfp4_block_avx512<1, TT>(xp, K, blocks, scales, bias, Y, ldy, n);
}

// ============================== AVX2 =========================================================

// int8 values of 2 * E2M1 (exact integers); the 1/2 goes into the scale.
alignas(16) static const int8_t kMxfp4Twice[16] = {0, 1, 2, 3, 4, 6, 8, 12,
                                                   0, -1, -2, -3, -4, -6, -8, -12};

struct Dec8x4 {
  __m256 e0, e1, o0, o1;  // 2*w for k' = 0..7, 8..15 (even elements), 16..23, 24..31 (odd)
};

GPTOSS_TARGET_AVX2 static inline Dec8x4 decode_block_avx2(const uint8_t* p, __m128i tab,
                                                          __m128i m4) {
  __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  __m128i lo = _mm_shuffle_epi8(tab, _mm_and_si128(b, m4));
  __m128i hi = _mm_shuffle_epi8(tab, _mm_and_si128(_mm_srli_epi16(b, 4), m4));
  Dec8x4 d;
  d.e0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo));
  d.e1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(lo, lo)));
  d.o0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi));
  d.o1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(hi, hi)));
  return d;
}

GPTOSS_TARGET_AVX2 static inline float hsum8_avx2(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <int R, int TT>
GPTOSS_TARGET_AVX2 static inline void mxfp4_block_avx2(const float* xp, int64_t K,
                                                       const uint8_t* blocks,
                                                       const uint8_t* scales,
                                                       const uint16_t* bias, float* Y,
                                                       int64_t ldy, int64_t n) {
  const __m128i tab = _mm_load_si128(reinterpret_cast<const __m128i*>(kMxfp4Twice));
  const __m128i m4 = _mm_set1_epi8(0x0F);
  const int64_t nb = K / 32;
  const uint8_t* bl = blocks + n * nb * 16;
  const uint8_t* sc = scales + n * nb;
  // Two accumulators per (row, token) (even and odd halves), summed at the end.
  __m256 acc[R][TT];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int t = 0; t < TT; ++t) acc[r][t] = _mm256_setzero_ps();
  const char* pf = reinterpret_cast<const char*>(bl) + kPrefetchGroups * R * nb * 16;
  const char* pfs = reinterpret_cast<const char*>(sc) + kPrefetchGroups * R * nb;
  for (int64_t b = 0; b < nb; ++b) {
    if (R * 16 * b % 64 == 0) {  // one line of the rows kPrefetchGroups groups ahead
      _mm_prefetch(pf + R * 16 * b, _MM_HINT_T0);
      if (R * 16 * b < R * nb) _mm_prefetch(pfs + R * 16 * b, _MM_HINT_T0);
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      Dec8x4 d = decode_block_avx2(bl + (r * nb + b) * 16, tab, m4);
      __m256 s = _mm256_set1_ps(0.5f * kE8m0.v[sc[r * nb + b]]);
      if constexpr (TT == 1) {
        const float* x = xp + 32 * b;
        __m256 p = _mm256_mul_ps(d.e0, _mm256_loadu_ps(x));
        p = _mm256_fmadd_ps(d.e1, _mm256_loadu_ps(x + 8), p);
        p = _mm256_fmadd_ps(d.o0, _mm256_loadu_ps(x + 16), p);
        p = _mm256_fmadd_ps(d.o1, _mm256_loadu_ps(x + 24), p);
        acc[r][0] = _mm256_fmadd_ps(p, s, acc[r][0]);
      } else {
        d.e0 = _mm256_mul_ps(d.e0, s);
        d.e1 = _mm256_mul_ps(d.e1, s);
        d.o0 = _mm256_mul_ps(d.o0, s);
        d.o1 = _mm256_mul_ps(d.o1, s);
#pragma GCC unroll 16
        for (int t = 0; t < TT; ++t) {
          const float* x = xp + t * K + 32 * b;
          acc[r][t] = _mm256_fmadd_ps(d.e0, _mm256_loadu_ps(x), acc[r][t]);
          acc[r][t] = _mm256_fmadd_ps(d.e1, _mm256_loadu_ps(x + 8), acc[r][t]);
          acc[r][t] = _mm256_fmadd_ps(d.o0, _mm256_loadu_ps(x + 16), acc[r][t]);
          acc[r][t] = _mm256_fmadd_ps(d.o1, _mm256_loadu_ps(x + 24), acc[r][t]);
        }
      }
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    float bv = bias ? bf16_to_f32(bias[n + r]) : 0.0f;
#pragma GCC unroll 16
    for (int t = 0; t < TT; ++t) Y[t * ldy + n + r] = hsum8_avx2(acc[r][t]) + bv;
  }
}

template <int TT>
GPTOSS_TARGET_AVX2 static void mxfp4_rows_tt_avx2(const float* xp, int64_t K,
                                                  const uint8_t* blocks, const uint8_t* scales,
                                                  const uint16_t* bias, float* Y, int64_t ldy,
                                                  int64_t n0, int64_t n1) {
  constexpr int R = TT <= 2 ? 2 : 1;
  int64_t n = n0;
  for (; n + R <= n1; n += R) mxfp4_block_avx2<R, TT>(xp, K, blocks, scales, bias, Y, ldy, n);
  for (; n < n1; ++n) mxfp4_block_avx2<1, TT>(xp, K, blocks, scales, bias, Y, ldy, n);
}

}  // namespace

GPTOSS_TARGET_AVX512 void mxfp4_rows_avx512(const float* xp, int64_t T, int64_t K,
                                            const uint8_t* blocks, const uint8_t* scales,
                                            const uint16_t* bias, float* Y, int64_t ldy,
                                            int64_t n0, int64_t n1) {
  for (int64_t t0 = 0; t0 < T; t0 += kSmallTAvx512) {
    const float* x = xp + t0 * K;
    float* y = Y + t0 * ldy;
    switch (std::min<int64_t>(T - t0, kSmallTAvx512)) {
      case 1: mxfp4_rows_tt_avx512<1>(x, K, blocks, scales, bias, y, ldy, n0, n1); break;
      case 2: mxfp4_rows_tt_avx512<2>(x, K, blocks, scales, bias, y, ldy, n0, n1); break;
      case 3: mxfp4_rows_tt_avx512<3>(x, K, blocks, scales, bias, y, ldy, n0, n1); break;
      default: mxfp4_rows_tt_avx512<4>(x, K, blocks, scales, bias, y, ldy, n0, n1); break;
    }
  }
}

GPTOSS_TARGET_AVX2 void mxfp4_rows_avx2(const float* xp, int64_t T, int64_t K,
                                        const uint8_t* blocks, const uint8_t* scales,
                                        const uint16_t* bias, float* Y, int64_t ldy, int64_t n0,
                                        int64_t n1) {
  for (int64_t t0 = 0; t0 < T; t0 += kSmallTAvx2) {
    const float* x = xp + t0 * K;
    float* y = Y + t0 * ldy;
    switch (std::min<int64_t>(T - t0, kSmallTAvx2)) {
      case 1: mxfp4_rows_tt_avx2<1>(x, K, blocks, scales, bias, y, ldy, n0, n1); break;
      case 2: mxfp4_rows_tt_avx2<2>(x, K, blocks, scales, bias, y, ldy, n0, n1); break;
      case 3: mxfp4_rows_tt_avx2<3>(x, K, blocks, scales, bias, y, ldy, n0, n1); break;
      default: mxfp4_rows_tt_avx2<4>(x, K, blocks, scales, bias, y, ldy, n0, n1); break;
    }
  }
}

GPTOSS_TARGET_AVX512 void mxfp4_tile_avx512(const uint8_t* blocks, const uint8_t* scales,
                                            int64_t K, int64_t n0, int64_t nrows, int64_t k0,
                                            int64_t kc, float* wd, int64_t ldwd) {
  const __m512 table = _mm512_loadu_ps(kMxfp4Table);
  const int64_t nb = K / 32;
  for (int64_t r = 0; r < nrows; ++r) {
    const uint8_t* bl = blocks + ((n0 + r) * nb + k0 / 32) * 16;
    const uint8_t* sc = scales + (n0 + r) * nb + k0 / 32;
    float* d = wd + r * ldwd;
    for (int64_t b = 0; b < kc / 32; ++b) {
      __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bl + 16 * b)));
      __m512 s = _mm512_set1_ps(kE8m0.v[sc[b]]);
      _mm512_storeu_ps(d + 32 * b, _mm512_mul_ps(_mm512_permutexvar_ps(v, table), s));
      _mm512_storeu_ps(d + 32 * b + 16,
                       _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), table), s));
    }
  }
}

GPTOSS_TARGET_AVX2 void mxfp4_tile_avx2(const uint8_t* blocks, const uint8_t* scales, int64_t K,
                                        int64_t n0, int64_t nrows, int64_t k0, int64_t kc,
                                        float* wd, int64_t ldwd) {
  const __m128i tab = _mm_load_si128(reinterpret_cast<const __m128i*>(kMxfp4Twice));
  const __m128i m4 = _mm_set1_epi8(0x0F);
  const int64_t nb = K / 32;
  for (int64_t r = 0; r < nrows; ++r) {
    const uint8_t* bl = blocks + ((n0 + r) * nb + k0 / 32) * 16;
    const uint8_t* sc = scales + (n0 + r) * nb + k0 / 32;
    float* d = wd + r * ldwd;
    for (int64_t b = 0; b < kc / 32; ++b) {
      Dec8x4 q = decode_block_avx2(bl + 16 * b, tab, m4);
      __m256 s = _mm256_set1_ps(0.5f * kE8m0.v[sc[b]]);
      _mm256_storeu_ps(d + 32 * b, _mm256_mul_ps(q.e0, s));
      _mm256_storeu_ps(d + 32 * b + 8, _mm256_mul_ps(q.e1, s));
      _mm256_storeu_ps(d + 32 * b + 16, _mm256_mul_ps(q.o0, s));
      _mm256_storeu_ps(d + 32 * b + 24, _mm256_mul_ps(q.o1, s));
    }
  }
}

}  // namespace gptoss::cpu
