// Opt-in 8-bit copies of the bf16 matrices for batch-1 decode (EngineOptions::int8_decode).
//
// Decode streams every dense weight once per token, so halving their bytes (bf16 -> int8 with
// one fp32 scale per 32 weights, symmetric, round to nearest) makes the dense part of a decode
// step about twice as fast. It is an approximation (|error| <= scale/2 per weight, about 0.2%
// relative), so it is off by default; prefill keeps using the exact bf16 weights.
#include "cpu/matmul_q8.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common.h"
#include "cpu/matmul.h"

// GCC 12 warns about its own _mm512_reduce_* intrinsics (an intentionally undefined operand).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace gptoss::cpu {

Q8Matrix quantize_q8(const uint16_t* W, int64_t N, int64_t K, int64_t ldw) {
  GPTOSS_CHECK_ARG(K % 32 == 0, "quantize_q8: K must be a multiple of 32");
  Q8Matrix q;
  q.N = N;
  q.K = K;
  q.q.resize(size_t(N * K));
  q.scales.resize(size_t(N * (K / 32)));
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t b = 0; b < K / 32; ++b) {
      const uint16_t* w = W + n * ldw + b * 32;
      float amax = 0.f;
      for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(bf16_to_f32(w[i])));
      const float scale = amax / 127.0f;
      const float inv = scale > 0.f ? 1.0f / scale : 0.f;
      q.scales[size_t(n * (K / 32) + b)] = scale;
      int8_t* out = q.q.data() + n * K + b * 32;
      for (int i = 0; i < 32; ++i) out[i] = int8_t(std::lrint(std::clamp(bf16_to_f32(w[i]) * inv, -127.f, 127.f)));
    }
  }
  return q;
}

void matmul_q8_ref(const float* X, int64_t T, int64_t ldx, const int8_t* q, const float* scales, int64_t N,
                   int64_t K, float* Y, int64_t ldy) {
  const int64_t nb = K / 32;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t n = 0; n < N; ++n) {
      double acc = 0;
      for (int64_t b = 0; b < nb; ++b) {
        double s = 0;
        for (int i = 0; i < 32; ++i) s += double(q[n * K + b * 32 + i]) * X[t * ldx + b * 32 + i];
        acc += s * scales[n * nb + b];
      }
      Y[t * ldy + n] = float(acc);
    }
}

namespace {

// R rows x TT tokens; per 32-k block: int8 -> fp32, dot with x, times the block scale.
struct View {
  const int8_t* q;
  const float* scales;
  int64_t N, K;
};

template <int R, int TT>
__attribute__((target("avx512f,avx512bw,fma"))) inline void q8_block(const float* X, int64_t ldx, const View& W,
                                                                     float* Y, int64_t ldy, int64_t n) {
  const int64_t K = W.K, nb = K / 32;
  const int8_t* w = W.q + n * K;
  const float* sc = W.scales + n * nb;
  // The rows two groups ahead, read as one sequential stream (rows are packed).
  const char* pf = reinterpret_cast<const char*>(w + 2 * R * K);
  __m512 acc[R][TT];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < TT; ++t) acc[r][t] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t k = b * 32;
    _mm_prefetch(pf + k * R, _MM_HINT_T0);
    if constexpr (R >= 2) _mm_prefetch(pf + k * R + 64, _MM_HINT_T0);
    __m512 x0[TT], x1[TT];
    for (int t = 0; t < TT; ++t) {
      x0[t] = _mm512_loadu_ps(X + t * ldx + k);
      x1[t] = _mm512_loadu_ps(X + t * ldx + k + 16);
    }
    for (int r = 0; r < R; ++r) {
      const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + r * K + k));
      const __m512 w0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(q)));
      const __m512 w1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(q, 1)));
      const __m512 s = _mm512_set1_ps(sc[r * nb + b]);
      for (int t = 0; t < TT; ++t)
        acc[r][t] = _mm512_fmadd_ps(_mm512_fmadd_ps(w0, x0[t], _mm512_mul_ps(w1, x1[t])), s, acc[r][t]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < TT; ++t) Y[t * ldy + n + r] = _mm512_reduce_add_ps(acc[r][t]);
}

template <int TT>
__attribute__((target("avx512f,avx512bw,fma"))) void q8_rows(const float* X, int64_t ldx, const View& W, float* Y,
                                                             int64_t ldy, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) q8_block<4, TT>(X, ldx, W, Y, ldy, n);
  for (; n < n1; ++n) q8_block<1, TT>(X, ldx, W, Y, ldy, n);
}

}  // namespace

bool q8_available() { return std::strcmp(simd_level(), "avx512") == 0; }

void matmul_q8(const float* X, int64_t T, int64_t ldx, const int8_t* q, const float* scales, int64_t N, int64_t K,
               float* Y, int64_t ldy) {
  if (!q8_available()) {
    matmul_q8_ref(X, T, ldx, q, scales, N, K, Y, ldy);
    return;
  }
  const View W{q, scales, N, K};
#pragma omp parallel
  {
    const int nt = omp_get_num_threads(), id = omp_get_thread_num();
    // Contiguous row ranges (multiples of 4) per thread: each thread streams its own region.
    const int64_t per = (W.N / nt + 3) / 4 * 4;
    const int64_t n0 = std::min<int64_t>(W.N, id * per), n1 = id == nt - 1 ? W.N : std::min<int64_t>(W.N, n0 + per);
    for (int64_t t = 0; t < T; t += 4) {
      const int64_t tt = std::min<int64_t>(4, T - t);
      const float* x = X + t * ldx;
      float* y = Y + t * ldy;
      switch (tt) {
        case 1: q8_rows<1>(x, ldx, W, y, ldy, n0, n1); break;
        case 2: q8_rows<2>(x, ldx, W, y, ldy, n0, n1); break;
        case 3: q8_rows<3>(x, ldx, W, y, ldy, n0, n1); break;
        default: q8_rows<4>(x, ldx, W, y, ldy, n0, n1); break;
      }
    }
  }
}

}  // namespace gptoss::cpu
