// cuda-emu: the register-level tensor-core instruction cuda/ uses (mma.sync.m16n8k16 with fp16
// or bf16 operands and fp32 accumulators, sm_80+) and fp16 conversions, on the host (see
// cuda_runtime.h). The fragments follow the PTX ISA's register layout exactly: each lane's
// registers are gathered from the whole warp (a warp barrier, as the instruction is), so a
// kernel that puts an element in the wrong lane or register gets a wrong product here too.
// Products are exact. By default they are summed in double and added to the fp32 accumulator
// (one rounding). In the hardware-like mode (emu_set_mma_mode("hardware")) an instruction works
// as tensor cores were measured to (Fasi et al., "Numerical behavior of NVIDIA tensor cores",
// 2021: V100/T4/A100): the 16 products and the accumulator of an output are aligned to the
// largest exponent among them, every addend is truncated to 24 significant bits of that
// alignment (no guard bits), the sum is exact and truncated to fp32 again (towards zero). So a
// long chain of MMAs on one accumulator loses up to an ulp of it per instruction, all one way.
// flush_a / flush_b: fp16 subnormal inputs of that operand read as zero (a GPU that flushes them).
#pragma once

#include <stdint.h>

#include <algorithm>
#include <climits>
#include <cmath>

#include "cuda_bf16.h"
#include "cuda_runtime.h"

namespace gptoss_emu {

enum MmaMode : int { kMmaExact = 0, kMmaHardware = 1, kMmaFlushA = 2, kMmaFlushB = 4 };
extern int g_mma_mode;  // MmaMode bits (emu.cc: GPTOSS_EMU_MMA, emu_set_mma_mode)

// IEEE binary16 bits -> float (exact; subnormals, infinities and NaN kept).
inline float half_bits_to_float(uint32_t h) {
  const uint32_t e = (h >> 10) & 31u, m = h & 1023u;
  float v;
  if (e == 0) v = std::ldexp(float(m), -24);
  else if (e == 31) v = m ? NAN : INFINITY;
  else v = std::ldexp(float(m | 1024u), int(e) - 25);
  return (h & 0x8000u) ? -v : v;
}

// float -> binary16 bits, round to nearest even (overflow to infinity, subnormals kept).
inline uint32_t float_to_half_bits(float f) {
  const uint32_t u = __float_as_uint(f), sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7e00u;   // NaN
  if (a >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520 rounds to infinity
  if (a >= 0x38800000u) {                       // a normal half (>= 2^-14)
    const uint32_t r = a - 0x38000000u;         // exponent rebiased from 127 to 15
    return sign | ((r + 0xfffu + ((r >> 13) & 1u)) >> 13);
  }
  return sign | uint32_t(std::nearbyint(__uint_as_float(a) * 16777216.f));  // units of 2^-24
}

inline float bf16_bits_to_float_emu(uint32_t h) { return __uint_as_float(h << 16); }

// c + t[0] + ... + t[n-1] as the hardware-like mode does it (above); t exact products.
inline float mma_sum_hardware(float c, const double* t, int n) {
  int emax = INT32_MIN;
  bool finite = std::isfinite(c);
  if (c != 0.f) emax = std::ilogb(c);
  for (int i = 0; i < n; ++i) {
    finite = finite && std::isfinite(t[i]);
    if (t[i] != 0.0) emax = std::max(emax, std::ilogb(t[i]));
  }
  if (!finite || emax == INT32_MIN) {  // inf / NaN, or nothing but zeros: as the exact sum
    double s = 0.0;
    for (int i = 0; i < n; ++i) s += t[i];
    return float(double(c) + s);
  }
  const int unit = emax - 23;  // the lowest bit of a 24-bit significand aligned to the largest
  int64_t sum = int64_t(std::trunc(std::ldexp(double(c), -unit)));
  for (int i = 0; i < n; ++i) sum += int64_t(std::trunc(std::ldexp(t[i], -unit)));
  if (sum == 0) return 0.f;
  uint64_t mag = sum < 0 ? uint64_t(-sum) : uint64_t(sum);
  int shift = 0;
  while ((mag >> shift) >= (uint64_t(1) << 24)) ++shift;  // a carry past 24 bits: truncated again
  mag >>= shift;
  const float r = std::ldexp(float(mag), unit + shift);
  return sum < 0 ? -r : r;
}

// d += A * B: A 16x16 (row major), B 16x8 (column major), fp16 (BF16: bf16); with g = lane / 4,
// q = lane % 4:
//   a[0] = A[g][2q, 2q+1]   a[1] = A[g+8][2q, 2q+1]   a[2] = A[g][2q+8, 2q+9]   a[3] = A[g+8][2q+8, 2q+9]
//   b[0] = B[2q, 2q+1][g]   b[1] = B[2q+8, 2q+9][g]
//   d[0], d[1] = D[g][2q, 2q+1]   d[2], d[3] = D[g+8][2q, 2q+1]
// (the lower index of each pair in bits 0-15).
template <bool BF16>
inline void mma_m16n8k16(float* d, const uint32_t* a, const uint32_t* b) {
  const uint64_t mine[3] = {uint64_t(a[0]) | (uint64_t(a[1]) << 32), uint64_t(a[2]) | (uint64_t(a[3]) << 32),
                            uint64_t(b[0]) | (uint64_t(b[1]) << 32)};
  uint64_t all[96], a01[32], a23[32], bb[32];
  warp_gather_n(mine, 3, all);  // one warp barrier, as the instruction is
  for (int i = 0; i < 32; ++i) {
    a01[i] = all[3 * i];
    a23[i] = all[3 * i + 1];
    bb[i] = all[3 * i + 2];
  }
  const int mode = g_mma_mode;
  auto half_of = [](uint64_t v, int reg, int k, bool flush) {
    const uint32_t h = uint32_t(v >> (32 * reg + 16 * (k & 1))) & 0xffffu;
    if (BF16) return bf16_bits_to_float_emu(h);
    return flush && (h & 0x7c00u) == 0 ? 0.f : half_bits_to_float(h);  // exponent 0: zero or subnormal
  };
  const int lane = lane_id(), g = lane >> 2, q = lane & 3;
  for (int i = 0; i < 4; ++i) {
    const int r = g + 8 * (i >> 1), n = 2 * q + (i & 1);
    double t[16];
    for (int k = 0; k < 16; ++k) {
      const int al = (r % 8) * 4 + (k % 8) / 2, areg = r / 8 + 2 * (k / 8);
      const float av = half_of(areg < 2 ? a01[al] : a23[al], areg & 1, k, mode & kMmaFlushA);
      const float bv = half_of(bb[n * 4 + (k % 8) / 2], k / 8, k, mode & kMmaFlushB);
      t[k] = double(av) * double(bv);
    }
    if (mode & kMmaHardware) {
      d[i] = mma_sum_hardware(d[i], t, 16);
    } else {
      double s = 0.0;
      for (int k = 0; k < 16; ++k) s += t[k];
      d[i] = float(double(d[i]) + s);
    }
  }
}

// ldmatrix.sync.aligned.m8n8.x4.shared.b16: lanes 8j .. 8j+7 give the row addresses of matrix j
// (8 rows of 16 bytes in shared memory); lane l receives row l / 4, bytes 4 (l % 4) .. +3 of
// each matrix j in r[j].
inline void ldmatrix_x4(uint32_t* r, const void* row) {
  if (reinterpret_cast<uintptr_t>(row) % 16 != 0) device_fault("ldmatrix: a row address is not 16-byte aligned");
  if (is_device_range(row, 16)) device_fault("ldmatrix: a row address is not shared memory");
  uint64_t all[32];
  warp_gather(uint64_t(reinterpret_cast<uintptr_t>(row)), all);
  const int lane = lane_id();
  for (int j = 0; j < 4; ++j)
    memcpy(&r[j], reinterpret_cast<const char*>(uintptr_t(all[8 * j + lane / 4])) + 4 * (lane % 4), 4);
}

}  // namespace gptoss_emu
