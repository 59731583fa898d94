// Dense bf16 projections (QKV, attention out, unembedding): a warp-per-output-row GEMV for a
// few rows (decode; 16-byte weight loads, fp32 accumulation, weights read once for up to 8
// rows) and the tensor-core GEMM of tc_gemm.cuh above that.
#include "common.cuh"
#include "kernels.cuh"
#include "tc_gemm.cuh"

namespace gptoss::cuda {
namespace {

constexpr int kGemvWarps = 8;

__device__ __forceinline__ void unpack_bf16x8(const uint4 u, float* w) {
  w[0] = __uint_as_float(u.x << 16); w[1] = __uint_as_float(u.x & 0xffff0000u);
  w[2] = __uint_as_float(u.y << 16); w[3] = __uint_as_float(u.y & 0xffff0000u);
  w[4] = __uint_as_float(u.z << 16); w[5] = __uint_as_float(u.z & 0xffff0000u);
  w[6] = __uint_as_float(u.w << 16); w[7] = __uint_as_float(u.w & 0xffff0000u);
}

template <int TT, int EPI>
__global__ void __launch_bounds__(kGemvWarps * 32) gemv_bf16_kernel(const float* X, int ldx, const int32_t* rows, int M,
                                                                     int K, const uint16_t* W, int ldw, int N,
                                                                     const float* bias, float* Y, int ldy, bool vec) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int n = blockIdx.x * kGemvWarps + warp;
  if (n >= N) return;
  const int m0 = blockIdx.y * TT;
  const int mm = min(TT, M - m0);
  const float* xr[TT];
#pragma unroll
  for (int t = 0; t < TT; ++t) {
    const int m = m0 + min(t, mm - 1);
    xr[t] = X + int64_t(rows ? rows[m] : m) * ldx;
  }
  float acc[TT];
#pragma unroll
  for (int t = 0; t < TT; ++t) acc[t] = 0.f;
  const uint16_t* wr = W + int64_t(n) * ldw;
  const int K8 = vec ? K / 8 : 0;
#pragma unroll 4
  for (int k8 = lane; k8 < K8; k8 += 32) {
    float w[8];
    unpack_bf16x8(__ldg(reinterpret_cast<const uint4*>(wr) + k8), w);
#pragma unroll
    for (int t = 0; t < TT; ++t) {
      if (t < mm) {
        const float4 a = *reinterpret_cast<const float4*>(xr[t] + 8 * k8);
        const float4 b = *reinterpret_cast<const float4*>(xr[t] + 8 * k8 + 4);
        acc[t] += a.x * w[0] + a.y * w[1] + a.z * w[2] + a.w * w[3] + b.x * w[4] + b.y * w[5] + b.z * w[6] +
                  b.w * w[7];
      }
    }
  }
  for (int k = K8 * 8 + lane; k < K; k += 32) {
    const float w = bf16_bits_to_float(wr[k]);
#pragma unroll
    for (int t = 0; t < TT; ++t)
      if (t < mm) acc[t] += xr[t][k] * w;
  }
  const float b = bias ? bias[n] : 0.f;
#pragma unroll
  for (int t = 0; t < TT; ++t) {
    const float s = warp_sum(acc[t]);
    if (lane == 0 && t < mm) {
      float* y = Y + int64_t(m0 + t) * ldy + n;
      if (EPI == EPI_ADD) *y += s + b;
      else *y = s + b;
    }
  }
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

template <int TT>
void launch_gemv(const float* X, int ldx, const int32_t* rows, int M, int K, const uint16_t* W, int ldw, int N,
                 const float* bias, float* Y, int ldy, int epi, bool vec, cudaStream_t st) {
  dim3 grid(unsigned(cdiv(N, kGemvWarps)), unsigned(cdiv(M, TT)));
  if (epi == EPI_ADD)
    gemv_bf16_kernel<TT, EPI_ADD><<<grid, kGemvWarps * 32, 0, st>>>(X, ldx, rows, M, K, W, ldw, N, bias, Y, ldy, vec);
  else
    gemv_bf16_kernel<TT, EPI_STORE><<<grid, kGemvWarps * 32, 0, st>>>(X, ldx, rows, M, K, W, ldw, N, bias, Y, ldy, vec);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

void dense(const float* X, int ldx, const int32_t* rows, int M, int K, const uint16_t* W, int ldw, int N,
           const float* bias, float* Y, int ldy, int epi, cudaStream_t st, int path, bool split) {
  if (M <= 0 || N <= 0) return;
  const bool vec = K % 8 == 0 && ldw % 8 == 0 && ldx % 4 == 0 && aligned16(X) && aligned16(W);
  if (path == 0) path = M <= 8 ? 1 : 2;
  if (path == 1) {
    if (M == 1) launch_gemv<1>(X, ldx, rows, M, K, W, ldw, N, bias, Y, ldy, epi, vec, st);
    else launch_gemv<8>(X, ldx, rows, M, K, W, ldw, N, bias, Y, ldy, epi, vec, st);
    return;
  }
  TcArgs a;
  a.X = X; a.ldx = ldx; a.rows = rows; a.M = M; a.K = K; a.N = N;
  a.W = W; a.ldw = ldw; a.bias = bias; a.Y = Y; a.ldy = ldy; a.vec = vec; a.split = split;
  dim3 grid(unsigned(cdiv(N, kBN)), unsigned(cdiv(M, kBM)));
  if (epi == EPI_ADD) tc_gemm_kernel<TCB_BF16, TCE_ADD><<<grid, kTcThreads, 0, st>>>(a);
  else tc_gemm_kernel<TCB_BF16, TCE_STORE><<<grid, kTcThreads, 0, st>>>(a);
  CUDA_CHECK_LAUNCH();
}

}  // namespace gptoss::cuda
