// CPU matrix products: run-time SIMD dispatch, OpenMP partitioning, the GEMM driver and its
// register-blocked micro-kernels, the scalar path, and the double-precision reference oracles.
//
// Shapes:
//   T <= kGemvMaxT* (decode; small groups of MoE tokens): dot products along K. The weights are
//     streamed from memory (with software prefetch) and decoded in registers once per pass of up
//     to 4 tokens (matmul_bf16.cc / matmul_mxfp4.cc). Threads take contiguous ranges of rows.
//     Memory-bound at T = 1.
//   larger T (prefill, grouped MoE tokens): GEMM. X is packed once per call into panels of
//     XT[k][t] (tokens contiguous); each thread takes super-tiles of W rows, converts a
//     [rows x KC] tile to fp32 into a per-thread buffer (once, reused for every token), and runs a
//     micro-kernel with 12 rows x 32 tokens of accumulators in registers (6 x 16 on AVX2):
//       for k: xt = XT[k][t0 : t0+32] (2 vectors); for each row r: acc[r][:] += Wd[r][k] * xt
//     Accumulators are kept transposed in a per-thread YT[r][t] buffer across K chunks, and
//     written to Y (+ bias) at the end. Compute-bound.
//     Precision::Bf16 on AVX512_BF16: the same driver on words of two bf16 values of adjacent k
//     (matmul_bf16dot.cc), activations rounded to bf16, twice the multiply-adds per instruction.
// The fp32 paths accumulate in fp32 with products of exact fp32 values (bf16 and E2M1 x 2^e
// convert exactly), so results differ from the double-precision oracles only by fp32 rounding.
#include "cpu/matmul.h"

// GCC 12 reports false "may be used uninitialized" warnings inside the intrinsic headers when they
// are used from target-attributed functions (GCC PR105593); silence them for this file.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "common.h"
#include "cpu/simd.h"
#include "cpu/transpose_avx512.h"

namespace gptoss::cpu {

// =============================== SIMD selection ==============================================

static Simd detect_cpu_simd() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("fma"))
    return Simd::Avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Simd::Avx2;
  return Simd::Scalar;
}

Simd active_simd() {
  static const Simd cpu = detect_cpu_simd();
  Simd s = cpu;
  if (const char* e = std::getenv("GPTOSS_SIMD")) {
    Simd want = cpu;
    if (!std::strcmp(e, "scalar")) want = Simd::Scalar;
    else if (!std::strcmp(e, "avx2")) want = Simd::Avx2;
    else if (!std::strcmp(e, "avx512")) want = Simd::Avx512;
    if (static_cast<int>(want) < static_cast<int>(s)) s = want;
  }
  return s;
}

const char* simd_name(Simd s) {
  switch (s) {
    case Simd::Avx512: return "avx512";
    case Simd::Avx2: return "avx2";
    default: return "scalar";
  }
}

const char* simd_level() { return simd_name(active_simd()); }

bool bf16dot_active() {
  static const bool cpu = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16") != 0;
  }();
  return cpu && active_simd() == Simd::Avx512;
}

bool bf16_dot_available() { return bf16dot_active(); }

// =============================== reference oracles ===========================================

void matmul_bf16_ref(const float* X, int64_t T, int64_t K, int64_t ldx, const uint16_t* W,
                     int64_t N, int64_t ldw, const uint16_t* bias, float* Y, int64_t ldy) {
  for (int64_t t = 0; t < T; ++t)
    for (int64_t n = 0; n < N; ++n) {
      double s = bias ? double(bf16_to_f32(bias[n])) : 0.0;
      for (int64_t k = 0; k < K; ++k)
        s += double(bf16_to_f32(W[n * ldw + k])) * double(X[t * ldx + k]);
      Y[t * ldy + n] = float(s);
    }
}

void matmul_mxfp4_ref(const float* X, int64_t T, int64_t K, int64_t ldx, const uint8_t* blocks,
                      const uint8_t* scales, int64_t N, const uint16_t* bias, float* Y,
                      int64_t ldy) {
  const int64_t nb = K / 32;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t n = 0; n < N; ++n) {
      double s = bias ? double(bf16_to_f32(bias[n])) : 0.0;
      for (int64_t k = 0; k < K; ++k) {
        uint8_t byte = blocks[(n * nb + k / 32) * 16 + (k % 32) / 2];
        int nib = (k % 2 == 0) ? (byte & 0xF) : (byte >> 4);
        double w = std::ldexp(double(kMxfp4Table[nib]), int(scales[n * nb + k / 32]) - 127);
        s += w * double(X[t * ldx + k]);
      }
      Y[t * ldy + n] = float(s);
    }
}

// =============================== helpers =====================================================

namespace {

// Threads for a call touching `work` bytes of weights: one thread per kMinBytesPerThread.
int threads_for(int64_t work_bytes, int64_t max_useful) {
  constexpr int64_t kMinBytesPerThread = 96 << 10;
  int64_t nt = std::min<int64_t>(omp_get_max_threads(), work_bytes / kMinBytesPerThread);
  nt = std::min(nt, max_useful);
  return int(std::max<int64_t>(nt, 1));
}

// Rows [n0, n1) of thread `tid` out of `nt`, in units of `align` rows.
void split_rows(int64_t N, int nt, int tid, int64_t align, int64_t* n0, int64_t* n1) {
  int64_t units = (N + align - 1) / align;
  int64_t per = units / nt, rem = units % nt;
  int64_t u0 = tid * per + std::min<int64_t>(tid, rem);
  int64_t u1 = u0 + per + (tid < rem ? 1 : 0);
  *n0 = std::min(N, u0 * align);
  *n1 = std::min(N, u1 * align);
}

// 64-byte aligned float buffer that only grows (per thread, reused across calls).
struct FloatBuf {
  float* p = nullptr;
  size_t cap = 0;
  ~FloatBuf() { std::free(p); }
  float* get(size_t n) {
    if (n > cap) {
      std::free(p);
      size_t bytes = ((n * sizeof(float)) + 63) / 64 * 64;
      p = static_cast<float*>(std::aligned_alloc(64, bytes));
      if (!p) throw std::bad_alloc();
      cap = n;
    }
    return p;
  }
};

// Position of element j (0..31) of a 32-block in the permuted [even16 | odd16] order.
inline int perm32(int j) { return (j & 1) ? 16 + (j >> 1) : (j >> 1); }

// xp[t][K] = X[t][:] with every 32-block permuted to [even16 | odd16].
void permute_x_mxfp4(const float* X, int64_t T, int64_t K, int64_t ldx, float* xp) {
  for (int64_t t = 0; t < T; ++t) {
    const float* src = X + t * ldx;
    float* dst = xp + t * K;
    for (int64_t kb = 0; kb < K; kb += 32)
      for (int j = 0; j < 16; ++j) {
        dst[kb + j] = src[kb + 2 * j];
        dst[kb + 16 + j] = src[kb + 2 * j + 1];
      }
  }
}

// =============================== scalar path =================================================

void bf16_scalar(const float* X, int64_t T, int64_t K, int64_t ldx, const uint16_t* W, int64_t N,
                 int64_t ldw, const uint16_t* bias, float* Y, int64_t ldy) {
  const int nt = threads_for(N * K * 2 * std::max<int64_t>(T / 8, 1), N);
  std::vector<float> wbuf(size_t(nt) * size_t(K) + 1);
#pragma omp parallel num_threads(nt)
  {
    float* w = wbuf.data() + size_t(omp_get_thread_num()) * size_t(K);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t k = 0; k < K; ++k) w[k] = bf16_to_f32(W[n * ldw + k]);
      float b = bias ? bf16_to_f32(bias[n]) : 0.0f;
      for (int64_t t = 0; t < T; ++t) {
        const float* x = X + t * ldx;
        float s = 0.0f;
        for (int64_t k = 0; k < K; ++k) s += w[k] * x[k];
        Y[t * ldy + n] = s + b;
      }
    }
  }
}

void mxfp4_scalar(const float* X, int64_t T, int64_t K, int64_t ldx, const uint8_t* blocks,
                  const uint8_t* scales, int64_t N, const uint16_t* bias, float* Y, int64_t ldy) {
  const int64_t nb = K / 32;
  const int nt = threads_for(N * nb * 17 * std::max<int64_t>(T / 8, 1), N);
  std::vector<float> wbuf(size_t(nt) * size_t(K) + 1);
#pragma omp parallel num_threads(nt)
  {
    float* w = wbuf.data() + size_t(omp_get_thread_num()) * size_t(K);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t b = 0; b < nb; ++b) {
        float s = kE8m0.v[scales[n * nb + b]];
        const uint8_t* q = blocks + (n * nb + b) * 16;
        for (int j = 0; j < 16; ++j) {
          w[32 * b + 2 * j] = kMxfp4Table[q[j] & 0xF] * s;
          w[32 * b + 2 * j + 1] = kMxfp4Table[q[j] >> 4] * s;
        }
      }
      float bv = bias ? bf16_to_f32(bias[n]) : 0.0f;
      for (int64_t t = 0; t < T; ++t) {
        const float* x = X + t * ldx;
        float s = 0.0f;
        for (int64_t k = 0; k < K; ++k) s += w[k] * x[k];
        Y[t * ldy + n] = s + bv;
      }
    }
  }
}

// =============================== GEMM micro-kernels ==========================================

// Strides are compile-time constants (the driver lays its buffers out this way), so the 12
// broadcast addresses are one base register plus constant displacements:
//   xt: [kc][16*NV], wd: [R][kWdStride], yt: [R][16*NV].

template <int R, int NV>
GPTOSS_TARGET_AVX512 void gemm_kernel_avx512(const float* xt, int64_t, const float* wd, int64_t,
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
    __m512 x[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) x[v] = _mm512_loadu_ps(xt + k * LD + 16 * v);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      __m512 w = _mm512_set1_ps(wd[r * kWdStride + k]);
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) c[r][v] = _mm512_fmadd_ps(w, x[v], c[r][v]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(yt + r * LD + 16 * v, c[r][v]);
}

template <int R, int NV>
GPTOSS_TARGET_AVX2 void gemm_kernel_avx2(const float* xt, int64_t, const float* wd, int64_t,
                                         int64_t kc, float* yt, int64_t, bool acc,
    const char* const* pf, int64_t npf) {
  constexpr int64_t LD = 8 * NV;
  __m256 c[R][NV];
  if (acc) {
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) c[r][v] = _mm256_loadu_ps(yt + r * LD + 8 * v);
  } else {
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) c[r][v] = _mm256_setzero_ps();
  }
  for (int64_t k = 0; k < kc; ++k) {
    if (k < npf) _mm_prefetch(pf[k], _MM_HINT_T1);
    __m256 x[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) x[v] = _mm256_loadu_ps(xt + k * LD + 8 * v);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      __m256 w = _mm256_broadcast_ss(wd + r * kWdStride + k);
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) c[r][v] = _mm256_fmadd_ps(w, x[v], c[r][v]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) _mm256_storeu_ps(yt + r * LD + 8 * v, c[r][v]);
}

// =============================== X packing (transposes) =======================================
// pack_xt_*: for the k-blocks [kb0, kb1) (multiples of 32), writes the panels of XT (see gemm()):
// token group g of 16 (8 for AVX2) at column g*16 - p0 of the panel starting at token p0.
// Tokens >= tcn are zero. With permute32 each 32-block of k is reordered to [even16 | odd16].


GPTOSS_TARGET_AVX512 void pack_xt_avx512(const float* X, int64_t ldx, int64_t tcn, int64_t tpad,
                                         int64_t K, int64_t kb0, int64_t kb1, bool permute32,
                                         int64_t TB, float* XT) {
  const __m512i ieven = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i iodd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  for (int64_t kb = kb0; kb < kb1; kb += 32) {
    const int64_t kn = std::min<int64_t>(32, K - kb);
    const __mmask16 m0 = kn >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << kn) - 1u);
    const __mmask16 m1 = kn >= 32 ? __mmask16(0xFFFF)
                                  : (kn <= 16 ? __mmask16(0) : __mmask16((1u << (kn - 16)) - 1u));
    for (int64_t t16 = 0; t16 < tpad; t16 += 16) {
      const int64_t p0 = t16 / TB * TB, w = std::min(TB, tpad - p0), col = t16 - p0;
      float* panel = XT + p0 * K + col;
      __m512 a[16], b[16];
#pragma GCC unroll 16
      for (int i = 0; i < 16; ++i) {
        if (t16 + i < tcn) {
          const float* s = X + (t16 + i) * ldx + kb;
          a[i] = _mm512_maskz_loadu_ps(m0, s);
          b[i] = _mm512_maskz_loadu_ps(m1, s + 16);
        } else {
          a[i] = _mm512_setzero_ps();
          b[i] = _mm512_setzero_ps();
        }
      }
      if (permute32) {
#pragma GCC unroll 16
        for (int i = 0; i < 16; ++i) {
          __m512 e = _mm512_permutex2var_ps(a[i], ieven, b[i]);
          b[i] = _mm512_permutex2var_ps(a[i], iodd, b[i]);
          a[i] = e;
        }
      }
      transpose16_avx512(a);
      for (int64_t kk = 0; kk < std::min<int64_t>(16, kn); ++kk)
        _mm512_storeu_ps(panel + (kb + kk) * w, a[kk]);
      if (kn > 16) {
        transpose16_avx512(b);
        for (int64_t kk = 0; kk < kn - 16; ++kk) _mm512_storeu_ps(panel + (kb + 16 + kk) * w, b[kk]);
      }
    }
  }
}

GPTOSS_TARGET_AVX2 static inline void transpose8_avx2(__m256 r[8]) {
  __m256 t[8], u[8];
#pragma GCC unroll 8
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
#pragma GCC unroll 8
  for (int i = 0; i < 8; i += 4) {
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {
    r[j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x20);
    r[4 + j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x31);
  }
}

// [a0 a2 b0 b2 | a4 a6 b4 b6] -> [a0 a2 a4 a6 b0 b2 b4 b6] (64-bit lanes 0 2 1 3).
GPTOSS_TARGET_AVX2 static inline __m256 fix_lanes_avx2(__m256 v) {
  return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(v), 0xD8));
}

GPTOSS_TARGET_AVX2 void pack_xt_avx2(const float* X, int64_t ldx, int64_t tcn, int64_t tpad,
                                     int64_t K, int64_t kb0, int64_t kb1, bool permute32,
                                     int64_t TB, float* XT) {
  alignas(32) float tmp[8][32];
  for (int64_t kb = kb0; kb < kb1; kb += 32) {
    const int64_t kn = std::min<int64_t>(32, K - kb);
    for (int64_t t8 = 0; t8 < tpad; t8 += 8) {
      const int64_t p0 = t8 / TB * TB, w = std::min(TB, tpad - p0), col = t8 - p0;
      float* panel = XT + p0 * K + col;
      // Gather the 8 x 32 block (permuted, zero padded) into tmp, then transpose 8 x 8 tiles.
      for (int i = 0; i < 8; ++i) {
        if (t8 + i < tcn) {
          const float* s = X + (t8 + i) * ldx + kb;
          if (permute32) {
            __m256 a0 = _mm256_loadu_ps(s), a1 = _mm256_loadu_ps(s + 8);
            __m256 a2 = _mm256_loadu_ps(s + 16), a3 = _mm256_loadu_ps(s + 24);
            __m256 e0 = _mm256_shuffle_ps(a0, a1, _MM_SHUFFLE(2, 0, 2, 0));
            __m256 o0 = _mm256_shuffle_ps(a0, a1, _MM_SHUFFLE(3, 1, 3, 1));
            __m256 e1 = _mm256_shuffle_ps(a2, a3, _MM_SHUFFLE(2, 0, 2, 0));
            __m256 o1 = _mm256_shuffle_ps(a2, a3, _MM_SHUFFLE(3, 1, 3, 1));
            _mm256_store_ps(tmp[i], fix_lanes_avx2(e0));
            _mm256_store_ps(tmp[i] + 8, fix_lanes_avx2(e1));
            _mm256_store_ps(tmp[i] + 16, fix_lanes_avx2(o0));
            _mm256_store_ps(tmp[i] + 24, fix_lanes_avx2(o1));
          } else {
            int j = 0;
            for (; j + 8 <= kn; j += 8) _mm256_store_ps(tmp[i] + j, _mm256_loadu_ps(s + j));
            for (; j < kn; ++j) tmp[i][j] = s[j];
            for (; j < 32; ++j) tmp[i][j] = 0.0f;
          }
        } else {
          for (int j = 0; j < 32; ++j) tmp[i][j] = 0.0f;
        }
      }
      for (int64_t j0 = 0; j0 < kn; j0 += 8) {
        __m256 r[8];
        for (int i = 0; i < 8; ++i) r[i] = _mm256_load_ps(tmp[i] + j0);
        transpose8_avx2(r);
        for (int64_t kk = 0; kk < std::min<int64_t>(8, kn - j0); ++kk)
          _mm256_storeu_ps(panel + (kb + j0 + kk) * w, r[kk]);
      }
    }
  }
}

}  // namespace

// Kernel tables: kernel[nv] handles nv token vectors (nv = 1..max_nv).
using PackFn = void (*)(const float* X, int64_t ldx, int64_t tcn, int64_t tpad, int64_t K,
                       int64_t kb0, int64_t kb1, bool permute32, int64_t TB, float* XT);
struct GemmIsaImpl {
  int rows;
  int tok_vec;
  int max_nv;
  GemmKernel kernel[5];
  PackFn pack;
  int kpw = 1;  // elements of k per 32-bit word of XT and Wd: 1 (fp32), 2 (bf16 pairs)
};

static const GemmIsaImpl kGemmAvx512 = {
    12, 16, 2,
    {nullptr, gemm_kernel_avx512<12, 1>, gemm_kernel_avx512<12, 2>, nullptr, nullptr},
    pack_xt_avx512};
static const GemmIsaImpl kGemmAvx2 = {
    6, 8, 2, {nullptr, gemm_kernel_avx2<6, 1>, gemm_kernel_avx2<6, 2>, nullptr, nullptr},
    pack_xt_avx2};
static const GemmIsaImpl kGemmBf16dot = {
    12, 16, 2, {nullptr, kBf16dotKernel12x1, kBf16dotKernel12x2, nullptr, nullptr},
    pack_xt_bf16dot, 2};

namespace {

// Tile converter: rows [n0, n0+nrows) x k in [k0, k0+kc) of W -> fp32 wd[r][k-k0].
struct WeightSource {
  // bf16
  const uint16_t* W = nullptr;
  int64_t ldw = 0;
  // mxfp4
  const uint8_t* blocks = nullptr;
  const uint8_t* scales = nullptr;
  int64_t K = 0;
  Simd simd = Simd::Scalar;
  bool bf16dot = false;  // tiles of bf16 pairs; k0, kc in words (2 elements)

  // k0, kc in words of the tile (elements, or pairs of them with bf16dot).
  void convert(int64_t n0, int64_t nrows, int64_t k0, int64_t kc, float* wd, int64_t ldwd) const {
    if (bf16dot) {
      if (W) bf16dot_tile_bf16(W, ldw, K, n0, nrows, k0, kc, wd, ldwd);
      else bf16dot_tile_mxfp4(blocks, scales, K, n0, nrows, k0, kc, wd, ldwd);
    } else if (W) {
      if (simd == Simd::Avx512) bf16_tile_avx512(W, ldw, n0, nrows, k0, kc, wd, ldwd);
      else bf16_tile_avx2(W, ldw, n0, nrows, k0, kc, wd, ldwd);
    } else {
      if (simd == Simd::Avx512) mxfp4_tile_avx512(blocks, scales, K, n0, nrows, k0, kc, wd, ldwd);
      else mxfp4_tile_avx2(blocks, scales, K, n0, nrows, k0, kc, wd, ldwd);
    }
  }
  // Appends to out the cache lines that convert() will read for rows [n0, n0 + nrows);
  // returns the new count (at most cap).
  int64_t lines(int64_t n0, int64_t nrows, int64_t k0, int64_t kc, const char** out, int64_t cnt,
                int64_t cap) const {
    if (bf16dot) {
      k0 *= 2;
      kc = std::min(2 * kc, K - k0);
    }
    for (int64_t r = 0; r < nrows; ++r) {
      const char* p;
      int64_t bytes;
      if (W) {
        p = reinterpret_cast<const char*>(W + (n0 + r) * ldw + k0);
        bytes = kc * 2;
      } else {
        const int64_t nb = K / 32;
        p = reinterpret_cast<const char*>(blocks + ((n0 + r) * nb + k0 / 32) * 16);
        bytes = kc / 2;
        if (cnt < cap) out[cnt++] = reinterpret_cast<const char*>(scales + (n0 + r) * nb + k0 / 32);
      }
      const uintptr_t first = reinterpret_cast<uintptr_t>(p) & ~uintptr_t(63);
      const uintptr_t last = (reinterpret_cast<uintptr_t>(p) + bytes - 1) & ~uintptr_t(63);
      for (uintptr_t a = first; a <= last && cnt < cap; a += 64)
        out[cnt++] = reinterpret_cast<const char*>(a);
    }
    return cnt;
  }
};

constexpr int64_t kTokChunk = 512;  // tokens packed per pass (bounds the XT and YT buffers)
constexpr int64_t kSuperRows = 96;  // W rows converted per tile (multiple of every isa.rows)
constexpr int64_t kMaxKc = kWdStride;  // K per tile (multiple of 32)

// Layouts (tokens in panels of TB = tok_vec * max_nv, the last panel possibly narrower, w wide):
//   XT: panel starting at token t0 holds XT[t0*K + k*w + (t - t0)], so a micro-kernel streams
//       one contiguous [kc x w] block (a plain [k][tpad] layout would put the k rows a power
//       of two apart and thrash a few L1 sets);
//   YT: YT[t0*ncpad + r*w + (t - t0)].
void gemm(const GemmIsaImpl& isa, const WeightSource& src, bool permute32, const float* X,
          int64_t T, int64_t K, int64_t ldx, int64_t N, const uint16_t* bias, float* Y,
          int64_t ldy) {
  const int R = isa.rows, TV = isa.tok_vec;
  const int64_t TB = int64_t(TV) * isa.max_nv;
  const int nthreads = omp_get_max_threads();
  // The k extent in words of XT and Wd (isa.kpw elements each); below, k is counted in words.
  const int64_t Kw = (K + isa.kpw - 1) / isa.kpw;
  // K chunk: the largest multiple of 32 <= kMaxKc that splits Kw into near-equal chunks.
  const int64_t nkc = std::max<int64_t>(1, (Kw + kMaxKc - 1) / kMaxKc);
  const int64_t KC = std::max<int64_t>(32, ((Kw + nkc - 1) / nkc + 31) / 32 * 32);
  // Rows per super-tile: enough tiles to keep every thread busy.
  int64_t NC = std::min<int64_t>(kSuperRows, ((N + nthreads - 1) / nthreads + R - 1) / R * R);
  NC = std::max<int64_t>(NC, R);
  const int64_t ncpad = (NC + R - 1) / R * R;
  const int64_t ntiles = (N + NC - 1) / NC;
  const int64_t tchunk = std::min<int64_t>(kTokChunk, (T + TV - 1) / TV * TV);

  const int nt = int(std::min<int64_t>(nthreads, ntiles));
  // All buffers are allocated here, outside the parallel region (an exception must not escape
  // it): XT, then per thread a W tile [ncpad][kWdStride] and a YT block [ncpad][tchunk].
  const size_t wd_size = size_t(ncpad) * size_t(kWdStride);
  const size_t yt_size = size_t(ncpad) * size_t(tchunk);
  static thread_local FloatBuf buf;
  float* XT = buf.get(size_t(Kw) * size_t(tchunk) + size_t(nt) * (wd_size + yt_size));
  float* thread_bufs = XT + size_t(Kw) * size_t(tchunk);

  for (int64_t tc0 = 0; tc0 < T; tc0 += tchunk) {
    const int64_t tcn = std::min(tchunk, T - tc0);
    const int64_t tpad = (tcn + TV - 1) / TV * TV;
#pragma omp parallel num_threads(nt)
    {
      // Pack XT (k permuted within 32-blocks for MXFP4), zero padded to tpad tokens.
      {
        int64_t b0, b1;
        split_rows((Kw + 31) / 32, omp_get_num_threads(), omp_get_thread_num(), 1, &b0, &b1);
        if (b0 < b1) isa.pack(X + tc0 * ldx, ldx, tcn, tpad, K, b0 * 32, b1 * 32, permute32, TB, XT);
      }
#pragma omp barrier
      float* wd = thread_bufs + size_t(omp_get_thread_num()) * (wd_size + yt_size);
      float* yt = wd + wd_size;
      const char* pf[kWdStride];  // prefetch list of one micro-kernel call (<= kc lines)
      int64_t tb, te;  // this thread's tiles
      split_rows(ntiles, omp_get_num_threads(), omp_get_thread_num(), 1, &tb, &te);
      for (int64_t tile = tb; tile < te; ++tile) {
        const int64_t n0 = tile * NC;
        const int64_t nrows = std::min(NC, N - n0);
        const int64_t nrpad = (nrows + R - 1) / R * R;
        for (int64_t k0 = 0; k0 < Kw; k0 += KC) {
          const int64_t kc = std::min(KC, Kw - k0);
          src.convert(n0, nrows, k0, kc, wd, kWdStride);
          for (int64_t r = nrows; r < nrpad; ++r)
            std::memset(wd + r * kWdStride, 0, sizeof(float) * kc);
          // The W bytes of the next tile step, prefetched a few rows per micro-kernel call.
          int64_t pn0 = n0, pk0 = k0 + KC, prow = 0, prows = 0;
          if (pk0 >= Kw) {
            pn0 = n0 + NC;
            pk0 = 0;
          }
          if (tile + (pn0 != n0 ? 1 : 0) < te) prows = std::min(NC, N - pn0);
          const int64_t pkc = std::min(KC, Kw - pk0);
          const int64_t ncalls = ((tpad + TB - 1) / TB) * (nrpad / R);
          const int64_t per_call = (prows + ncalls - 1) / std::max<int64_t>(ncalls, 1);
          for (int64_t t0 = 0; t0 < tpad; t0 += TB) {
            const int64_t w = std::min(TB, tpad - t0);
            GemmKernel kern = isa.kernel[w / TV];
            const float* xp = XT + t0 * Kw + k0 * w;
            float* yp = yt + t0 * ncpad;
            for (int64_t r0 = 0; r0 < nrpad; r0 += R) {
              int64_t npf = 0;
              if (prow < prows) {
                const int64_t cnt = std::min(per_call, prows - prow);
                npf = src.lines(pn0 + prow, cnt, pk0, pkc, pf, 0, kc);
                prow += cnt;
              }
              kern(xp, w, wd + r0 * kWdStride, kWdStride, kc, yp + r0 * w, w, k0 > 0, pf, npf);
            }
          }
        }
        for (int64_t t0 = 0; t0 < tcn; t0 += TB) {
          const int64_t w = std::min(TB, tpad - t0);
          const float* yp = yt + t0 * ncpad;
          for (int64_t t = t0; t < std::min(tcn, t0 + w); ++t) {
            float* y = Y + (tc0 + t) * ldy + n0;
            for (int64_t r = 0; r < nrows; ++r)
              y[r] = (K > 0 ? yp[r * w + (t - t0)] : 0.0f) +
                     (bias ? bf16_to_f32(bias[n0 + r]) : 0.0f);
          }
        }
      }
    }
  }
}

}  // namespace

// =============================== public entry points =========================================

// Up to this many tokens the dot-product (GEMV) path is used: it reads the weights once per pass
// of kSmallT* (4) tokens and decodes them in registers. Above, the GEMM path converts each weight
// tile to fp32 once per call and pads the tokens to a multiple of 16. Crossovers measured on Zen 5
// (one core, weights from DRAM): bf16 between T = 8 and 12 (the bf16 passes are memory bound),
// MXFP4 about T = 30 (decoding in registers costs little next to writing fp32 tiles); on bf16 dot
// products the MXFP4 GEMM is twice as fast and takes over above T = 8 (about 10 with the weights
// in cache).
#ifndef GPTOSS_GEMV_MAX_T_BF16
#define GPTOSS_GEMV_MAX_T_BF16 8
#endif
#ifndef GPTOSS_GEMV_MAX_T_MXFP4
#define GPTOSS_GEMV_MAX_T_MXFP4 28
#endif
constexpr int64_t kGemvMaxTBf16 = GPTOSS_GEMV_MAX_T_BF16;
constexpr int64_t kGemvMaxTMxfp4 = GPTOSS_GEMV_MAX_T_MXFP4;

void matmul_bf16(const float* X, int64_t T, int64_t K, int64_t ldx, const uint16_t* W, int64_t N,
                 int64_t ldw, const uint16_t* bias, float* Y, int64_t ldy, Precision precision) {
  if (T <= 0 || N <= 0) return;
  const Simd simd = active_simd();
  if (simd == Simd::Scalar) return bf16_scalar(X, T, K, ldx, W, N, ldw, bias, Y, ldy);
  const bool bf16dot = precision == Precision::Bf16 && bf16dot_active();
  if (T <= kGemvMaxTBf16 || K == 0) {
    if (bf16dot) {  // the same bf16 activations as the GEMM, on the exact fp32 dot products
      static thread_local FloatBuf xr_buf;
      float* xr = xr_buf.get(size_t(T) * size_t(K) + 1);
      round_rows_bf16(X, T, K, ldx, xr);
      X = xr;
      ldx = K;
    }
    const int nt = threads_for(N * K * 2, (N + 3) / 4);
#pragma omp parallel num_threads(nt)
    {
      int64_t n0, n1;
      split_rows(N, omp_get_num_threads(), omp_get_thread_num(), 4, &n0, &n1);
      if (n0 < n1) {
        if (simd == Simd::Avx512) bf16_rows_avx512(X, T, K, ldx, W, ldw, bias, Y, ldy, n0, n1);
        else bf16_rows_avx2(X, T, K, ldx, W, ldw, bias, Y, ldy, n0, n1);
      }
    }
    return;
  }
  WeightSource src;
  src.W = W;
  src.ldw = ldw;
  src.K = K;
  src.simd = simd;
  src.bf16dot = bf16dot;
  gemm(src.bf16dot ? kGemmBf16dot : simd == Simd::Avx512 ? kGemmAvx512 : kGemmAvx2, src, false, X, T, K,
       ldx, N, bias, Y, ldy);
}

void matmul_mxfp4(const float* X, int64_t T, int64_t K, int64_t ldx, const uint8_t* blocks,
                  const uint8_t* scales, int64_t N, const uint16_t* bias, float* Y, int64_t ldy,
                  Precision precision) {
  if (T <= 0 || N <= 0) return;
  const Simd simd = active_simd();
  if (simd == Simd::Scalar) return mxfp4_scalar(X, T, K, ldx, blocks, scales, N, bias, Y, ldy);
  const bool bf16dot = precision == Precision::Bf16 && bf16dot_active() && mxfp4_bf16_exact(scales, N * (K / 32));
  if (bf16dot && T <= kBf16dotGemvMaxT && K > 0) {  // one pass over the weights for every token
    static thread_local FloatBuf xw_buf;
    float* xw = xw_buf.get(size_t(T) * size_t(K / 2) + 1);
    pack_x_bf16_pairs(X, T, K, ldx, xw);
    const int nt = threads_for(N * (K / 32) * 17, (N + 3) / 4);
#pragma omp parallel num_threads(nt)
    {
      int64_t n0, n1;
      split_rows(N, omp_get_num_threads(), omp_get_thread_num(), 4, &n0, &n1);
      if (n0 < n1) mxfp4_rows_bf16dot(xw, T, K, blocks, scales, bias, Y, ldy, n0, n1);
    }
    return;
  }
  if (K == 0 || (!bf16dot && T <= kGemvMaxTMxfp4)) {
    static thread_local FloatBuf xp_buf;
    float* xp = xp_buf.get(size_t(T) * size_t(K) + 1);
    permute_x_mxfp4(X, T, K, ldx, xp);
    const int nt = threads_for(N * (K / 32) * 17, (N + 3) / 4);
#pragma omp parallel num_threads(nt)
    {
      int64_t n0, n1;
      split_rows(N, omp_get_num_threads(), omp_get_thread_num(), 4, &n0, &n1);
      if (n0 < n1) {
        if (simd == Simd::Avx512) mxfp4_rows_avx512(xp, T, K, blocks, scales, bias, Y, ldy, n0, n1);
        else mxfp4_rows_avx2(xp, T, K, blocks, scales, bias, Y, ldy, n0, n1);
      }
    }
    return;
  }
  WeightSource src;
  src.blocks = blocks;
  src.scales = scales;
  src.K = K;
  src.simd = simd;
  src.bf16dot = bf16dot;
  if (src.bf16dot) gemm(kGemmBf16dot, src, false, X, T, K, ldx, N, bias, Y, ldy);
  else gemm(simd == Simd::Avx512 ? kGemmAvx512 : kGemmAvx2, src, true, X, T, K, ldx, N, bias, Y, ldy);
}

}  // namespace gptoss::cpu
