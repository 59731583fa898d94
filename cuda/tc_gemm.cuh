// Tensor-core GEMM shared by the dense projections (bf16 weights) and the MoE experts (MXFP4
// weights dequantized to bf16 in shared memory): Y[m, n] = sum_k X[row(m), k] * W[n, k].
//
// Tiles of 64 (rows) x 64 (outputs) x 32 (k) per block of 4 warps (2 x 2 warps of 32 x 32,
// wmma 16x16x16 bf16 with fp32 accumulation, sm_80+). Activations are fp32: each is split as
// x = hi + lo with hi = bf16(x), lo = bf16(x - hi), and both halves are multiplied by the
// (exactly bf16) weights, so the product keeps ~16 mantissa bits of x and the result matches
// the fp32 CPU engine to ~1e-5 relative (plain bf16 activations would give ~4e-3 and flip
// near-tied router decisions). The epilogue goes through shared memory (fused bias, residual
// add, SwiGLU, routing-weight scaling).
#pragma once

#include <cuda_bf16.h>
#include <mma.h>

#include "common.cuh"

namespace gptoss::cuda {

constexpr int kBM = 64, kBN = 64, kBK = 32, kLDS = kBK + 8, kLDC = kBN + 4;
constexpr int kTcThreads = 128;

enum TcB : int { TCB_BF16 = 0, TCB_MXFP4 = 1 };
enum TcEpi : int { TCE_STORE = 0, TCE_ADD = 1, TCE_SWIGLU = 2, TCE_MOE_OUT = 3 };

struct TcArgs {
  const float* X = nullptr;
  int ldx = 0;
  const int32_t* rows = nullptr;  // dense: optional row gather
  int M = 0, K = 0, N = 0;
  const uint16_t* W = nullptr;    // bf16 [N, ldw]
  int ldw = 0;
  const uint8_t* blocks = nullptr;  // MXFP4 [E, N, K/32, 16]
  const uint8_t* scales = nullptr;  // [E, N, K/32]
  const float* bias = nullptr;      // [N] (dense) or [E, N]
  float* Y = nullptr;
  int ldy = 0;
  // MoE tiles (TCB_MXFP4)
  const int32_t* sorted = nullptr;
  const int32_t* tile_e = nullptr;
  const int32_t* tile_start = nullptr;
  const int32_t* tile_count = nullptr;
  const int32_t* n_tiles = nullptr;
  int topk = 1;
  const float* rw = nullptr;
  float alpha = 0.f, limit = 0.f;
  bool vec = false;  // 16-byte aligned rows: vector loads for X and W
  bool split = true;  // activations as bf16 hi + lo (two MMAs); false: bf16 only
};

__device__ __forceinline__ float swiglu1(float gate, float lin, float alpha, float limit) {
  const float g = fminf(gate, limit);
  const float l = fminf(fmaxf(lin, -limit), limit);
  return g / (1.0f + expf(-alpha * g)) * (l + 1.0f);
}

template <int BMODE, int EPI>
__global__ void __launch_bounds__(kTcThreads) tc_gemm_kernel(TcArgs a) {
  using namespace nvcuda;
  __shared__ __align__(128) unsigned char smem_raw[kBM * kLDC * sizeof(float)];
  __nv_bfloat16* As_hi = reinterpret_cast<__nv_bfloat16*>(smem_raw);
  __nv_bfloat16* As_lo = As_hi + kBM * kLDS;
  __nv_bfloat16* Bs = As_lo + kBM * kLDS;
  float* Cs = reinterpret_cast<float*>(smem_raw);
  __shared__ int32_t s_row[kBM];  // source row of X for each tile row (-1: none)

  const int tid = threadIdx.x, warp = tid >> 5;
  const int n0 = blockIdx.x * kBN;
  int e = 0, m0 = 0, mcount = 0;
  if (BMODE == TCB_MXFP4) {
    const int tile = blockIdx.y;
    if (tile >= *a.n_tiles) return;
    e = a.tile_e[tile];
    m0 = a.tile_start[tile];
    mcount = a.tile_count[tile];
  } else {
    m0 = blockIdx.y * kBM;
    mcount = min(kBM, a.M - m0);
  }
  if (tid < kBM) {
    int r = -1;
    if (tid < mcount) {
      const int pos = m0 + tid;
      if (BMODE == TCB_MXFP4) r = (EPI == TCE_SWIGLU) ? a.sorted[pos] / a.topk : pos;
      else r = a.rows ? a.rows[pos] : pos;
    }
    s_row[tid] = r;
  }
  __syncthreads();

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);

  const int wm = warp >> 1, wn = warp & 1;
  const int lr = tid >> 1, lh = tid & 1;  // loader: tile row (of A and B), which 16 of the 32 k
  const int xrow = s_row[lr];
  const int64_t nb = a.K / 32;
  const int wrow = n0 + lr;

  for (int k0 = 0; k0 < a.K; k0 += kBK) {
    // ---- A: 16 fp32 -> hi/lo bf16
    {
      float v[16];
      const int kb = k0 + lh * 16;
      if (xrow >= 0) {
        const float* src = a.X + int64_t(xrow) * a.ldx + kb;
        if (a.vec && kb + 16 <= a.K) {
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const float4 f = *reinterpret_cast<const float4*>(src + 4 * i);
            v[4 * i] = f.x; v[4 * i + 1] = f.y; v[4 * i + 2] = f.z; v[4 * i + 3] = f.w;
          }
        } else {
#pragma unroll
          for (int i = 0; i < 16; ++i) v[i] = (kb + i < a.K) ? src[i] : 0.f;
        }
      } else {
#pragma unroll
        for (int i = 0; i < 16; ++i) v[i] = 0.f;
      }
#pragma unroll
      for (int i = 0; i < 16; ++i) {
        const __nv_bfloat16 hi = __float2bfloat16_rn(v[i]);
        As_hi[lr * kLDS + lh * 16 + i] = hi;
        if (a.split) As_lo[lr * kLDS + lh * 16 + i] = __float2bfloat16_rn(v[i] - __bfloat162float(hi));
      }
    }
    // ---- B: 16 weights of row wrow
    {
      uint16_t* dst = reinterpret_cast<uint16_t*>(Bs) + lr * kLDS + lh * 16;
      if (BMODE == TCB_MXFP4) {
        if (wrow < a.N) {
          const int64_t r = int64_t(e) * a.N + wrow;
          const int64_t kblk = k0 / 32;
          const uint2 q = *reinterpret_cast<const uint2*>(a.blocks + (r * nb + kblk) * 16 + lh * 8);
          const float sc = e8m0_to_float(a.scales[r * nb + kblk]);
#pragma unroll
          for (int j = 0; j < 8; ++j) {
            const uint32_t byte = ((j < 4 ? q.x : q.y) >> (8 * (j & 3))) & 0xffu;
            dst[2 * j] = float_to_bf16_bits(e2m1_to_float(byte & 15u) * sc);
            dst[2 * j + 1] = float_to_bf16_bits(e2m1_to_float(byte >> 4) * sc);
          }
        } else {
#pragma unroll
          for (int j = 0; j < 16; ++j) dst[j] = 0;
        }
      } else {
        const int kb = k0 + lh * 16;
        if (wrow < a.N && a.vec && kb + 16 <= a.K) {
          const uint4* src = reinterpret_cast<const uint4*>(a.W + int64_t(wrow) * a.ldw + kb);
          reinterpret_cast<uint4*>(dst)[0] = src[0];
          reinterpret_cast<uint4*>(dst)[1] = src[1];
        } else {
#pragma unroll
          for (int j = 0; j < 16; ++j)
            dst[j] = (wrow < a.N && kb + j < a.K) ? a.W[int64_t(wrow) * a.ldw + kb + j] : uint16_t(0);
        }
      }
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b[2];
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(b[j], Bs + (wn * 32 + j * 16) * kLDS + kk, kLDS);
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> ah, al;
        wmma::load_matrix_sync(ah, As_hi + (wm * 32 + i * 16) * kLDS + kk, kLDS);
        if (a.split) {
          wmma::load_matrix_sync(al, As_lo + (wm * 32 + i * 16) * kLDS + kk, kLDS);
#pragma unroll
          for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], al, b[j], acc[i][j]);
        }
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], ah, b[j], acc[i][j]);
      }
    }
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(Cs + (wm * 32 + i * 16) * kLDC + wn * 32 + j * 16, acc[i][j], kLDC, wmma::mem_row_major);
  __syncthreads();

  if (EPI == TCE_SWIGLU) {
    for (int idx = tid; idx < kBM * (kBN / 2); idx += kTcThreads) {
      const int i = idx / (kBN / 2), jp = idx % (kBN / 2);
      const int n = n0 + 2 * jp;
      if (i >= mcount || n >= a.N) continue;  // N is even (2 * intermediate)
      const float* b = a.bias + int64_t(e) * a.N;
      const float gate = Cs[i * kLDC + 2 * jp] + b[n];
      const float lin = Cs[i * kLDC + 2 * jp + 1] + b[n + 1];
      a.Y[int64_t(m0 + i) * a.ldy + n / 2] = swiglu1(gate, lin, a.alpha, a.limit);
    }
  } else {
    for (int idx = tid; idx < kBM * kBN; idx += kTcThreads) {
      const int i = idx / kBN, j = idx % kBN;
      const int n = n0 + j;
      if (i >= mcount || n >= a.N) continue;
      const float v = Cs[i * kLDC + j];
      if (EPI == TCE_MOE_OUT) {
        const int pair = a.sorted[m0 + i];
        a.Y[int64_t(pair) * a.ldy + n] = a.rw[pair] * (v + a.bias[int64_t(e) * a.N + n]);
      } else {
        const float out = v + (a.bias ? a.bias[n] : 0.f);
        float* y = a.Y + int64_t(m0 + i) * a.ldy + n;
        if (EPI == TCE_ADD) *y += out;
        else *y = out;
      }
    }
  }
}

}  // namespace gptoss::cuda
