// Internal helpers shared by the CPU matmul kernels: run-time SIMD selection, the function
// attributes that let one baseline-compiled binary carry AVX2 and AVX-512 code, the MXFP4
// tables, and the per-ISA kernel entry points (defined in matmul_bf16.cc / matmul_mxfp4.cc).
//
// Nothing here is compiled with -march flags: every SIMD function carries its own
// __attribute__((target(...))), and is only called after CPUID says the CPU has that ISA.
#pragma once

#include <cstdint>
#include <limits>

#define GPTOSS_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
#define GPTOSS_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define GPTOSS_TARGET_AVX512BF16 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma")))

namespace gptoss::cpu {

enum class Simd : int { Scalar = 0, Avx2 = 1, Avx512 = 2 };

// Widest level the CPU supports (CPUID + OS state, checked once), lowered by GPTOSS_SIMD if that
// is set. The environment is re-read on every call, so tests can switch paths by setting
// os.environ["GPTOSS_SIMD"] between calls. Unknown values are ignored; a value above what the CPU
// supports is clamped to what it supports.
Simd active_simd();
const char* simd_name(Simd s);
// Whether the bf16 dot-product GEMM can run: the CPU has AVX512_BF16 and active_simd() is AVX-512
// (GPTOSS_SIMD=avx2 or scalar turns it off too).
bool bf16dot_active();

// E2M1 values of the 16 nibbles (spec section 4).
inline constexpr float kMxfp4Table[16] = {+0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f,
                                         -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

// 2^(s - 127) as a float for every E8M0 scale byte s, built at compile time (s = 0 is the
// denormal 2^-127, exact; s = 255 gives +inf, as float(ldexp(1, 128)) does).
struct E8m0Table {
  float v[256];
};
constexpr E8m0Table make_e8m0_table() {
  E8m0Table t{};
  float p = 1.0f;
  for (int i = 0; i < 127; ++i) p *= 0.5f;
  for (int s = 0; s < 255; ++s) {
    t.v[s] = p;
    p = s < 254 ? p * 2.0f : p;
  }
  t.v[255] = std::numeric_limits<float>::infinity();
  return t;
}
alignas(64) inline constexpr E8m0Table kE8m0 = make_e8m0_table();

// ---- GEMM building blocks (T > small) -------------------------------------------------------
// The GEMM is computed as Y^T = Wd · X^T on tiles: X is packed once per call into XT[k][t]
// (tokens contiguous, padded with zeros to a multiple of the token block), a tile of W rows is
// converted into fp32 rows Wd[r][k] (once per tile, reused for all tokens), and a register-
// blocked micro-kernel computes YT[r][t] for `kRows` rows x (16|32) tokens. For MXFP4 the k order
// inside every 32-block is permuted to [even 16 | odd 16] in both XT and Wd, so dequantized
// weights need no interleaving.

// Micro-kernel (matmul.cc): YT[r][t] (+)= sum_k Wd[r][k] * XT[k][t] for a fixed per-ISA number
// of rows and of token vectors. acc=false starts from zero. While it runs, it prefetches (into
// L2) the npf cache lines pf[0..npf) (npf <= kc), one per k step: the weights of the next tile,
// spread thinly so that they never stall the FMAs.
using GemmKernel = void (*)(const float* xt, int64_t ldxt, const float* wd, int64_t ldwd,
                            int64_t kc, float* yt, int64_t ldyt, bool acc,
                            const char* const* pf, int64_t npf);
// Row stride of the converted W tile, a compile-time constant so that the micro-kernels' row
// addresses are constant displacements; also the largest K chunk (in words) of a tile.
inline constexpr int64_t kWdStride = 256;

// The bf16 dot-product GEMM (matmul_bf16dot.cc): the same driver, on words of two bf16 values
// of adjacent k (K in elements; k0, kc, kb0, kb1 in words; the tiles' words in natural pair
// order, so permute32 is ignored). A 12-row micro-kernel for 16 or 32 tokens.
extern const GemmKernel kBf16dotKernel12x1, kBf16dotKernel12x2;
void pack_xt_bf16dot(const float* X, int64_t ldx, int64_t tcn, int64_t tpad, int64_t K,
                     int64_t kb0, int64_t kb1, bool permute32, int64_t TB, float* XT);
void bf16dot_tile_bf16(const uint16_t* W, int64_t ldw, int64_t K, int64_t n0, int64_t nrows,
                       int64_t k0, int64_t kc, float* wd, int64_t ldwd);
void bf16dot_tile_mxfp4(const uint8_t* blocks, const uint8_t* scales, int64_t K, int64_t n0,
                        int64_t nrows, int64_t k0, int64_t kc, float* wd, int64_t ldwd);
// The MXFP4 GEMV on bf16 dot products for T <= kBf16dotGemvMaxT tokens, one pass over the
// weights per 8 of them (measured: the GEMM, which pads to 16 tokens, is faster above 12).
// xw holds X as bf16 pair words (pack_x_bf16_pairs: [T][ceil(K/2)], rounded to nearest even);
// rows [n0, n1) of Y. The scales must pass mxfp4_bf16_exact.
inline constexpr int kBf16dotGemvMaxT = 12;
void pack_x_bf16_pairs(const float* X, int64_t T, int64_t K, int64_t ldx, float* xw);
void mxfp4_rows_bf16dot(const float* xw, int64_t T, int64_t K, const uint8_t* blocks, const uint8_t* scales,
                        const uint16_t* bias, float* Y, int64_t ldy, int64_t n0, int64_t n1);
// out[t][k] (row stride K) = X[t][k] rounded to bf16 (nearest even), as fp32: the activations of
// the few-token products under Precision::Bf16, so that they compute what the bf16 GEMM does.
void round_rows_bf16(const float* X, int64_t T, int64_t K, int64_t ldx, float* out);
// Whether every value of an MXFP4 matrix with these scale bytes is exact in bf16 as
// vdpbf16ps reads it (no subnormals: every scale byte >= 2).
bool mxfp4_bf16_exact(const uint8_t* scales, int64_t n);

// Per-ISA GEMV-style kernels for small T (dot products along K, weights decoded once and applied
// to every token). They compute rows [n0, n1) of Y for all T tokens, in passes over the weights
// of up to kSmallT* tokens each (all the accumulators of a pass stay in registers).
inline constexpr int kSmallTAvx512 = 4;
inline constexpr int kSmallTAvx2 = 4;

void bf16_rows_avx512(const float* X, int64_t T, int64_t K, int64_t ldx, const uint16_t* W,
                      int64_t ldw, const uint16_t* bias, float* Y, int64_t ldy, int64_t n0,
                      int64_t n1);
void bf16_rows_avx2(const float* X, int64_t T, int64_t K, int64_t ldx, const uint16_t* W,
                    int64_t ldw, const uint16_t* bias, float* Y, int64_t ldy, int64_t n0,
                    int64_t n1);
// Converts rows [n0, n0+nrows) x columns [k0, k0+kc) of W to fp32 Wd[r][k - k0] (row stride ldwd).
void bf16_tile_avx512(const uint16_t* W, int64_t ldw, int64_t n0, int64_t nrows, int64_t k0,
                      int64_t kc, float* wd, int64_t ldwd);
void bf16_tile_avx2(const uint16_t* W, int64_t ldw, int64_t n0, int64_t nrows, int64_t k0,
                    int64_t kc, float* wd, int64_t ldwd);

// xp: X with k permuted to [even16|odd16] per 32-block, [T][K] contiguous (row stride K).
void mxfp4_rows_avx512(const float* xp, int64_t T, int64_t K, const uint8_t* blocks,
                       const uint8_t* scales, const uint16_t* bias, float* Y, int64_t ldy,
                       int64_t n0, int64_t n1);
void mxfp4_rows_avx2(const float* xp, int64_t T, int64_t K, const uint8_t* blocks,
                     const uint8_t* scales, const uint16_t* bias, float* Y, int64_t ldy,
                     int64_t n0, int64_t n1);
// Dequantizes rows [n0, n0+nrows) x columns [k0, k0+kc) (k0, kc multiples of 32) into Wd in the
// permuted [even16|odd16] order.
void mxfp4_tile_avx512(const uint8_t* blocks, const uint8_t* scales, int64_t K, int64_t n0,
                       int64_t nrows, int64_t k0, int64_t kc, float* wd, int64_t ldwd);
void mxfp4_tile_avx2(const uint8_t* blocks, const uint8_t* scales, int64_t K, int64_t n0,
                     int64_t nrows, int64_t k0, int64_t kc, float* wd, int64_t ldwd);

}  // namespace gptoss::cpu
