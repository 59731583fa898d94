// The bf16 dot-product GEMM pieces (AVX512_BF16, `vdpbf16ps`): the same driver as the fp32 GEMM
// (matmul.cc), on words that each hold a pair of bf16 values of adjacent k.
//
//   XT[kw][t]  = (bf16(X[t][2kw]), bf16(X[t][2kw+1]))   activations rounded to nearest even
//   Wd[r][kw]  = (W[r][2kw], W[r][2kw+1])               bf16 weights as stored; MXFP4 values
//                                                        E2M1 * 2^e are exact in bf16
//   YT[r][t]  += sum_kw dot2(Wd[r][kw], XT[kw][t])       fp32 accumulation
//
// One vdpbf16ps does 32 multiply-adds where an fp32 FMA does 16. The pairs are the storage order
// of both operands (a bf16 row's adjacent elements; an MXFP4 byte's two nibbles), so weights need
// no permutation. vdpbf16ps reads bf16 subnormals as zero: an MXFP4 matrix with a scale byte
// below 2 (values under 2^-126) is not exact in bf16 and is left to the fp32 path.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "common.h"
#include "cpu/simd.h"
#include "cpu/transpose_avx512.h"

#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace gptoss::cpu {

namespace {

// Mask of the first n (0..16) lanes.
inline __mmask16 first16(int64_t n) {
  return n >= 16 ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1u);
}
inline __mmask32 first32(int64_t n) {
  return n >= 32 ? __mmask32(0xFFFFFFFFu) : n <= 0 ? __mmask32(0) : __mmask32((1ull << n) - 1ull);
}

template <int R, int NV>
GPTOSS_TARGET_AVX512BF16 void gemm_kernel(const float* xt, int64_t, const float* wd, int64_t,
                                          int64_t kc, float* yt, int64_t, bool acc,
                                          const char* const* pf, int64_t npf) {
  constexpr int64_t LD = 16 * NV;
  __m512 c[R][NV];
  if (acc) {
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) c[r][v] = _mm512_loadu_ps(yt + r * LD + 16 * v);
  } else {
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) c[r][v] = _mm512_setzero_ps();
  }
  for (int64_t k = 0; k < kc; ++k) {
    if (k < npf) _mm_prefetch(pf[k], _MM_HINT_T1);
    __m512bh x[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) x[v] = (__m512bh)_mm512_loadu_ps(xt + k * LD + 16 * v);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const __m512bh w = (__m512bh)_mm512_set1_ps(wd[r * kWdStride + k]);  // one bf16 pair
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) c[r][v] = _mm512_dpbf16_ps(c[r][v], w, x[v]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(yt + r * LD + 16 * v, c[r][v]);
}

// bf16 bits of the 16 E2M1 values (spec section 4), in lanes 0..15 for vpermw.
alignas(64) constexpr uint16_t kE2m1Bf16[32] = {0x0000, 0x3F00, 0x3F80, 0x3FC0, 0x4000, 0x4040, 0x4080, 0x40C0,
                                                0x8000, 0xBF00, 0xBF80, 0xBFC0, 0xC000, 0xC040, 0xC080, 0xC0C0};
// What a scale byte s adds to a nonzero bf16 bit pattern: (s - 127) in the exponent field.
struct ShiftTable {
  int16_t v[256];
};
constexpr ShiftTable make_shift_table() {
  ShiftTable t{};
  for (int s = 0; s < 256; ++s) t.v[s] = int16_t((s - 127) * 128);
  return t;
}
alignas(64) constexpr ShiftTable kScaleShift = make_shift_table();

// The 32 values of one MXFP4 block (16 bytes, scale byte s) as 16 words of bf16 pairs: looked up
// with vpermw in a table of the E2M1 values whose exponents carry the scale (a masked vpaddw;
// the zeros stay zero), word j = (element 2j: the low nibble of byte j, element 2j + 1: its high
// nibble). Exact for s in [2, 252] (mxfp4_bf16_exact).
GPTOSS_TARGET_AVX512BF16 inline __m512i mxfp4_block_bf16_pairs(const uint8_t* block, uint8_t s) {
  const __m512i table = _mm512_load_si512(kE2m1Bf16);
  const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(block)));
  const __m512i idx = _mm512_ternarylogic_epi32(v, _mm512_slli_epi32(v, 12), _mm512_set1_epi32(0x000F000F),
                                                0xA8);  // (a | b) & c
  const __m512i tab = _mm512_mask_add_epi16(table, __mmask32(0xFEFE), table, _mm512_set1_epi16(kScaleShift.v[s]));
  return _mm512_permutexvar_epi16(idx, tab);
}

// R rows x TT tokens of the MXFP4 GEMV on bf16 pairs: per block and row, the 32 weights are
// looked up as bf16 pairs and one vdpbf16ps per token consumes them.
template <int R, int TT>
GPTOSS_TARGET_AVX512BF16 inline void mxfp4_dot_rows(const float* xw, int64_t K, const uint8_t* blocks,
                                                    const uint8_t* scales, const uint16_t* bias, float* Y,
                                                    int64_t ldy, int64_t n) {
  const int64_t nb = K / 32, Kw = K / 2;
  const uint8_t* bl = blocks + n * nb * 16;
  const uint8_t* sc = scales + n * nb;
  __m512 acc[R][TT];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int t = 0; t < TT; ++t) acc[r][t] = _mm512_setzero_ps();
  const char* pf = reinterpret_cast<const char*>(bl) + 4 * R * nb * 16;  // 4 row groups ahead
  for (int64_t b = 0; b < nb; ++b) {
    if (R * 16 * b % 64 == 0) _mm_prefetch(pf + R * 16 * b, _MM_HINT_T0);
    __m512bh x[TT];
#pragma GCC unroll 16
    for (int t = 0; t < TT; ++t) x[t] = (__m512bh)_mm512_loadu_ps(xw + t * Kw + 16 * b);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const __m512bh w = (__m512bh)mxfp4_block_bf16_pairs(bl + (r * nb + b) * 16, sc[r * nb + b]);
#pragma GCC unroll 16
      for (int t = 0; t < TT; ++t) acc[r][t] = _mm512_dpbf16_ps(acc[r][t], w, x[t]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    const float bv = bias ? bf16_to_f32(bias[n + r]) : 0.0f;
#pragma GCC unroll 16
    for (int t = 0; t < TT; ++t) Y[t * ldy + n + r] = _mm512_reduce_add_ps(acc[r][t]) + bv;
  }
}

template <int TT>
GPTOSS_TARGET_AVX512BF16 void mxfp4_dot_rows_tt(const float* xw, int64_t K, const uint8_t* blocks,
                                                const uint8_t* scales, const uint16_t* bias, float* Y, int64_t ldy,
                                                int64_t n0, int64_t n1) {
  constexpr int R = TT <= 4 ? 4 : 2;  // R x TT accumulators stay in registers
  int64_t n = n0;
  for (; n + R <= n1; n += R) mxfp4_dot_rows<R, TT>(xw, K, blocks, scales, bias, Y, ldy, n);
  for (; n < n1; ++n) mxfp4_dot_rows<1, TT>(xw, K, blocks, scales, bias, Y, ldy, n);
}

}  // namespace

GPTOSS_TARGET_AVX512BF16 void pack_x_bf16_pairs(const float* X, int64_t T, int64_t K, int64_t ldx, float* xw) {
  const int64_t Kw = (K + 1) / 2;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t k = 0; k < K; k += 32) {
      const float* s = X + t * ldx + k;
      const __m512 w = (__m512)_mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(first16(K - k - 16), s + 16),
                                                   _mm512_maskz_loadu_ps(first16(K - k), s));
      _mm512_mask_storeu_ps(xw + t * Kw + k / 2, first16(Kw - k / 2), w);
    }
}

void mxfp4_rows_bf16dot(const float* xw, int64_t T, int64_t K, const uint8_t* blocks, const uint8_t* scales,
                        const uint16_t* bias, float* Y, int64_t ldy, int64_t n0, int64_t n1) {
  for (; T > 8; T -= 8, xw += 8 * (K / 2), Y += 8 * ldy)  // passes of 8 tokens
    mxfp4_dot_rows_tt<8>(xw, K, blocks, scales, bias, Y, ldy, n0, n1);
  switch (T) {
    case 1: return mxfp4_dot_rows_tt<1>(xw, K, blocks, scales, bias, Y, ldy, n0, n1);
    case 2: return mxfp4_dot_rows_tt<2>(xw, K, blocks, scales, bias, Y, ldy, n0, n1);
    case 3: return mxfp4_dot_rows_tt<3>(xw, K, blocks, scales, bias, Y, ldy, n0, n1);
    case 4: return mxfp4_dot_rows_tt<4>(xw, K, blocks, scales, bias, Y, ldy, n0, n1);
    case 5: return mxfp4_dot_rows_tt<5>(xw, K, blocks, scales, bias, Y, ldy, n0, n1);
    case 6: return mxfp4_dot_rows_tt<6>(xw, K, blocks, scales, bias, Y, ldy, n0, n1);
    case 7: return mxfp4_dot_rows_tt<7>(xw, K, blocks, scales, bias, Y, ldy, n0, n1);
    default: return mxfp4_dot_rows_tt<8>(xw, K, blocks, scales, bias, Y, ldy, n0, n1);
  }
}

const GemmKernel kBf16dotKernel12x1 = gemm_kernel<12, 1>;
const GemmKernel kBf16dotKernel12x2 = gemm_kernel<12, 2>;

GPTOSS_TARGET_AVX512BF16 void pack_xt_bf16dot(const float* X, int64_t ldx, int64_t tcn, int64_t tpad,
                                              int64_t K, int64_t kb0, int64_t kb1, bool,
                                              int64_t TB, float* XT) {
  const int64_t Kw = (K + 1) / 2;
  for (int64_t kb = kb0; kb < kb1; kb += 32) {  // 32 words = 64 elements of k
    const int64_t kwn = std::min<int64_t>(32, Kw - kb);
    const int64_t e0 = 2 * kb, en = K - e0;       // elements of this block present in X
    const __mmask16 m0 = first16(en), m1 = first16(en - 16), m2 = first16(en - 32), m3 = first16(en - 48);
    for (int64_t t16 = 0; t16 < tpad; t16 += 16) {
      const int64_t p0 = t16 / TB * TB, w = std::min(TB, tpad - p0), col = t16 - p0;
      float* panel = XT + p0 * Kw + col;
      __m512 a[16], b[16];
#pragma GCC unroll 16
      for (int i = 0; i < 16; ++i) {
        if (t16 + i < tcn) {
          const float* s = X + (t16 + i) * ldx + e0;
          a[i] = (__m512)_mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(m1, s + 16), _mm512_maskz_loadu_ps(m0, s));
          b[i] = (__m512)_mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(m3, s + 48), _mm512_maskz_loadu_ps(m2, s + 32));
        } else {
          a[i] = _mm512_setzero_ps();
          b[i] = _mm512_setzero_ps();
        }
      }
      transpose16_avx512(a);
      for (int64_t kk = 0; kk < std::min<int64_t>(16, kwn); ++kk) _mm512_storeu_ps(panel + (kb + kk) * w, a[kk]);
      if (kwn > 16) {
        transpose16_avx512(b);
        for (int64_t kk = 0; kk < kwn - 16; ++kk) _mm512_storeu_ps(panel + (kb + 16 + kk) * w, b[kk]);
      }
    }
  }
}

GPTOSS_TARGET_AVX512BF16 void bf16dot_tile_bf16(const uint16_t* W, int64_t ldw, int64_t K, int64_t n0,
                                                int64_t nrows, int64_t k0, int64_t kc, float* wd,
                                                int64_t ldwd) {
  for (int64_t r = 0; r < nrows; ++r) {
    const uint16_t* w = W + (n0 + r) * ldw + 2 * k0;
    float* d = wd + r * ldwd;
    const int64_t en = std::min(2 * kc, K - 2 * k0);  // elements present (odd K: the last pair's
    for (int64_t k = 0; k < kc; k += 16) {             // high half is zero)
      const __m512i v = _mm512_maskz_loadu_epi16(first32(en - 2 * k), w + 2 * k);
      _mm512_mask_storeu_ps(d + k, first16(kc - k), _mm512_castsi512_ps(v));
    }
  }
}

GPTOSS_TARGET_AVX512BF16 void bf16dot_tile_mxfp4(const uint8_t* blocks, const uint8_t* scales, int64_t K,
                                                 int64_t n0, int64_t nrows, int64_t k0, int64_t kc,
                                                 float* wd, int64_t ldwd) {
  const int64_t nb = K / 32;  // k0, kc in words: 16 per block
  for (int64_t r = 0; r < nrows; ++r) {
    const uint8_t* bl = blocks + ((n0 + r) * nb + k0 / 16) * 16;
    const uint8_t* sc = scales + (n0 + r) * nb + k0 / 16;
    float* d = wd + r * ldwd;
    for (int64_t b = 0; b < kc / 16; ++b)
      _mm512_storeu_ps(d + 16 * b, _mm512_castsi512_ps(mxfp4_block_bf16_pairs(bl + 16 * b, sc[b])));
  }
}

GPTOSS_TARGET_AVX512BF16 void round_rows_bf16(const float* X, int64_t T, int64_t K, int64_t ldx, float* out) {
  for (int64_t t = 0; t < T; ++t)
    for (int64_t k = 0; k < K; k += 16) {
      const __mmask16 m = first16(K - k);
      const __m256i h = (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, X + t * ldx + k));
      _mm512_mask_storeu_ps(out + t * K + k, m, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
    }
}

bool mxfp4_bf16_exact(const uint8_t* scales, int64_t n) {
  uint8_t lo = 255;
  for (int64_t i = 0; i < n; ++i) lo = std::min(lo, scales[i]);
  return n == 0 || lo >= 2;
}

}  // namespace gptoss::cpu
