// bf16-weight kernels (AVX-512 and AVX2+FMA): the small-T dot-product path and the GEMM tile
// converter. bf16 -> fp32 is a zero-extend and a 16-bit left shift, so all math is exact fp32.

// GCC 12 reports false "may be used uninitialized" warnings inside the intrinsic headers when they
// are used from target-attributed functions (GCC PR105593); silence them for this file.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "common.h"
#include "cpu/simd.h"

#ifndef GPTOSS_BF16_SEQ
#define GPTOSS_BF16_SEQ 1
#endif
#ifndef GPTOSS_BF16_PF
#define GPTOSS_BF16_PF 1
#endif

namespace gptoss::cpu {
namespace {

// ============================== AVX-512 ======================================================

// Software prefetch distance of the GEMV path, in groups of rows.
constexpr int kPrefetchGroups = GPTOSS_BF16_PF;

GPTOSS_TARGET_AVX512 static inline __m512 bf16x16_avx512(const uint16_t* p) {
  __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
GPTOSS_TARGET_AVX512 static inline __m512 bf16x16_mask_avx512(const uint16_t* p, __mmask16 m) {
  __m256i h = _mm256_maskz_loadu_epi16(m, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// R rows x TT tokens of dot products over K; the x vectors are loaded once per 16 k and shared by
// the R rows, each weight vector is converted once and shared by the TT tokens.
template <int R, int TT>
GPTOSS_TARGET_AVX512 static inline void bf16_block_avx512(const float* X, int64_t K, int64_t ldx,
                                                          const uint16_t* W, int64_t ldw,
                                                          const uint16_t* bias, float* Y,
                                                          int64_t ldy, int64_t n) {
  __m512 acc[R][TT];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int t = 0; t < TT; ++t) acc[r][t] = _mm512_setzero_ps();
  const uint16_t* w = W + n * ldw;
  // Software prefetch of the rows kPrefetchGroups groups of R ahead (the hardware prefetcher
  // alone leaves a good part of the bandwidth unused), one line per row every 32 k.
  const uint16_t* pf = w + kPrefetchGroups * R * ldw;
  // When rows are packed (ldw == K) the R rows ahead are one contiguous region of R*K*2 bytes:
  // prefetch it as a single sequential stream, R*32 bytes per 16-k step.
  const bool packed = ldw == K && GPTOSS_BF16_SEQ;
  const char* pfc = reinterpret_cast<const char*>(pf);
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    if (packed) {
      if constexpr (R >= 2) {
        if (((k * 2 * R) & 63) == 0) _mm_prefetch(pfc + k * 2 * R, _MM_HINT_T0);
        if constexpr (R == 4) _mm_prefetch(pfc + k * 2 * R + 64, _MM_HINT_T0);
      } else {
        if ((k & 31) == 0) _mm_prefetch(pfc + k * 2, _MM_HINT_T0);
      }
    } else if ((k & 31) == 0) {
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) _mm_prefetch(reinterpret_cast<const char*>(pf + r * ldw + k), _MM_HINT_T0);
    }
    __m512 xv[TT];
#pragma GCC unroll 16
    for (int t = 0; t < TT; ++t) xv[t] = _mm512_loadu_ps(X + t * ldx + k);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      __m512 wv = bf16x16_avx512(w + r * ldw + k);
#pragma GCC unroll 16
      for (int t = 0; t < TT; ++t) acc[r][t] = _mm512_fmadd_ps(wv, xv[t], acc[r][t]);
    }
  }
  if (k < K) {
    __mmask16 m = static_cast<__mmask16>((1u << (K - k)) - 1u);
    __m512 xv[TT];
#pragma GCC unroll 16
    for (int t = 0; t < TT; ++t) xv[t] = _mm512_maskz_loadu_ps(m, X + t * ldx + k);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      __m512 wv = bf16x16_mask_avx512(w + r * ldw + k, m);
#pragma GCC unroll 16
      for (int t = 0; t < TT; ++t) acc[r][t] = _mm512_fmadd_ps(wv, xv[t], acc[r][t]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    float b = bias ? bf16_to_f32(bias[n + r]) : 0.0f;
#pragma GCC unroll 16
    for (int t = 0; t < TT; ++t) Y[t * ldy + n + r] = _mm512_reduce_add_ps(acc[r][t]) + b;
  }
}

template <int TT>
GPTOSS_TARGET_AVX512 static void bf16_rows_tt_avx512(const float* X, int64_t K, int64_t ldx,
                                                     const uint16_t* W, int64_t ldw,
                                                     const uint16_t* bias, float* Y, int64_t ldy,
                                                     int64_t n0, int64_t n1) {
  constexpr int R = 4;  // R*TT accumulators + TT x vectors within 32 zmm (TT <= 4)
  int64_t n = n0;
  for (; n + R <= n1; n += R) bf16_block_avx512<R, TT>(X, K, ldx, W, ldw, bias, Y, ldy, n);
  for (; n < n1; ++n) bf16_block_avx512<1, TT>(X, K, ldx, W, ldw, bias, Y, ldy, n);
}

// ============================== AVX2 =========================================================

GPTOSS_TARGET_AVX2 static inline __m256 bf16x8_avx2(const uint16_t* p) {
  __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

GPTOSS_TARGET_AVX2 static inline float hsum_avx2(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <int R, int TT>
GPTOSS_TARGET_AVX2 static inline void bf16_block_avx2(const float* X, int64_t K, int64_t ldx,
                                                      const uint16_t* W, int64_t ldw,
                                                      const uint16_t* bias, float* Y, int64_t ldy,
                                                      int64_t n) {
  __m256 acc[R][TT];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int t = 0; t < TT; ++t) acc[r][t] = _mm256_setzero_ps();
  const uint16_t* w = W + n * ldw;
  const uint16_t* pf = w + kPrefetchGroups * R * ldw;
  const bool packed = ldw == K && GPTOSS_BF16_SEQ;  // see bf16_block_avx512
  const char* pfc = reinterpret_cast<const char*>(pf);
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    if (packed) {
      if (((k * 2 * R) & 63) == 0) _mm_prefetch(pfc + k * 2 * R, _MM_HINT_T0);
    } else if ((k & 31) == 0) {
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) _mm_prefetch(reinterpret_cast<const char*>(pf + r * ldw + k), _MM_HINT_T0);
    }
    __m256 xv[TT];
#pragma GCC unroll 16
    for (int t = 0; t < TT; ++t) xv[t] = _mm256_loadu_ps(X + t * ldx + k);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      __m256 wv = bf16x8_avx2(w + r * ldw + k);
#pragma GCC unroll 16
      for (int t = 0; t < TT; ++t) acc[r][t] = _mm256_fmadd_ps(wv, xv[t], acc[r][t]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    float b = bias ? bf16_to_f32(bias[n + r]) : 0.0f;
#pragma GCC unroll 16
    for (int t = 0; t < TT; ++t) {
      float s = hsum_avx2(acc[r][t]);
      for (int64_t kk = k; kk < K; ++kk) s += bf16_to_f32(w[r * ldw + kk]) * X[t * ldx + kk];
      Y[t * ldy + n + r] = s + b;
    }
  }
}

template <int TT>
GPTOSS_TARGET_AVX2 static void bf16_rows_tt_avx2(const float* X, int64_t K, int64_t ldx,
                                                 const uint16_t* W, int64_t ldw,
                                                 const uint16_t* bias, float* Y, int64_t ldy,
                                                 int64_t n0, int64_t n1) {
  constexpr int R = TT <= 2 ? 4 : 2;  // keep R*TT accumulators + TT x vectors within 16 ymm
  int64_t n = n0;
  for (; n + R <= n1; n += R) bf16_block_avx2<R, TT>(X, K, ldx, W, ldw, bias, Y, ldy, n);
  for (; n < n1; ++n) bf16_block_avx2<1, TT>(X, K, ldx, W, ldw, bias, Y, ldy, n);
}

}  // namespace

GPTOSS_TARGET_AVX512 void bf16_rows_avx512(const float* X, int64_t T, int64_t K, int64_t ldx,
                                           const uint16_t* W, int64_t ldw, const uint16_t* bias,
                                           float* Y, int64_t ldy, int64_t n0, int64_t n1) {
  for (int64_t t0 = 0; t0 < T; t0 += kSmallTAvx512) {
    const float* x = X + t0 * ldx;
    float* y = Y + t0 * ldy;
    switch (std::min<int64_t>(T - t0, kSmallTAvx512)) {
      case 1: bf16_rows_tt_avx512<1>(x, K, ldx, W, ldw, bias, y, ldy, n0, n1); break;
      case 2: bf16_rows_tt_avx512<2>(x, K, ldx, W, ldw, bias, y, ldy, n0, n1); break;
      case 3: bf16_rows_tt_avx512<3>(x, K, ldx, W, ldw, bias, y, ldy, n0, n1); break;
      default: bf16_rows_tt_avx512<4>(x, K, ldx, W, ldw, bias, y, ldy, n0, n1); break;
    }
  }
}

GPTOSS_TARGET_AVX2 void bf16_rows_avx2(const float* X, int64_t T, int64_t K, int64_t ldx,
                                       const uint16_t* W, int64_t ldw, const uint16_t* bias,
                                       float* Y, int64_t ldy, int64_t n0, int64_t n1) {
  for (int64_t t0 = 0; t0 < T; t0 += kSmallTAvx2) {
    const float* x = X + t0 * ldx;
    float* y = Y + t0 * ldy;
    switch (std::min<int64_t>(T - t0, kSmallTAvx2)) {
      case 1: bf16_rows_tt_avx2<1>(x, K, ldx, W, ldw, bias, y, ldy, n0, n1); break;
      case 2: bf16_rows_tt_avx2<2>(x, K, ldx, W, ldw, bias, y, ldy, n0, n1); break;
      case 3: bf16_rows_tt_avx2<3>(x, K, ldx, W, ldw, bias, y, ldy, n0, n1); break;
      default: bf16_rows_tt_avx2<4>(x, K, ldx, W, ldw, bias, y, ldy, n0, n1); break;
    }
  }
}

GPTOSS_TARGET_AVX512 void bf16_tile_avx512(const uint16_t* W, int64_t ldw, int64_t n0,
                                           int64_t nrows, int64_t k0, int64_t kc, float* wd,
                                           int64_t ldwd) {
  for (int64_t r = 0; r < nrows; ++r) {
    const uint16_t* w = W + (n0 + r) * ldw + k0;
    float* d = wd + r * ldwd;
    int64_t k = 0;
    for (; k + 16 <= kc; k += 16) _mm512_storeu_ps(d + k, bf16x16_avx512(w + k));
    if (k < kc) {
      __mmask16 m = static_cast<__mmask16>((1u << (kc - k)) - 1u);
      _mm512_mask_storeu_ps(d + k, m, bf16x16_mask_avx512(w + k, m));
    }
  }
}

GPTOSS_TARGET_AVX2 void bf16_tile_avx2(const uint16_t* W, int64_t ldw, int64_t n0, int64_t nrows,
                                       int64_t k0, int64_t kc, float* wd, int64_t ldwd) {
  for (int64_t r = 0; r < nrows; ++r) {
    const uint16_t* w = W + (n0 + r) * ldw + k0;
    float* d = wd + r * ldwd;
    int64_t k = 0;
    for (; k + 8 <= kc; k += 8) _mm256_storeu_ps(d + k, bf16x8_avx2(w + k));
    for (; k < kc; ++k) d[k] = bf16_to_f32(w[k]);
  }
}

}  // namespace gptoss::cpu
