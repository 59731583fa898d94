// Register-level tensor-core products: mma.sync m16n8k16 (fp16 or bf16 operands, fp32
// accumulators, sm_80+), for kernels that build their operands in registers: the decode GEMVs
// (MXFP4 nibbles decoded straight into A fragments; bf16 weights loaded as A fragments).
// cuda-emu runs the same layout (emu/mma_sync.h). The fragments, with g = lane / 4 and q = lane % 4, the lower index of
// each pair in bits 0-15:
//   a[0] = A[g][2q, 2q+1]   a[1] = A[g+8][2q, 2q+1]   a[2] = A[g][2q+8, 2q+9]   a[3] = A[g+8][2q+8, 2q+9]
//   b[0] = B[2q, 2q+1][g]   b[1] = B[2q+8, 2q+9][g]
//   d[0], d[1] = D[g][2q, 2q+1]   d[2], d[3] = D[g+8][2q, 2q+1]
// A kernel may number k as it likes, as long as A and B agree.
#pragma once

#include "common.cuh"
#if !defined(__CUDACC__)
#include <mma_sync.h>  // cuda-emu
#endif

namespace gptoss::cuda {

// Two floats -> fp16x2 bits (lo in bits 0-15), rounded to nearest even.
__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
#if !defined(__CUDACC__)
  return gptoss_emu::float_to_half_bits(lo) | (gptoss_emu::float_to_half_bits(hi) << 16);
#else
  uint32_t r;
  asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
#endif
}

// (a, b) as two fp16x2 parts, hi + lo = (a, b) to ~22 significant bits: hi keeps a float's top
// 11 significand bits (truncated, so hi is exact in fp16 and a - hi in fp32), lo rounds the
// rest. Within fp16's normal range; below it hi is rounded (error < 2^-25).
__device__ __forceinline__ void split_half2(float a, float b, uint32_t& hi, uint32_t& lo) {
  const float ah = __uint_as_float(__float_as_uint(a) & 0xffffe000u);
  const float bh = __uint_as_float(__float_as_uint(b) & 0xffffe000u);
  hi = pack_half2(ah, bh);
  lo = pack_half2(a - ah, b - bh);
}

// Two floats -> bf16x2 bits (lo in bits 0-15), rounded to nearest even.
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
#if !defined(__CUDACC__)
  return uint32_t(__float2bfloat16_rn(lo).x) | (uint32_t(__float2bfloat16_rn(hi).x) << 16);
#else
  uint32_t r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
#endif
}

// (a, b) as three bf16x2 parts with hi + mid + lo = (a, b) exactly: hi and mid keep the top 8
// significand bits of what is left (truncated, exact), lo the last 8 (so its rounding is exact
// too). Three bf16 MMAs on them give fp32 products.
__device__ __forceinline__ void split3_bf16x2(float a, float b, uint32_t& hi, uint32_t& mid, uint32_t& lo) {
  const uint32_t ua = __float_as_uint(a) & 0xffff0000u, ub = __float_as_uint(b) & 0xffff0000u;
  const float ra = a - __uint_as_float(ua), rb = b - __uint_as_float(ub);
  const uint32_t va = __float_as_uint(ra) & 0xffff0000u, vb = __float_as_uint(rb) & 0xffff0000u;
  hi = (ua >> 16) | ub;
  mid = (va >> 16) | vb;
  lo = pack_bf16x2(ra - __uint_as_float(va), rb - __uint_as_float(vb));
}

// d += A * B over one warp (every lane calls it, converged); BF16: bf16 operands, else fp16.
template <bool BF16>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if !defined(__CUDACC__)
  gptoss_emu::mma_m16n8k16<BF16>(d, a, b);
#else
#define GPTOSS_MMA_16816(T)                                                                                      \
  asm("mma.sync.aligned.m16n8k16.row.col.f32." T "." T ".f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, " \
      "{%0, %1, %2, %3};"                                                                                      \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])                                                          \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]))
  if constexpr (BF16) GPTOSS_MMA_16816("bf16");
  else GPTOSS_MMA_16816("f16");
#undef GPTOSS_MMA_16816
#endif
}
__device__ __forceinline__ void mma_f16_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  mma_16816<false>(d, a, b);
}
__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  mma_16816<true>(d, a, b);
}

// MXFP4 word -> fp16 A operands: 32-bit word w of a block holds elements 8w .. 8w+7 (nibble i =
// element 8w+i: low nibble first, as the checkpoint stores them). h[i] = (element 8w+i,
// element 8w+i+4) * 2^-14: an E2M1 nibble s e1 e0 m moved to fp16's sign, exponent low bits and
// mantissa top is exactly its value times 2^-14 (0.5 becomes a subnormal), so two shifts and two
// masks make a pair; the caller multiplies the 2^14 back in with the block scale.
__device__ __forceinline__ void e2m1x8_to_half2(uint32_t v, uint32_t (&h)[4]) {
  h[0] = ((v << 9) & 0x0E000E00u) | ((v << 12) & 0x80008000u);
  h[1] = ((v << 5) & 0x0E000E00u) | ((v << 8) & 0x80008000u);
  h[2] = ((v << 1) & 0x0E000E00u) | ((v << 4) & 0x80008000u);
  h[3] = ((v >> 3) & 0x0E000E00u) | (v & 0x80008000u);
}

// Four 8x8 matrices of 16-bit elements from shared memory, for mma operands: lanes 8j .. 8j+7
// give the addresses of matrix j's 8 rows (16 bytes each, 16-byte aligned); lane l gets row l / 4,
// elements 2 (l % 4) and 2 (l % 4) + 1 of matrix j in r[j]. Every lane calls it, converged.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
#if !defined(__CUDACC__)
  gptoss_emu::ldmatrix_x4(r, row);
#else
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(row));
  // volatile, not a memory clobber (as CUTLASS does): the barriers order it against the stores.
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
#endif
}

// bf16x2 a * b, rounded to nearest even (an fma with -0, so a zero product keeps its sign).
__device__ __forceinline__ uint32_t mul_bf16x2(uint32_t a, uint32_t b) {
#if !defined(__CUDACC__)
  auto f = [](uint32_t v, int half) { return __uint_as_float(((v >> (16 * half)) & 0xffffu) << 16); };
  return pack_bf16x2(f(a, 0) * f(b, 0), f(a, 1) * f(b, 1));  // bf16 products are exact in fp32
#else
  uint32_t r;
  asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(0x80008000u));
  return r;
#endif
}

// MXFP4 word -> bf16 pairs times 2^(s-127): out[j] = (element 8w+2j, 8w+2j+1), byte j of v (low
// nibble first). For 2 <= s every product is a normal bf16, so this is exact. Two byte permutes
// look each pair's magnitudes up in 8-entry tables (a bf16's low bytes, then its high bytes:
// the magnitude code c selects a byte), one multiply moves the two signs to bits 15 and 31,
// and one bf16x2 multiply applies the scale (scale2: the scale's bf16 in both halves).
// ~10 instructions per pair where converting through float takes ~25.
__device__ __forceinline__ void e2m1x8_to_bf16x2(uint32_t v, uint32_t scale2, uint32_t (&out)[4]) {
  // bf16 of 0, .5, 1, 1.5, 2, 3, 4, 6: low bytes 00 00 80 c0 00 40 80 c0, high 00 3f 3f 3f 40 40 40 40
  constexpr uint32_t kLo0 = 0xc0800000u, kLo1 = 0xc0804000u, kHi0 = 0x3f3f3f00u, kHi1 = 0x40404040u;
  const uint32_t mag = v & 0x77777777u, sgn = v & 0x88888888u;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const uint32_t b = __byte_perm(mag, 0u, 0x4440u | uint32_t(j));  // c0 | c1 << 4
    // Selector nibbles 0 and 2 (low bytes) or 1 and 3 (high bytes) are c0 and c1; the others
    // pick bytes the masks below drop.
    const uint32_t lo = __byte_perm(kLo0, kLo1, b * 0x11u), hi = __byte_perm(kHi0, kHi1, b * 0x110u);
    const uint32_t s = __byte_perm(sgn, 0u, 0x4440u | uint32_t(j)) * 0x01001000u;  // bits 3, 7 -> 15, 31
    out[j] = mul_bf16x2((lo & 0x00ff00ffu) | (hi & 0xff00ff00u) | (s & 0x80008000u), scale2);
  }
}

}  // namespace gptoss::cuda
