// Tensor-core GEMM shared by the dense projections (bf16 weights) and the MoE experts (MXFP4
// weights dequantized to bf16 in shared memory): Y[m, n] = sum_k X[row(m), k] * W[n, k].
//
// Block tiles of BM (rows) x BN (outputs) x 32 (k), warps of (BM / WARPS_M) x (BN / WARPS_N)
// (bf16 mma.sync m16n8k16 on ldmatrix fragments, fp32 accumulation, sm_80+). The weights
// stream through a ring of k-steps in shared memory filled by cp.async (RING - 1 steps in
// flight per thread: enough bytes in the air for the memory-bound shapes, few rows per tile);
// each thread copies and later converts its
// own piece, so the ring needs no barrier. Activations (small, mostly in L2) are loaded into
// registers one step ahead. Both are converted into one of two bf16 stages that the MMAs read
// (one barrier per k-step).
// Activations are fp32: with `split` each is x = hi + lo, hi = bf16(x), lo = bf16(x - hi), and
// both halves are multiplied by the (exactly bf16) weights, so the product keeps ~16 mantissa
// bits of x and matches the fp32 CPU engine to ~1e-5 relative (plain bf16 activations give
// ~4e-3 and flip near-tied router decisions). MXFP4 weights become bf16 through byte-permute
// tables and a bf16x2 scale multiply (e2m1x8_to_bf16x2), exact for scales >= 2; smaller scales
// (subnormal products) take the float path. The epilogue goes through shared memory (fused
// bias, residual add, SwiGLU, routing-weight scaling).
#pragma once

#include <cuda_bf16.h>
#include <cuda_pipeline.h>

#include "common.cuh"
#include "mma_sync.cuh"

namespace gptoss::cuda {

constexpr int kBK = 32, kLDS = kBK + 8;  // bf16 row stride of the stages: 80 bytes, conflict-light

template <int BM_, int BN_, int WARPS_M, int WARPS_N>
struct TcTile {
  static constexpr int BM = BM_, BN = BN_;
  static constexpr int kThreads = 32 * WARPS_M * WARPS_N;
  static constexpr int kMinBlocks = 512 / kThreads;  // per SM: caps registers at 128 a thread
  static constexpr int WTM = BM / WARPS_M, WTN = BN / WARPS_N;  // one warp's tile
  static constexpr int FM = WTM / 16, FN = WTN / 16;
  static constexpr int A_TPR = kThreads / BM, A_PER = kBK / A_TPR;  // loader: fp32 per thread
  static constexpr int B_TPR = kThreads / BN, B_PER = kBK / B_TPR;  // loader: weights per thread
  static constexpr int kStage = (2 * BM + BN) * kLDS;  // bf16: A hi, A lo, B
  static constexpr int kLDC = BN + 4;
  // Weight ring (BMODE: TcB): k-steps, and raw bytes per thread and step.
  static constexpr int ring(int bmode) { return bmode == 1 ? 8 : 4; }
  static constexpr int ring_bytes(int bmode) { return bmode == 1 ? B_PER / 2 : B_PER * 2; }
  static constexpr size_t smem(int bmode) {
    const size_t main = size_t(2 * kStage * 2 + ring(bmode) * kThreads * ring_bytes(bmode));
    const size_t epi = size_t(BM) * kLDC * 4;  // the epilogue reuses it all
    return main > epi ? main : epi;
  }
  static_assert(WTM % 16 == 0 && WTN % 16 == 0, "warp tile: whole 16x16 fragments");
  static_assert(kThreads % BM == 0 && A_PER % 8 == 0 && A_PER * A_TPR == kBK, "A loader: float4 loads, 16-byte bf16 stores");
  static_assert(kThreads % BN == 0 && B_PER % 8 == 0 && B_PER * B_TPR == kBK, "B loader: uint4 / 4-byte pieces");
};

// The shapes a launch can use (GemmTiles in kernels.cuh names them). Small row tiles keep more
// blocks (so more weight bytes in flight) per SM when few rows share the weights (batched
// decode, busy experts of small batches); big ones reuse each loaded weight across more rows.
using Tile32x128 = TcTile<32, 128, 1, 4>;   // 4 warps of 32 x 32
using Tile64x64 = TcTile<64, 64, 2, 2>;     // 4 warps of 32 x 32
using Tile64x128 = TcTile<64, 128, 2, 4>;   // 8 warps of 32 x 32
using Tile128x128 = TcTile<128, 128, 2, 4>; // 8 warps of 64 x 32

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
  int E = 0;          // experts (TCB_MXFP4; the prefetch's clamp)
  bool pre = false;   // prefetch the block's weights before waiting (dense, and mlp2: TCE_MOE_OUT)
};

// mlp2 under a programmatic dependency, before it waits for mlp1: MXFP4 rows [row0, row0 + rows)
// of the expert at *id, toward L2 (t of nt threads). The expert ids were written two kernels back
// (the router, or the grouping), which completed before mlp1 stopped waiting and so before this
// grid was launched; they are read past L1 all the same, and clamped: a wrong id would only
// prefetch the wrong bytes.
__device__ __forceinline__ void prefetch_expert_rows(const int32_t* id, int E, const uint8_t* blocks,
                                                     const uint8_t* scales, int N, int K, int row0, int rows,
                                                     int t, int nt) {
  const int e = min(max(__ldcg(id), 0), E - 1), nb = K / 32;
  const int64_t r = int64_t(e) * N + row0;
  prefetch_l2(blocks + r * nb * 16, int64_t(rows) * nb * 16, t, nt);
  prefetch_l2(scales + r * nb, int64_t(rows) * nb, t, nt);
}

// Under a programmatic dependency, before waiting: the weights of this block's BN outputs (row
// tile 0 only; the other row tiles read the same), or of its tile's expert (mlp2).
template <int BN, int BMODE>
__device__ void tc_prefetch(const TcArgs& a, int nt) {
  const int n0 = blockIdx.x * BN, rows = min(BN, a.N - n0);
  if (BMODE == TCB_BF16) {
    if (blockIdx.y == 0) prefetch_l2(a.W + int64_t(n0) * a.ldw, (int64_t(rows) - 1) * a.ldw * 2 + int64_t(a.K) * 2,
                                     threadIdx.x, nt);
    return;
  }
  const int tile = blockIdx.y;
  if (a.E > 0 && tile < __ldcg(a.n_tiles))
    prefetch_expert_rows(a.tile_e + tile, a.E, a.blocks, a.scales, a.N, a.K, n0, rows, threadIdx.x, nt);
}

__device__ __forceinline__ float swiglu1(float gate, float lin, float alpha, float limit) {
  const float g = fminf(gate, limit);
  const float l = fminf(fmaxf(lin, -limit), limit);
  return g / (1.0f + expf(-alpha * g)) * (l + 1.0f);
}

template <class C, int BMODE, int EPI>
__global__ void __launch_bounds__(C::kThreads, C::kMinBlocks) tc_gemm_kernel(TcArgs a) {
  if (a.pre && EPI != TCE_SWIGLU) tc_prefetch<C::BN, BMODE>(a, C::kThreads);
  grid_dependency_wait();
  extern __shared__ __align__(128) uint8_t smem_raw[];
  __shared__ int32_t s_row[C::BM];  // source row of X for each tile row (-1: none)
  constexpr int BM = C::BM, BN = C::BN;

  const int tid = threadIdx.x, warp = tid >> 5;
  const int n0 = blockIdx.x * BN;
  int e = 0, m0 = 0, mcount = 0;
  if (BMODE == TCB_MXFP4) {
    const int tile = blockIdx.y;
    if (tile >= *a.n_tiles) return;
    e = a.tile_e[tile];
    m0 = a.tile_start[tile];
    mcount = a.tile_count[tile];
  } else {
    m0 = blockIdx.y * BM;
    mcount = min(BM, a.M - m0);
  }
  for (int i = tid; i < BM; i += C::kThreads) {
    int r = -1;
    if (i < mcount) {
      const int pos = m0 + i;
      if (BMODE == TCB_MXFP4) r = (EPI == TCE_SWIGLU) ? a.sorted[pos] / a.topk : pos;
      else r = a.rows ? a.rows[pos] : pos;
    }
    s_row[i] = r;
  }
  __syncthreads();

  // Accumulators: 16 x 16 tile (i, j) of the warp as two m16n8 halves (mma_sync.cuh's layout).
  float acc[C::FM][C::FN][2][4] = {};

  const int wm = warp / (BN / C::WTN), wn = warp % (BN / C::WTN);
  // Loaders: A row ar, floats [ac, ac + A_PER) of the k-step; B row br, weights [bc, bc + B_PER).
  const int ar = tid / C::A_TPR, ac = (tid % C::A_TPR) * C::A_PER;
  const int br = tid / C::B_TPR, bc = (tid % C::B_TPR) * C::B_PER;
  const int xrow = s_row[ar];
  const int64_t nb = a.K / 32;
  const int wrow = n0 + br;
  const bool wok = wrow < a.N;

  constexpr int RING = C::ring(BMODE), RB = C::ring_bytes(BMODE);
  float ra[C::A_PER];  // activations of the next step
  uint32_t rs = 0;     // MXFP4 scale byte of the next step
  uint8_t* ring = smem_raw + 2 * C::kStage * 2 + size_t(tid) * RB;  // this thread's slot 0
  auto slot = [&](int step) { return ring + size_t(step % RING) * C::kThreads * RB; };

  // Weights of k-step `step` into this thread's ring slot (cp.async; plain stores at the edges).
  auto issue = [&](int step) {
    uint8_t* dst = slot(step);
    const int k0 = step * kBK;
    if (BMODE == TCB_MXFP4) {
      if (wok) __pipeline_memcpy_async(dst, a.blocks + ((int64_t(e) * a.N + wrow) * nb + k0 / 32) * 16 + bc / 2, RB);
    } else {
      const int kb = k0 + bc;
      const uint16_t* src = a.W + int64_t(wrow) * a.ldw + kb;
      if (wok && a.vec && kb + C::B_PER <= a.K) {
#pragma unroll
        for (int i = 0; i < RB / 16; ++i) __pipeline_memcpy_async(dst + 16 * i, src + 8 * i, 16);
      } else {
        uint16_t* d = reinterpret_cast<uint16_t*>(dst);
#pragma unroll
        for (int i = 0; i < C::B_PER; ++i) d[i] = (wok && kb + i < a.K) ? src[i] : uint16_t(0);
      }
    }
  };

  // Activations (and the MXFP4 scale) of the k-step at k0 into registers.
  auto load = [&](int k0) {
    const int ka = k0 + ac;
    if (xrow >= 0) {
      const float* src = a.X + int64_t(xrow) * a.ldx + ka;
      if (a.vec && ka + C::A_PER <= a.K) {
#pragma unroll
        for (int i = 0; i < C::A_PER / 4; ++i) {
          const float4 f = *reinterpret_cast<const float4*>(src + 4 * i);
          ra[4 * i] = f.x; ra[4 * i + 1] = f.y; ra[4 * i + 2] = f.z; ra[4 * i + 3] = f.w;
        }
      } else {
#pragma unroll
        for (int i = 0; i < C::A_PER; ++i) ra[i] = (ka + i < a.K) ? src[i] : 0.f;
      }
    } else {
#pragma unroll
      for (int i = 0; i < C::A_PER; ++i) ra[i] = 0.f;
    }
    if (BMODE == TCB_MXFP4 && wok) rs = a.scales[(int64_t(e) * a.N + wrow) * nb + k0 / 32];
  };

  auto stage = [&](int s) {  // bf16 views of stage s
    return reinterpret_cast<__nv_bfloat16*>(smem_raw) + s * C::kStage;
  };

  // Step `step` into stage s: activations as bf16 hi (+ lo), weights from the ring as bf16.
  auto store = [&](int s, int step) {
    __nv_bfloat16* As_hi = stage(s);
    __nv_bfloat16* As_lo = As_hi + BM * kLDS;
    uint16_t* Bs = reinterpret_cast<uint16_t*>(As_lo + BM * kLDS);
    // hi = bf16(x), lo = bf16(x - hi), packed in pairs and stored 8 at a time (16-byte stores).
#pragma unroll
    for (int i = 0; i < C::A_PER; i += 8) {
      uint32_t h[4], l[4];
#pragma unroll
      for (int p = 0; p < 4; ++p) h[p] = pack_bf16x2(ra[i + 2 * p], ra[i + 2 * p + 1]);
      *reinterpret_cast<uint4*>(As_hi + ar * kLDS + ac + i) = make_uint4(h[0], h[1], h[2], h[3]);
      if (a.split) {
#pragma unroll
        for (int p = 0; p < 4; ++p)
          l[p] = pack_bf16x2(ra[i + 2 * p] - __uint_as_float(h[p] << 16),
                             ra[i + 2 * p + 1] - __uint_as_float(h[p] & 0xffff0000u));
        *reinterpret_cast<uint4*>(As_lo + ar * kLDS + ac + i) = make_uint4(l[0], l[1], l[2], l[3]);
      }
    }
    uint32_t* dst = reinterpret_cast<uint32_t*>(Bs + br * kLDS + bc);
    const uint8_t* raw = slot(step);
    if (BMODE == TCB_MXFP4) {
      uint32_t q[4];
      if (RB == 16) {
        const uint4 u = *reinterpret_cast<const uint4*>(raw);
        q[0] = u.x; q[1] = u.y; q[2] = u.z; q[3] = u.w;
      } else if (RB == 8) {
        const uint2 u = *reinterpret_cast<const uint2*>(raw);
        q[0] = u.x; q[1] = u.y;
      } else {
        q[0] = *reinterpret_cast<const uint32_t*>(raw);
      }
      if (wok && rs >= 2) {  // every product a normal bf16: byte permutes and a bf16x2 multiply
#pragma unroll
        for (int w = 0; w < (RB + 3) / 4; ++w) {
          uint32_t o[4];
          e2m1x8_to_bf16x2(q[w], rs * 0x00800080u, o);  // 2^(s-127) in bf16 is s << 7
#pragma unroll
          for (int j = 0; j < 4; ++j)
            if (4 * w + j < RB) dst[4 * w + j] = o[j];
        }
      } else {  // s = 0 or 1 (bf16 subnormals), or a row past N
        const float rsc = e8m0_to_float(rs);
#pragma unroll
        for (int j = 0; j < RB; ++j) {  // byte j: weights 2j (low nibble), 2j + 1
          const uint32_t byte = (q[j / 4] >> (8 * (j % 4))) & 0xffu;
          dst[j] = wok ? uint32_t(float_to_bf16_bits(e2m1_to_float(byte & 15u) * rsc)) |
                             (uint32_t(float_to_bf16_bits(e2m1_to_float(byte >> 4) * rsc)) << 16)
                       : 0u;
        }
      }
    } else {
#pragma unroll
      for (int i = 0; i < RB / 16; ++i) reinterpret_cast<uint4*>(dst)[i] = reinterpret_cast<const uint4*>(raw)[i];
    }
  };

  auto compute = [&](int s) {
    const __nv_bfloat16* As_hi = stage(s);
    const __nv_bfloat16* As_lo = As_hi + BM * kLDS;
    const __nv_bfloat16* Bs = As_lo + BM * kLDS;
    // ldmatrix rows of this lane. A 16 x 16 tile as (rows 0-7, k 0-7), (rows 8-15, k 0-7),
    // (rows 0-7, k 8-15), (rows 8-15, k 8-15): the A fragment's a[0..3]. B (stored n-major, k
    // contiguous) as (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15): the B
    // fragments of the two n-halves.
    const int lane = tid & 31;
    const int arow = (lane & 7) + ((lane >> 3) & 1) * 8, acol = (lane >> 4) * 8;
    const int brow = (lane & 7) + (lane >> 4) * 8, bcol = ((lane >> 3) & 1) * 8;
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      uint32_t b[C::FN][4];
#pragma unroll
      for (int j = 0; j < C::FN; ++j) ldmatrix_x4(b[j], Bs + (wn * C::WTN + j * 16 + brow) * kLDS + kk + bcol);
#pragma unroll
      for (int i = 0; i < C::FM; ++i) {
        const int at = (wm * C::WTM + i * 16 + arow) * kLDS + kk + acol;
        uint32_t ah[4], al[4];
        ldmatrix_x4(ah, As_hi + at);
        if (a.split) {
          ldmatrix_x4(al, As_lo + at);
#pragma unroll
          for (int j = 0; j < C::FN; ++j) {
            mma_bf16_16816(acc[i][j][0], al, {b[j][0], b[j][1]});
            mma_bf16_16816(acc[i][j][1], al, {b[j][2], b[j][3]});
          }
        }
#pragma unroll
        for (int j = 0; j < C::FN; ++j) {
          mma_bf16_16816(acc[i][j][0], ah, {b[j][0], b[j][1]});
          mma_bf16_16816(acc[i][j][1], ah, {b[j][2], b[j][3]});
        }
      }
    }
  };

  // Ring: one cp.async group per k-step (empty ones too, so the count stays fixed); step j's
  // group is the j-th, so after committing step kt + RING - 1, step kt + 1 is complete once at
  // most RING - 2 groups are pending. A slot is refilled one step after its bytes were converted.
  // Stages: the store into stage s^1 happens after the barrier that ended the previous reads
  // of it, and the next iteration reads it only after the barrier below.
  const int nk = (a.K + kBK - 1) / kBK;
  for (int j = 0; j < RING - 1; ++j) {
    if (j < nk) issue(j);
    __pipeline_commit();
  }
  load(0);
  __pipeline_wait_prior(RING - 2);
  store(0, 0);
  __syncthreads();
  for (int kt = 0; kt < nk; ++kt) {
    const bool more = kt + 1 < nk;
    if (kt + RING - 1 < nk) issue(kt + RING - 1);
    __pipeline_commit();
    if (more) load((kt + 1) * kBK);
    compute(kt & 1);
    if (more) {
      __pipeline_wait_prior(RING - 2);
      store((kt + 1) & 1, kt + 1);
    }
    __syncthreads();
  }

  float* Cs = reinterpret_cast<float*>(smem_raw);  // the stages are free after the last barrier
  constexpr int LDC = C::kLDC;
  {
    const int g = (tid & 31) >> 2, q = tid & 3;
#pragma unroll
    for (int i = 0; i < C::FM; ++i)
#pragma unroll
      for (int j = 0; j < C::FN; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          float* c = Cs + (wm * C::WTM + i * 16 + g) * LDC + wn * C::WTN + j * 16 + h * 8 + 2 * q;
          *reinterpret_cast<float2*>(c) = make_float2(acc[i][j][h][0], acc[i][j][h][1]);
          *reinterpret_cast<float2*>(c + 8 * LDC) = make_float2(acc[i][j][h][2], acc[i][j][h][3]);
        }
  }
  __syncthreads();

  if (EPI == TCE_SWIGLU) {
    const float* b = a.bias + int64_t(e) * a.N;
    for (int idx = tid; idx < BM * (BN / 2); idx += C::kThreads) {
      const int i = idx / (BN / 2), jp = idx % (BN / 2);
      const int n = n0 + 2 * jp;
      if (i >= mcount || n >= a.N) continue;  // N is even (2 * intermediate)
      const float gate = Cs[i * LDC + 2 * jp] + b[n];
      const float lin = Cs[i * LDC + 2 * jp + 1] + b[n + 1];
      a.Y[int64_t(m0 + i) * a.ldy + n / 2] = swiglu1(gate, lin, a.alpha, a.limit);
    }
  } else {
    for (int idx = tid; idx < BM * BN; idx += C::kThreads) {
      const int i = idx / BN, j = idx % BN;
      const int n = n0 + j;
      if (i >= mcount || n >= a.N) continue;
      const float v = Cs[i * LDC + j];
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

// Shared-memory opt-in of every instance (> 48 KiB for 128 x 128); once per device, outside
// graph capture (the engine calls gemm_prepare when it starts, tests on first use).
void gemm_prepare();

// The MoE instances (gemm.cu compiles them all): mlp1 with SwiGLU, or mlp2 with the routing weight.
void moe_gemm(bool mlp1, int tiles, const TcArgs& a, unsigned row_tiles, cudaStream_t st);

}  // namespace gptoss::cuda
