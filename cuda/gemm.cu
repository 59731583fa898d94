// Dense bf16 projections (QKV, attention out, unembedding): for one row (decode) a warp-per-
// output-row GEMV (16-byte weight loads, fp32 accumulation); for 2-8 rows a tensor-core GEMV
// (gemv_mma_kernel: the rows are the mma's 8 columns, weights read once); above that the
// tensor-core GEMM of tc_gemm.cuh. The tensor-core instances of the MoE experts are launched
// from here too (moe_gemm), so each is compiled once.
#include "common.cuh"
#include "kernels.cuh"
#include "mma_sync.cuh"
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

// acc[t] = this lane's part of x_t . w for the mm (<= TT) rows xr[t] (the warp sums them).
template <int TT>
__device__ __forceinline__ void gemv_dot(const float* const* xr, int mm, const uint16_t* wr, int K, bool vec,
                                         int lane, float* acc) {
#pragma unroll
  for (int t = 0; t < TT; ++t) acc[t] = 0.f;
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
}

template <int TT, int EPI>
__global__ void __launch_bounds__(kGemvWarps * 32) gemv_bf16_kernel(const float* X, int ldx, const int32_t* rows, int M,
                                                                     int K, const uint16_t* W, int ldw, int N,
                                                                     const float* bias, float* Y, int ldy, bool vec,
                                                                     bool pre) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int n = blockIdx.x * kGemvWarps + warp;
  if (pre && blockIdx.y == 0 && n < N) prefetch_l2(W + int64_t(n) * ldw, int64_t(K) * 2, lane, 32);
  grid_dependency_wait();
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
  gemv_dot<TT>(xr, mm, W + int64_t(n) * ldw, K, vec, lane, acc);
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

// The decode QKV projection with rope_kv_store's work fused in (one launch instead of two): a
// warp computes rows i and i + half of one head (q, k or v) for up to TT rows; lane t then
// finishes row t exactly as rope_kv_kernel does: q rotated into qkv, k rotated and v into the
// cache.
template <int TT, typename KV>
__global__ void __launch_bounds__(kGemvWarps * 32) qkv_rope_kernel(QkvRopeArgs a) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int unit = blockIdx.x * kGemvWarps + warp;
  const int half = a.half, D = 2 * half;
  const bool live = unit < (a.nq + 2 * a.nk) * half;
  const int h = unit / half, i = unit % half;
  const int n1 = h * D + i, n2 = n1 + half;
  if (a.pre && live) {
    prefetch_l2(a.W + int64_t(n1) * a.K, int64_t(a.K) * 2, lane, 32);
    prefetch_l2(a.W + int64_t(n2) * a.K, int64_t(a.K) * 2, lane, 32);
  }
  grid_dependency_wait();
  if (!live) return;
  const int m0 = blockIdx.y * TT;
  const int mm = min(TT, a.M - m0);
  const float* xr[TT];
#pragma unroll
  for (int t = 0; t < TT; ++t) xr[t] = a.X + int64_t(m0 + min(t, mm - 1)) * a.ldx;
  float acc1[TT], acc2[TT];
  gemv_dot<TT>(xr, mm, a.W + int64_t(n1) * a.K, a.K, a.vec, lane, acc1);
  gemv_dot<TT>(xr, mm, a.W + int64_t(n2) * a.K, a.K, a.vec, lane, acc2);
#pragma unroll
  for (int t = 0; t < TT; ++t) {
    const float u = warp_sum(acc1[t]) + a.bias[n1], v = warp_sum(acc2[t]) + a.bias[n2];
    if (lane != t || t >= mm) continue;
    const int row = m0 + t, p = a.pos[row];
    const int B = a.kv.block_size;
    const int64_t blk = a.tables[a.row_table[row] + p / B];
    const int64_t kbase = blk * a.kv.block_elems + a.kv.layer_offset + int64_t(p % B) * D;
    const int64_t head_stride = int64_t(B) * D;
    if (h >= a.nq + a.nk) {  // v, as it is
      const int64_t at = kbase + int64_t(a.kv.n_kv) * B * D + (h - a.nq - a.nk) * head_stride + i;
      kv_put<KV>(a.kv.pool, at, u);
      kv_put<KV>(a.kv.pool, at + half, v);
      continue;
    }
    float sn, cs;
    sincosf(float(p) * a.inv_freq[i], &sn, &cs);
    cs *= a.conc;
    sn *= a.conc;
    const float o1 = u * cs - v * sn, o2 = v * cs + u * sn;
    if (h < a.nq) {
      a.qkv[int64_t(row) * a.ld + n1] = o1;
      a.qkv[int64_t(row) * a.ld + n2] = o2;
    } else {
      const int64_t at = kbase + (h - a.nq) * head_stride + i;
      kv_put<KV>(a.kv.pool, at, o1);
      kv_put<KV>(a.kv.pool, at + half, o2);
    }
  }
}

// ---- 2-8 rows: bf16 tensor-core GEMV -------------------------------------------------------
// The CUDA-core GEMV for 8 rows reloads every activation from L1 for every weight (16x the
// weight bytes through L1's ~128 B/clock per SM), which caps it near half the memory bandwidth.
// Here the rows are the mma's B operand (its 8 columns), loaded once per 32-k step and kept in
// registers for two 16-output tiles, and the weights are the A operands as loaded: a lane's
// 16-byte load is 8 k-values of one output row, no conversion. Activations are split exactly
// into three bf16 parts (split3_bf16x2), so the products are fp32's. A block computes 32
// outputs for 8 rows; its 8 warps take every 8th 32-k step and add their partial sums in warp
// order. Needs 16-byte aligned rows (K % 8 == 0).
// Tensor cores do not round each addition: an MMA aligns its products and the accumulator to the
// largest exponent among them and truncates what falls below fp32's width. Over a whole row
// (~100 MMAs at K = 4096) one accumulator would lose up to an ulp of the running sum per MMA, all
// towards zero; so each 32-k step starts from zero (its smallest parts first) and is added into
// an fp32 sum, which rounds to nearest: the error stays that of an fp32 sum over the steps.
constexpr int kMmaWarps = 8, kMmaOut = 32, kMmaRows = 8;

struct GemvMmaArgs {
  const float* X;
  int ldx;
  const int32_t* rows;
  int M, K;
  const uint16_t* W;
  int ldw, N;
  const float* bias;
  float* Y;
  int ldy;
  bool pre;  // prefetch this block's weights before waiting (programmatic dependent launch)
};

// c[t] += the products of 32 k-values, summed on their own first: w[2t], w[2t+1] = rows g, g+8
// of output tile t (8 k each, lane q's share), (u, v) = this lane's 8 activations of row g. k is numbered so that lane q's
// 8 values are its own: in step s, B rows (2q, 2q+1) are k (8q+4s, 8q+4s+1) and rows
// (2q+8, 2q+9) are k (8q+4s+2, 8q+4s+3), the order of the loaded bf16 pairs.
// SPLIT false: the activations as one bf16 (round to nearest), one MMA per step instead of three.
template <bool SPLIT>
__device__ __forceinline__ void mma_step32(float (&c)[2][4], const uint4 (&w)[4], const float4& u, const float4& v) {
  constexpr int P = SPLIT ? 3 : 1;
  uint32_t b[3][2][2];  // [part][step][register]
  if (SPLIT) {
    split3_bf16x2(u.x, u.y, b[0][0][0], b[1][0][0], b[2][0][0]);
    split3_bf16x2(u.z, u.w, b[0][0][1], b[1][0][1], b[2][0][1]);
    split3_bf16x2(v.x, v.y, b[0][1][0], b[1][1][0], b[2][1][0]);
    split3_bf16x2(v.z, v.w, b[0][1][1], b[1][1][1], b[2][1][1]);
  } else {
    b[0][0][0] = pack_bf16x2(u.x, u.y);
    b[0][0][1] = pack_bf16x2(u.z, u.w);
    b[0][1][0] = pack_bf16x2(v.x, v.y);
    b[0][1][1] = pack_bf16x2(v.z, v.w);
  }
#pragma unroll
  for (int t = 0; t < 2; ++t) {
    const uint4 &r0 = w[2 * t], &r1 = w[2 * t + 1];
    float s[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int p = P - 1; p >= 0; --p) {  // lo, mid, hi: the small products before the large
      mma_bf16_16816(s, {r0.x, r1.x, r0.y, r1.y}, b[p][0]);
      mma_bf16_16816(s, {r0.z, r1.z, r0.w, r1.w}, b[p][1]);
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) c[t][i] += s[i];
  }
}

template <int EPI, bool SPLIT>
__global__ void __launch_bounds__(kMmaWarps * 32) gemv_mma_kernel(GemvMmaArgs a) {
  __shared__ float part[kMmaWarps][kMmaOut][kMmaRows];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
  const int n0 = blockIdx.x * kMmaOut;
  if (a.pre && blockIdx.y == 0)  // rows n0 .. n0 + 31 (the last one only up to K)
    prefetch_l2(a.W + int64_t(n0) * a.ldw, (int64_t(min(kMmaOut, a.N - n0)) - 1) * a.ldw * 2 + int64_t(a.K) * 2,
                threadIdx.x, kMmaWarps * 32);
  grid_dependency_wait();
  const int m0 = blockIdx.y * kMmaRows, mm = min(kMmaRows, a.M - m0);
  // This lane's outputs n0 + 8j + g (j = 0..3; tile t = j / 2 holds j = 2t and 2t + 1 as its g
  // and g + 8; outputs past N read row N - 1 and are not stored) and its row m0 + g.
  const uint16_t* wr[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) wr[j] = a.W + int64_t(min(n0 + 8 * j + g, a.N - 1)) * a.ldw + 8 * q;
  const float* xr = nullptr;
  if (g < mm) xr = a.X + int64_t(a.rows ? a.rows[m0 + g] : m0 + g) * a.ldx + 8 * q;

  float c[2][4] = {};
  const int nb = a.K / 32;
#pragma unroll 2
  for (int b = warp; b < nb; b += kMmaWarps) {
    uint4 w[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) w[j] = __ldg(reinterpret_cast<const uint4*>(wr[j] + 32 * b));
    float4 u = make_float4(0.f, 0.f, 0.f, 0.f), v = u;
    if (xr) {
      u = *reinterpret_cast<const float4*>(xr + 32 * b);
      v = *reinterpret_cast<const float4*>(xr + 32 * b + 4);
    }
    mma_step32<SPLIT>(c, w, u, v);
  }
  if (a.K % 32 != 0 && warp == nb % kMmaWarps) {  // the last K % 32 (a multiple of 8)
    const bool has = 32 * nb + 8 * q < a.K;
    uint4 w[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) w[j] = has ? __ldg(reinterpret_cast<const uint4*>(wr[j] + 32 * nb)) : make_uint4(0, 0, 0, 0);
    float4 u = make_float4(0.f, 0.f, 0.f, 0.f), v = u;
    if (xr && has) {
      u = *reinterpret_cast<const float4*>(xr + 32 * nb);
      v = *reinterpret_cast<const float4*>(xr + 32 * nb + 4);
    }
    mma_step32<SPLIT>(c, w, u, v);
  }
#pragma unroll
  for (int t = 0; t < 2; ++t) {
    part[warp][16 * t + g][2 * q] = c[t][0];
    part[warp][16 * t + g][2 * q + 1] = c[t][1];
    part[warp][16 * t + g + 8][2 * q] = c[t][2];
    part[warp][16 * t + g + 8][2 * q + 1] = c[t][3];
  }
  __syncthreads();
  static_assert(kMmaWarps * 32 == kMmaOut * kMmaRows, "one thread per (output, row)");
  const int i = threadIdx.x % kMmaOut, r = threadIdx.x / kMmaOut, n = n0 + i;
  if (r < mm && n < a.N) {
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < kMmaWarps; ++k) s += part[k][i][r];
    if (a.bias) s += a.bias[n];
    float* y = a.Y + int64_t(m0 + r) * a.ldy + n;
    if (EPI == EPI_ADD) *y += s;
    else *y = s;
  }
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

template <int TT>
void launch_gemv(const float* X, int ldx, const int32_t* rows, int M, int K, const uint16_t* W, int ldw, int N,
                 const float* bias, float* Y, int ldy, int epi, bool vec, cudaStream_t st) {
  dim3 grid(unsigned(cdiv(N, kGemvWarps)), unsigned(cdiv(M, TT)));
  if (epi == EPI_ADD)
    launch_kernel(gemv_bf16_kernel<TT, EPI_ADD>, grid, kGemvWarps * 32, 0, st, X, ldx, rows, M, K, W, ldw, N, bias,
                  Y, ldy, vec, stream_prefetch(st));
  else
    launch_kernel(gemv_bf16_kernel<TT, EPI_STORE>, grid, kGemvWarps * 32, 0, st, X, ldx, rows, M, K, W, ldw, N, bias,
                  Y, ldy, vec, stream_prefetch(st));
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
  allow_dynamic_smem(tc_gemm_kernel<Tile32x128, BMODE, EPI>, Tile32x128::smem(BMODE));
  allow_dynamic_smem(tc_gemm_kernel<Tile64x64, BMODE, EPI>, Tile64x64::smem(BMODE));
  allow_dynamic_smem(tc_gemm_kernel<Tile64x128, BMODE, EPI>, Tile64x128::smem(BMODE));
  allow_dynamic_smem(tc_gemm_kernel<Tile128x128, BMODE, EPI>, Tile128x128::smem(BMODE));
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
  if (path == 0) path = M == 1 ? 1 : M <= 8 ? 3 : 2;
  if (path == 3 && !vec) path = 1;
  if (path == 3) {
    GemvMmaArgs a{X, ldx, rows, M, K, W, ldw, N, bias, Y, ldy, stream_prefetch(st)};
    dim3 grid(unsigned(cdiv(N, kMmaOut)), unsigned(cdiv(M, kMmaRows)));
    if (epi == EPI_ADD)
      launch_kernel(split ? gemv_mma_kernel<EPI_ADD, true> : gemv_mma_kernel<EPI_ADD, false>, grid, kMmaWarps * 32, 0,
                    st, a);
    else
      launch_kernel(split ? gemv_mma_kernel<EPI_STORE, true> : gemv_mma_kernel<EPI_STORE, false>, grid, kMmaWarps * 32,
                    0, st, a);
    return;
  }
  if (path == 1) {
    if (M == 1) launch_gemv<1>(X, ldx, rows, M, K, W, ldw, N, bias, Y, ldy, epi, vec, st);
    else launch_gemv<8>(X, ldx, rows, M, K, W, ldw, N, bias, Y, ldy, epi, vec, st);
    return;
  }
  TcArgs a;
  a.X = X; a.ldx = ldx; a.rows = rows; a.M = M; a.K = K; a.N = N;
  a.W = W; a.ldw = ldw; a.bias = bias; a.Y = Y; a.ldy = ldy; a.vec = vec; a.split = split;
  a.pre = stream_prefetch(st);
  tiles = dense_tiles(M, N, tiles);
  const unsigned row_tiles = unsigned(cdiv(M, gemm_tile_rows(tiles)));
  if (epi == EPI_ADD) launch_tiles<TCB_BF16, TCE_ADD>(tiles, a, row_tiles, st);
  else launch_tiles<TCB_BF16, TCE_STORE>(tiles, a, row_tiles, st);
}

void qkv_rope(const QkvRopeArgs& a, cudaStream_t st) {
  if (a.M <= 0) return;
  if (a.M > kQkvRopeRows) throw InvalidArgument("qkv_rope: at most 2 rows (more go through dense + rope_kv_store)");
  if (!a.kv.pool) throw InvalidArgument("qkv_rope: needs the KV cache");
  QkvRopeArgs b = a;
  b.vec = a.K % 8 == 0 && a.ldx % 4 == 0 && aligned16(a.X) && aligned16(a.W);
  b.pre = stream_prefetch(st);
  dim3 grid(unsigned(cdiv(int64_t(a.nq + 2 * a.nk) * a.half, kGemvWarps)), 1);
  if (a.kv.bf16) {
    if (a.M == 1) launch_kernel(qkv_rope_kernel<1, uint16_t>, grid, kGemvWarps * 32, 0, st, b);
    else launch_kernel(qkv_rope_kernel<kQkvRopeRows, uint16_t>, grid, kGemvWarps * 32, 0, st, b);
  } else {
    if (a.M == 1) launch_kernel(qkv_rope_kernel<1, float>, grid, kGemvWarps * 32, 0, st, b);
    else launch_kernel(qkv_rope_kernel<kQkvRopeRows, float>, grid, kGemvWarps * 32, 0, st, b);
  }
}

void moe_gemm(bool mlp1, int tiles, const TcArgs& a, unsigned row_tiles, cudaStream_t st) {
  if (mlp1) launch_tiles<TCB_MXFP4, TCE_SWIGLU>(tiles, a, row_tiles, st);
  else launch_tiles<TCB_MXFP4, TCE_MOE_OUT>(tiles, a, row_tiles, st);
}

namespace {
template <class C, int BMODE, int EPI>
void tc_entry(std::vector<KernelEntry>& v, const char* tile, const char* mode) {
  v.push_back(KernelEntry{std::string("tc_gemm_kernel<") + tile + ", " + mode + ">",
                          reinterpret_cast<const void*>(tc_gemm_kernel<C, BMODE, EPI>), C::kThreads});
}
template <int BMODE, int EPI>
void tc_entries(std::vector<KernelEntry>& v, const char* mode) {
  tc_entry<Tile32x128, BMODE, EPI>(v, "Tile32x128", mode);
  tc_entry<Tile64x64, BMODE, EPI>(v, "Tile64x64", mode);
  tc_entry<Tile64x128, BMODE, EPI>(v, "Tile64x128", mode);
  tc_entry<Tile128x128, BMODE, EPI>(v, "Tile128x128", mode);
}
}  // namespace

void gemm_kernels(std::vector<KernelEntry>& v) {
  GPTOSS_KERNEL_ENTRY(v, kGemvWarps * 32, gemv_bf16_kernel<1, EPI_STORE>);
  GPTOSS_KERNEL_ENTRY(v, kGemvWarps * 32, gemv_bf16_kernel<1, EPI_ADD>);
  GPTOSS_KERNEL_ENTRY(v, kGemvWarps * 32, gemv_bf16_kernel<8, EPI_STORE>);
  GPTOSS_KERNEL_ENTRY(v, kGemvWarps * 32, gemv_bf16_kernel<8, EPI_ADD>);
  GPTOSS_KERNEL_ENTRY(v, kGemvWarps * 32, qkv_rope_kernel<1, float>);
  GPTOSS_KERNEL_ENTRY(v, kGemvWarps * 32, qkv_rope_kernel<kQkvRopeRows, float>);
  GPTOSS_KERNEL_ENTRY(v, kGemvWarps * 32, qkv_rope_kernel<1, uint16_t>);
  GPTOSS_KERNEL_ENTRY(v, kGemvWarps * 32, qkv_rope_kernel<kQkvRopeRows, uint16_t>);
  GPTOSS_KERNEL_ENTRY(v, kMmaWarps * 32, gemv_mma_kernel<EPI_STORE, true>);
  GPTOSS_KERNEL_ENTRY(v, kMmaWarps * 32, gemv_mma_kernel<EPI_STORE, false>);
  GPTOSS_KERNEL_ENTRY(v, kMmaWarps * 32, gemv_mma_kernel<EPI_ADD, true>);
  GPTOSS_KERNEL_ENTRY(v, kMmaWarps * 32, gemv_mma_kernel<EPI_ADD, false>);
  tc_entries<TCB_BF16, TCE_STORE>(v, "TCB_BF16, TCE_STORE");
  tc_entries<TCB_BF16, TCE_ADD>(v, "TCB_BF16, TCE_ADD");
  tc_entries<TCB_MXFP4, TCE_SWIGLU>(v, "TCB_MXFP4, TCE_SWIGLU");
  tc_entries<TCB_MXFP4, TCE_MOE_OUT>(v, "TCB_MXFP4, TCE_MOE_OUT");
}

}  // namespace gptoss::cuda
