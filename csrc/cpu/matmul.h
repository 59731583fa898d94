// Dense and MXFP4 matrix products on the CPU: Y[t, n] = sum_k X[t, k] * W[n, k] + bias[n].
//
// W is row-major [N, K] ("nn.Linear" orientation: one row per output), read in place from the
// checkpoint (bf16) or from its packed MXFP4 blocks; it is never converted to a float copy.
// Activations and accumulation are fp32. Each call runs multi-threaded (OpenMP) over N and
// picks the widest SIMD path the CPU has (AVX-512, AVX2+FMA, or scalar) at run time.
#pragma once

#include <cstdint>

namespace gptoss::cpu {

// Arithmetic of the larger products (the GEMM path: more than a few tokens). Fp32: exact
// products of fp32 activations, fp32 accumulation. Bf16: activations rounded to bf16 (nearest
// even), bf16 dot products (AVX512_BF16 vdpbf16ps, twice the multiply-adds per instruction),
// fp32 accumulation; the weights are exact either way. Where the CPU lacks AVX512_BF16, or an
// MXFP4 matrix has values below bf16's normal range, Bf16 computes as Fp32. Products of a few
// tokens (decode: memory-bound) round the activations to bf16 the same way and multiply them on
// the fp32 dot-product path, so that a row's result does not depend on the step's size beyond
// the order of its fp32 sums, as with Fp32.
enum class Precision : int { Fp32 = 0, Bf16 = 1 };

// X: [T, K] fp32, row stride ldx. W: bf16 [N, K], row stride ldw (elements).
// bias: bf16 [N] or nullptr. Y: [T, N] fp32, row stride ldy.
void matmul_bf16(const float* X, int64_t T, int64_t K, int64_t ldx,
                 const uint16_t* W, int64_t N, int64_t ldw,
                 const uint16_t* bias, float* Y, int64_t ldy,
                 Precision precision = Precision::Fp32);

// MXFP4 weights for one matrix: blocks [N, K/32, 16] bytes, scales [N, K/32] bytes (E8M0,
// bias 127); K must be a multiple of 32. Element k of row n is
//   table[nibble] * 2^(scales[n, k/32] - 127), nibble = low half of byte (k%32)/2 for even k,
//   high half for odd k; table = {+0,.5,1,1.5,2,3,4,6,-0,-.5,-1,-1.5,-2,-3,-4,-6}.
// bias: bf16 [N] or nullptr.
void matmul_mxfp4(const float* X, int64_t T, int64_t K, int64_t ldx,
                  const uint8_t* blocks, const uint8_t* scales, int64_t N,
                  const uint16_t* bias, float* Y, int64_t ldy,
                  Precision precision = Precision::Fp32);

// Plain scalar versions (double accumulation), the oracle for the fast paths.
void matmul_bf16_ref(const float* X, int64_t T, int64_t K, int64_t ldx,
                     const uint16_t* W, int64_t N, int64_t ldw,
                     const uint16_t* bias, float* Y, int64_t ldy);
void matmul_mxfp4_ref(const float* X, int64_t T, int64_t K, int64_t ldx,
                      const uint8_t* blocks, const uint8_t* scales, int64_t N,
                      const uint16_t* bias, float* Y, int64_t ldy);

// "avx512", "avx2", or "scalar": the path the kernels above take on this CPU.
// GPTOSS_SIMD=avx2|scalar in the environment forces a narrower path (for tests and benchmarks).
const char* simd_level();
// Whether Precision::Bf16 runs on bf16 dot products here (AVX512_BF16, and not lowered by
// GPTOSS_SIMD).
bool bf16_dot_available();

}  // namespace gptoss::cpu
