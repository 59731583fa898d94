// Dense bf16 projections (QKV, attention out, unembedding): a warp-per-output-row GEMV for a
// few rows (decode; 16-byte weight loads, fp32 accumulation, weights read once for up to 8
// rows) and the tensor-core GEMM of tc_gemm.cuh above that. The tensor-core instances of the
// MoE experts are launched from here too (moe_gemm), so each is compiled once.
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
  grid_dependency_wait();
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
    launch_kernel(gemv_bf16_kernel<TT, EPI_ADD>, grid, kGemvWarps * 32, 0, st, X, ldx, rows, M, K, W, ldw, N, bias,
                  Y, ldy, vec);
  else
    launch_kernel(gemv_bf16_kernel<TT, EPI_STORE>, grid, kGemvWarps * 32, 0, st, X, ldx, rows, M, K, W, ldw, N, bias,
                  Y, ldy, vec);
}

// Launches one tensor-core instance: grid (N / BN, row tiles).
template <class C, int BMODE, int EPI>
void tc_launch(const TcArgs& a, unsigned row_tiles, cudaStream_t st) {
  gemm_prepare();
  dim3 grid(unsigned(cdiv(a.N, C::BN)), row_tiles);
  launch_kernel(tc_gemm_kernel<C, BMODE, EPI>, grid, C::kThreads, C::smem(BMODE), st, a);
}

template <int BMODE, int EPI>
void prepare_instances() {
  auto raise = [](auto* fn, size_t smem) {
    if (smem > 48 * 1024) CUDA_CHECK(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  };
  raise(tc_gemm_kernel<Tile32x128, BMODE, EPI>, Tile32x128::smem(BMODE));
  raise(tc_gemm_kernel<Tile64x64, BMODE, EPI>, Tile64x64::smem(BMODE));
  raise(tc_gemm_kernel<Tile64x128, BMODE, EPI>, Tile64x128::smem(BMODE));
  raise(tc_gemm_kernel<Tile128x128, BMODE, EPI>, Tile128x128::smem(BMODE));
}

template <int BMODE, int EPI>
void launch_tiles(int tiles, const TcArgs& a, unsigned row_tiles, cudaStream_t st) {
  if (tiles == TILES_32x128) tc_launch<Tile32x128, BMODE, EPI>(a, row_tiles, st);
  else if (tiles == TILES_64x64) tc_launch<Tile64x64, BMODE, EPI>(a, row_tiles, st);
  else if (tiles == TILES_64x128) tc_launch<Tile64x128, BMODE, EPI>(a, row_tiles, st);
  else tc_launch<Tile128x128, BMODE, EPI>(a, row_tiles, st);
}

}  // namespace

void gemm_prepare() {
  once_per_device([] {
    device_sm_count();  // cached now: dense_tiles asks during graph captures
    prepare_instances<TCB_BF16, TCE_STORE>();
    prepare_instances<TCB_BF16, TCE_ADD>();
    prepare_instances<TCB_MXFP4, TCE_SWIGLU>();
    prepare_instances<TCB_MXFP4, TCE_MOE_OUT>();
  });
}

int gemm_tile_rows(int tiles) { return tiles == TILES_128x128 ? 128 : tiles == TILES_32x128 ? 32 : 64; }

int dense_tiles(int M, int N, int tiles) {
  if (tiles != TILES_AUTO) return tiles;
  // Few rows: the weights stream from memory once, keep many of them in flight. Otherwise the
  // biggest tiles that still give every SM two blocks (8 warps each), else the most blocks.
  if (M <= 32) return TILES_32x128;
  const int64_t sms = device_sm_count();
  if (cdiv(N, 128) * cdiv(M, 128) >= 2 * sms) return TILES_128x128;
  if (cdiv(N, 128) * cdiv(M, 64) >= sms) return TILES_64x128;
  return TILES_64x64;
}

void dense(const float* X, int ldx, const int32_t* rows, int M, int K, const uint16_t* W, int ldw, int N,
           const float* bias, float* Y, int ldy, int epi, cudaStream_t st, int path, bool split, int tiles) {
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
  tiles = dense_tiles(M, N, tiles);
  const unsigned row_tiles = unsigned(cdiv(M, gemm_tile_rows(tiles)));
  if (epi == EPI_ADD) launch_tiles<TCB_BF16, TCE_ADD>(tiles, a, row_tiles, st);
  else launch_tiles<TCB_BF16, TCE_STORE>(tiles, a, row_tiles, st);
}

void moe_gemm(bool mlp1, int tiles, const TcArgs& a, unsigned row_tiles, cudaStream_t st) {
  if (mlp1) launch_tiles<TCB_MXFP4, TCE_SWIGLU>(tiles, a, row_tiles, st);
  else launch_tiles<TCB_MXFP4, TCE_MOE_OUT>(tiles, a, row_tiles, st);
}

}  // namespace gptoss::cuda
