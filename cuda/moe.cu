// Mixture of experts: fused router (logits + bias + top-k + softmax over the k), grouping of
// (token, slot) pairs by expert, and the MXFP4 expert products straight from the packed
// checkpoint bytes:
//  * decode (few tokens): up to 8 pairs of one expert per tile, 32 rows per block, on fp16
//    tensor-core MMAs whose A operands are decoded from the MXFP4 bytes in registers, so each
//    selected expert's weights are read once per 8 pairs; only the selected experts are
//    touched. mlp1 fuses bias + interleaved SwiGLU with the clamp; mlp2 fuses bias +
//    routing-weight scaling. Activations are rounded to fp16 (11-bit significand) here.
//  * prefill / large batches: the tensor-core GEMM of tc_gemm.cuh (launched by gemm.cu) over
//    tiles of up to 64 or 128 pairs of one expert, dequantizing 32-weight MXFP4 blocks into
//    shared memory.
// The per-pair outputs y[pair] are summed in a fixed order by add_rmsnorm (ops.cu), so results
// do not depend on scheduling (no atomics).
#include "common.cuh"
#include "kernels.cuh"
#include "mma_sync.cuh"
#include "tc_gemm.cuh"

namespace gptoss::cuda {
namespace {

constexpr int kRouterThreads = 256;
// Few rows: each row's experts are spread over blocks of 4 warps (a warp per expert), so the
// router weights (0.2 MB for 20b, 0.7 MB for 120b per layer) stream through many SMs, not one.
constexpr int kSplitThreads = 128, kSplitExperts = kSplitThreads / 32, kSplitMaxRows = 16;

// Router logit of expert row wr (bf16 [H]) for activations x, by one warp (all lanes get it).
__device__ __forceinline__ float router_logit(const float* x, const uint16_t* wr, int H, bool vec, int lane) {
  float acc = 0.f;
  const int H8 = vec ? H / 8 : 0;
  for (int k8 = lane; k8 < H8; k8 += 32) {
    const uint4 u = __ldg(reinterpret_cast<const uint4*>(wr) + k8);
    const float4 a = *reinterpret_cast<const float4*>(x + 8 * k8);
    const float4 c = *reinterpret_cast<const float4*>(x + 8 * k8 + 4);
    acc += a.x * __uint_as_float(u.x << 16) + a.y * __uint_as_float(u.x & 0xffff0000u) +
           a.z * __uint_as_float(u.y << 16) + a.w * __uint_as_float(u.y & 0xffff0000u) +
           c.x * __uint_as_float(u.z << 16) + c.y * __uint_as_float(u.z & 0xffff0000u) +
           c.z * __uint_as_float(u.w << 16) + c.w * __uint_as_float(u.w & 0xffff0000u);
  }
  for (int i = H8 * 8 + lane; i < H; i += 32) acc += x[i] * bf16_bits_to_float(wr[i]);
  return warp_sum(acc);
}

// The top k of lg[E] (descending, ties to the lower id) and the softmax over them, by one thread.
__device__ __forceinline__ void router_pick(const float* lg, int E, int k, int* chosen, int32_t* idx, float* w) {
  for (int s = 0; s < k; ++s) {
    int best = -1;
    for (int e = 0; e < E; ++e) {
      bool taken = false;
      for (int r = 0; r < s; ++r) taken |= chosen[r] == e;
      if (taken) continue;
      if (best < 0 || lg[e] > lg[best]) best = e;  // strict: ties keep the lower id
    }
    chosen[s] = best;
  }
  const float m = lg[chosen[0]];
  float sum = 0.f;
  for (int s = 0; s < k; ++s) sum += expf(lg[chosen[s]] - m);
  for (int s = 0; s < k; ++s) {
    idx[s] = chosen[s];
    w[s] = expf(lg[chosen[s]] - m) / sum;
  }
}

// One block per row. norm_w non-null: t = rmsnorm(xin) * norm_w is computed here first (and
// stored: the experts read it), which saves the separate RMSNorm launch; otherwise xin is t.
__global__ void __launch_bounds__(kRouterThreads) router_kernel(const float* xin, const float* norm_w, float eps,
                                                                float* tout, int H, const uint16_t* W,
                                                                const float* b, int E, int k, int32_t* idx,
                                                                float* w, bool vec, bool pre) {
  if (pre && blockIdx.x == 0) prefetch_l2(W, int64_t(E) * H * 2, threadIdx.x, kRouterThreads);
  grid_dependency_wait();
  extern __shared__ float lg[];  // [E] logits, then [k] chosen ids
  __shared__ float red[32];
  const int row = blockIdx.x;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = kRouterThreads / 32;
  const float* x = xin + int64_t(row) * H;
  if (norm_w) {
    float* t = tout + int64_t(row) * H;
    block_rmsnorm(x, H, norm_w, eps, t, red);
    __syncthreads();  // the whole row is written before any warp reads it
    x = t;
  }
  for (int e = warp; e < E; e += nw) {
    const float s = router_logit(x, W + int64_t(e) * H, H, vec, lane);
    if (lane == 0) lg[e] = s + b[e];
  }
  __syncthreads();
  if (threadIdx.x == 0)
    router_pick(lg, E, k, reinterpret_cast<int*>(lg + E), idx + int64_t(row) * k, w + int64_t(row) * k);
}

// Grid (rows, E / 4): block y computes experts 4y .. 4y+3 of its row into logits[row, :] (each
// block normalises the row itself; block 0 stores t); the last block of a row to arrive picks
// the top k from all E.
__global__ void __launch_bounds__(kSplitThreads) router_split_kernel(const float* xin, const float* norm_w, float eps,
                                                                     float* tout, int H, const uint16_t* W,
                                                                     const float* b, int E, int k, int32_t* idx,
                                                                     float* w, bool vec, float* logits,
                                                                     int32_t* arrivals, bool pre) {
  const int row = blockIdx.x, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int e = blockIdx.y * kSplitExperts + warp;
  if (pre && row == 0 && e < E) prefetch_l2(W + int64_t(e) * H, int64_t(H) * 2, lane, 32);
  grid_dependency_wait();
  extern __shared__ __align__(16) float sx[];  // [H] the normalised row (norm_w), [E] logits, [k] ids
  __shared__ float red[32];
  const float* x = xin + int64_t(row) * H;
  float* lg = sx;
  if (norm_w) {
    block_rmsnorm(x, H, norm_w, eps, sx, red);
    __syncthreads();
    if (blockIdx.y == 0)
      for (int i = threadIdx.x; i < H; i += kSplitThreads) tout[int64_t(row) * H + i] = sx[i];
    x = sx;
    lg = sx + H;
  }
  if (e < E) {
    const float s = router_logit(x, W + int64_t(e) * H, H, vec, lane);
    if (lane == 0) logits[int64_t(row) * E + e] = s + b[e];
  }
  if (!last_block_arrives(&arrivals[row], int(gridDim.y))) return;
  const volatile float* all = logits + int64_t(row) * E;
  for (int i = threadIdx.x; i < E; i += kSplitThreads) lg[i] = all[i];
  __syncthreads();
  if (threadIdx.x == 0)
    router_pick(lg, E, k, reinterpret_cast<int*>(lg + E), idx + int64_t(row) * k, w + int64_t(row) * k);
}

__global__ void __launch_bounds__(1024) route_kernel(const int32_t* idx, int P, int E, MoeTiles mt) {
  grid_dependency_wait();
  extern __shared__ int sh[];
  int* cnt = sh;
  int* off = sh + E;
  int* fill = sh + 2 * E;
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    cnt[e] = 0;
    fill[e] = 0;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < P; i += blockDim.x) atomicAdd(&cnt[idx[i]], 1);
  __syncthreads();
  if (threadIdx.x == 0) {
    int o = 0, nt = 0;
    for (int e = 0; e < E; ++e) {
      off[e] = o;
      for (int s = 0; s < cnt[e]; s += mt.tile) {
        mt.tile_e[nt] = e;
        mt.tile_start[nt] = o + s;
        mt.tile_count[nt] = min(mt.tile, cnt[e] - s);
        ++nt;
      }
      o += cnt[e];
    }
    *mt.n_tiles = nt;
  }
  __syncthreads();
  // Order inside an expert's list is arbitrary; every pair's result is computed independently.
  for (int i = threadIdx.x; i < P; i += blockDim.x) {
    const int e = idx[i];
    mt.sorted[off[e] + atomicAdd(&fill[e], 1)] = i;
  }
}

// ---- few pairs per expert (decode): fp16 tensor-core GEMV ----------------------------------
// A block computes 64 weight rows (four 16-row mma tiles) of one expert for a tile of up to 8
// pairs (the mma's 8 columns); its 8 warps take every 8th 32-weight block of K and sum their
// partial products through shared memory in a fixed order. A lane loads one 32-bit word of
// each of its 8 rows' blocks and decodes it in registers (e2m1x8_to_half2) straight into the A
// fragments, so each weight is decoded once per tile, whatever the number of pairs. The
// activations go in as two fp16 parts (hi + lo, 22 significant bits, two MMAs), so the
// products keep fp32-level accuracy; a lane splits its activations once per block for all four
// row tiles. Per 16 weight bytes a warp issues ~3.7 instructions (~3.0 with one fp16 part;
// bench/RESULTS.md), about what an H200 SM can issue (~3.4) while its share of the memory
// bandwidth delivers them; the previous kernel (a shared-memory lookup and an FMA per nibble
// and pair) needed ~7 at one pair, ~27 at four.
// Activations must stay within fp16 range (|x| < 65504).
constexpr int kGemvWarps = 8, kGemvRows = 64, kGemvPairs = 8;
constexpr int kMoeTT = kGemvPairs;  // pairs per tile on the GEMV path

struct MoeGemvArgs {
  const float* X;
  int ldx, topk;
  MoeTiles mt;
  MxWeights w;
  const float* rw;
  float alpha, limit;
  float* Y;
  int ldy;
  MoeCombine comb;  // mlp2 of one token: arrivals set -> the last block does add_rmsnorm
  bool pre;         // mlp2: prefetch the tile's expert rows before waiting (programmatic dependent launch)
};

// mlp2 under a programmatic dependency: this block's rows of its tile's expert, before it waits
// for mlp1 (prefetch_expert_rows, tc_gemm.cuh).
__device__ void moe_prefetch(const MoeGemvArgs& a) {
  const int tile = blockIdx.y;
  const bool direct = a.mt.direct > 0;
  if (a.w.E <= 0 || tile >= (direct ? a.mt.direct : __ldcg(a.mt.n_tiles))) return;
  const int row0 = blockIdx.x * kGemvRows;
  prefetch_expert_rows(direct ? a.mt.idx + tile : a.mt.tile_e + tile, a.w.E, a.w.blocks, a.w.scales, a.w.N, a.w.K,
                       row0, min(kGemvRows, a.w.N - row0), threadIdx.x, kGemvWarps * 32);
}

// NB > 0: K = 32 * NB and N a multiple of 64 (gpt-oss: NB = 90 for both projections), so a
// lane's eight rows sit at fixed offsets from one pointer: one address per iteration, not 16.
// SPLIT false: the activations as one fp16 (round to nearest), one MMA per step instead of two.
template <bool MLP1, int NB, bool SPLIT>
__global__ void __launch_bounds__(kGemvWarps * 32) moe_gemv_kernel(MoeGemvArgs a) {
  if (!MLP1 && a.pre) moe_prefetch(a);
  grid_dependency_wait();
  constexpr int MT = kGemvRows / 16;  // mma row tiles
  __shared__ float part[kGemvWarps][kGemvRows][kGemvPairs];
  const int tile = blockIdx.y;
  const bool direct = a.mt.direct > 0;
  if (tile >= (direct ? a.mt.direct : *a.mt.n_tiles)) return;
  const int e = direct ? a.mt.idx[tile] : a.mt.tile_e[tile];
  const int start = direct ? tile : a.mt.tile_start[tile], cnt = direct ? 1 : a.mt.tile_count[tile];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
  const int N = a.w.N, nb = NB > 0 ? NB : a.w.K / 32, row0 = blockIdx.x * kGemvRows;

  // This lane's rows: row0 + 8j + g (j = 0..7; tile m = j / 2 holds rows j = 2m and 2m + 1 as
  // its g and g + 8). Rows past N (NB = 0 only) read row N - 1 and are never stored.
  const uint32_t* wr[2 * MT];
  const uint8_t* sr[2 * MT];
#pragma unroll
  for (int j = 0; j < 2 * MT; ++j) {
    const int64_t rr = int64_t(e) * N + (NB > 0 ? row0 + g : min(row0 + 8 * j + g, N - 1));
    wr[j] = reinterpret_cast<const uint32_t*>(a.w.blocks + rr * nb * 16) + q + (NB > 0 ? j * 8 * NB * 4 : 0);
    sr[j] = a.w.scales + rr * nb + (NB > 0 ? j * 8 * NB : 0);
  }
  // This lane's activations: pair g of the tile (B column g), elements 8q .. 8q+7 of a block.
  const float* xr = nullptr;
  if (g < cnt) {
    const int pos = start + g;
    const int src = MLP1 ? (direct ? pos : a.mt.sorted[pos]) / a.topk : pos;
    xr = a.X + int64_t(src) * a.ldx + 8 * q;
  }

  float acc[MT][4] = {};
#pragma unroll 2
  for (int b = warp; b < nb; b += kGemvWarps) {
    uint32_t w[2 * MT];
    float sc[2 * MT];
#pragma unroll
    for (int j = 0; j < 2 * MT; ++j) {
      w[j] = __ldg(wr[j] + 4 * b);
      sc[j] = __uint_as_float(uint32_t(__ldg(sr[j] + b)) << 23);  // 2^(s-127); s = 0 (2^-127) as 0
    }
    // k is numbered so that lane q's word is its own: in step s, B rows (2q, 2q+1) are elements
    // (8q+2s, 8q+2s+4) and rows (2q+8, 2q+9) are (8q+2s+1, 8q+2s+5), matching h[2s], h[2s+1].
    uint32_t hi[2][2] = {{0u, 0u}, {0u, 0u}}, lo[2][2] = {{0u, 0u}, {0u, 0u}};
    if (xr) {
      const float4 u = *reinterpret_cast<const float4*>(xr + 32 * b);
      const float4 v = *reinterpret_cast<const float4*>(xr + 32 * b + 4);
      if (SPLIT) {
        split_half2(u.x, v.x, hi[0][0], lo[0][0]);
        split_half2(u.y, v.y, hi[0][1], lo[0][1]);
        split_half2(u.z, v.z, hi[1][0], lo[1][0]);
        split_half2(u.w, v.w, hi[1][1], lo[1][1]);
      } else {
        hi[0][0] = pack_half2(u.x, v.x);
        hi[0][1] = pack_half2(u.y, v.y);
        hi[1][0] = pack_half2(u.z, v.z);
        hi[1][1] = pack_half2(u.w, v.w);
      }
    }
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      uint32_t h0[4], h1[4];  // rows g and g + 8 of tile m
      e2m1x8_to_half2(w[2 * m], h0);
      e2m1x8_to_half2(w[2 * m + 1], h1);
      float c[4] = {0.f, 0.f, 0.f, 0.f};
      mma_f16_16816(c, {h0[0], h1[0], h0[1], h1[1]}, hi[0]);
      if (SPLIT) mma_f16_16816(c, {h0[0], h1[0], h0[1], h1[1]}, lo[0]);
      mma_f16_16816(c, {h0[2], h1[2], h0[3], h1[3]}, hi[1]);
      if (SPLIT) mma_f16_16816(c, {h0[2], h1[2], h0[3], h1[3]}, lo[1]);
      acc[m][0] += c[0] * sc[2 * m];
      acc[m][2] += c[2] * sc[2 * m + 1];
      if (cnt > 1) {  // columns 2q + 1: only pairs 1, 3, 5, 7 (warp-uniform)
        acc[m][1] += c[1] * sc[2 * m];
        acc[m][3] += c[3] * sc[2 * m + 1];
      }
    }
  }
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    part[warp][16 * m + g][2 * q] = acc[m][0];
    part[warp][16 * m + g][2 * q + 1] = acc[m][1];
    part[warp][16 * m + g + 8][2 * q] = acc[m][2];
    part[warp][16 * m + g + 8][2 * q + 1] = acc[m][3];
  }
  __syncthreads();
  // Row r, pair c: the warps' partials in warp order, times the 2^14 the decode took out.
  auto total = [&](int r, int c) {
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < kGemvWarps; ++i) s += part[i][r][c];
    return s * 16384.f;
  };
  const float* bias = a.w.bias + int64_t(e) * N;
  if (MLP1) {  // rows 2u (gate) and 2u + 1 (linear) -> unit row0 / 2 + u
    static_assert(kGemvWarps * 32 == kGemvRows / 2 * kGemvPairs, "one thread per (unit, pair)");
    const int u = threadIdx.x % (kGemvRows / 2), c = threadIdx.x / (kGemvRows / 2), r = row0 + 2 * u;
    if (c < cnt && r < N)
      a.Y[int64_t(start + c) * a.ldy + r / 2] =
          swiglu1(total(2 * u, c) + bias[r], total(2 * u + 1, c) + bias[r + 1], a.alpha, a.limit);
  } else {
    for (int i = threadIdx.x; i < kGemvRows * kGemvPairs; i += kGemvWarps * 32) {
      const int rl = i % kGemvRows, c = i / kGemvRows, r = row0 + rl;
      if (c < cnt && r < N) {
        const int pair = direct ? start + c : a.mt.sorted[start + c];
        a.Y[int64_t(pair) * a.ldy + r] = a.rw[pair] * (total(rl, c) + bias[r]);
      }
    }
    if (a.comb.arrivals) {  // one token: the last block to finish adds the k outputs into x, normalises
      __shared__ float red[32];
      if (!last_block_arrives(a.comb.arrivals, int(gridDim.x * gridDim.y))) return;
      block_add_rmsnorm(a.comb.x, static_cast<const volatile float*>(a.Y), a.mt.direct, N, a.comb.norm_w, a.comb.eps,
                        a.comb.t, red);
    }
  }
}

// The decode GEMV hands fp16 subnormals to the tensor cores in both operands: the E2M1 -> fp16
// decode turns E2M1's +-0.5 into +-2^-15 (A), and the hi/lo split of the activations makes the
// lo part of most of them, and both parts of the smallest, subnormal (B). One warp checks that
// either operand takes them as they are: 16 products of 2^-15 and 1 sum to 2^-11 (out[0]: the
// subnormals in A, out[1]: in B), or to 0 where subnormal inputs are flushed.
__global__ void subnormal_probe_kernel(float* out) {
  uint32_t h[4];
  e2m1x8_to_half2(0x11111111u, h);  // every element 0.5, times 2^-14: 2^-15
  const uint32_t one = pack_half2(1.f, 1.f), tiny = h[0];
  float c[4] = {0.f, 0.f, 0.f, 0.f}, d[4] = {0.f, 0.f, 0.f, 0.f};
  mma_f16_16816(c, {h[0], h[1], h[2], h[3]}, {one, one});
  mma_f16_16816(d, {one, one, one, one}, {tiny, tiny});
  if (threadIdx.x == 0) {
    out[0] = c[0];
    out[1] = d[0];
  }
}

void check_mx(const MxWeights& w) {
  if (w.K % 32 != 0) throw InvalidArgument("MXFP4 product: K must be a multiple of 32");
}

// The GEMV reads activations as float4.
void check_rows16(const float* x, int ldx) {
  if (ldx % 4 != 0 || (reinterpret_cast<uintptr_t>(x) & 15u) != 0)
    throw InvalidArgument("moe: expert activations must be 16-byte aligned rows (a multiple of 4 floats)");
}

bool gemv_nb90(const MxWeights& w) { return w.K == 32 * 90 && w.N % kGemvRows == 0; }

template <bool MLP1>
auto moe_gemv_instance(const MxWeights& w, bool split) {
  if (gemv_nb90(w)) return split ? moe_gemv_kernel<MLP1, 90, true> : moe_gemv_kernel<MLP1, 90, false>;
  return split ? moe_gemv_kernel<MLP1, 0, true> : moe_gemv_kernel<MLP1, 0, false>;
}

void check_tile(const MoeTiles& mt) {
  if (mt.gemm == TILES_AUTO || mt.tile != gemm_tile_rows(mt.gemm))
    throw InvalidArgument("moe: the grouping's tile size does not match the GEMM tile (use moe_plan)");
}

}  // namespace

void router(const float* t, int T, int H, const uint16_t* W, const float* b, int E, int k, int32_t* idx, float* w,
            cudaStream_t st, const RouterScratch* scratch) {
  norm_router(t, T, H, nullptr, 0.f, nullptr, W, b, E, k, idx, w, st, scratch);
}

int router_split_rows() { return kSplitMaxRows; }

void norm_router(const float* x, int T, int H, const float* norm_w, float eps, float* t, const uint16_t* W,
                 const float* b, int E, int k, int32_t* idx, float* w, cudaStream_t st, const RouterScratch* scratch) {
  if (T <= 0) return;
  const float* rows = norm_w ? t : x;  // what the dot products read (the split kernel: shared memory)
  const bool w16 = (reinterpret_cast<uintptr_t>(W) & 15u) == 0;
  if (scratch && T <= scratch->rows && T <= kSplitMaxRows && E > kSplitExperts) {
    const bool vec = H % 8 == 0 && w16 && (norm_w || (reinterpret_cast<uintptr_t>(x) & 15u) == 0);
    const size_t smem = sizeof(float) * (size_t(norm_w ? H : 0) + size_t(E)) + sizeof(int) * size_t(k);
    launch_kernel(router_split_kernel, dim3(unsigned(T), unsigned(cdiv(E, kSplitExperts))), kSplitThreads, smem, st,
                  x, norm_w, eps, t, H, W, b, E, k, idx, w, vec, scratch->logits, scratch->arrivals,
                  stream_prefetch(st));
    return;
  }
  const bool vec = H % 8 == 0 && w16 && (reinterpret_cast<uintptr_t>(rows) & 15u) == 0;
  const size_t smem = sizeof(float) * size_t(E) + sizeof(int) * size_t(k);
  launch_kernel(router_kernel, T, kRouterThreads, smem, st, x, norm_w, eps, t, H, W, b, E, k, idx, w, vec,
                stream_prefetch(st));
}

int moe_gemv_tile() { return kMoeTT; }

void subnormal_probe(float out[2]) {
  float* d = nullptr;
  CUDA_CHECK(cudaMalloc(&d, 2 * sizeof(float)));
  subnormal_probe_kernel<<<1, 32, 0, 0>>>(d);
  cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess) e = cudaMemcpy(out, d, 2 * sizeof(float), cudaMemcpyDeviceToHost);
  cudaFree(d);
  CUDA_CHECK(e);
}

bool moe_gemv_exact() {
  static std::mutex mu;
  static std::vector<int> known;  // per device: 0 unknown, 1 exact, 2 flushes
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  std::lock_guard<std::mutex> g(mu);
  if (size_t(dev) >= known.size()) known.resize(size_t(dev) + 1, 0);
  if (!known[size_t(dev)]) {
    float v[2];
    subnormal_probe(v);
    known[size_t(dev)] = v[0] == 1.f / 2048.f && v[1] == 1.f / 2048.f ? 1 : 2;
  }
  return known[size_t(dev)] == 1;
}

void moe_plan(MoeTiles& mt, bool tensor_cores, int P, int E, int tiles) {
  if (!tensor_cores) {
    mt.tile = kMoeTT;
  } else {
    if (tiles == TILES_AUTO) {  // by the pairs an expert gets on average
      const int64_t p = P, e = E;
      tiles = p >= 96 * e ? TILES_128x128 : p >= 24 * e ? TILES_64x128 : TILES_32x128;
    }
    mt.gemm = tiles;
    mt.tile = gemm_tile_rows(tiles);
  }
  mt.max_tiles = moe_max_tiles(P, E, mt.tile);
}

int moe_max_tiles(int P, int E, int tile) { return P / tile + (E < P ? E : P) + 1; }

void moe_route(const int32_t* idx, int P, int E, const MoeTiles& mt, cudaStream_t st) {
  if (P <= 0) {  // the expert kernels still launch (max_tiles >= 1) and read n_tiles
    CUDA_CHECK(cudaMemsetAsync(mt.n_tiles, 0, sizeof(int32_t), st));
    return;
  }
  launch_kernel(route_kernel, 1, 1024, sizeof(int) * 3 * size_t(E), st, idx, P, E, mt);
}

void moe_mlp1(const float* x, int ldx, int topk, const MoeTiles& mt, const MxWeights& w, float alpha, float limit,
              float* act, bool tensor_cores, cudaStream_t st, bool split) {
  check_mx(w);
  if (mt.direct > 0 && tensor_cores) throw InvalidArgument("moe: direct pairs are a GEMV-path mode");
  if (mt.max_tiles <= 0) return;
  if (tensor_cores) {
    TcArgs a;
    a.X = x; a.ldx = ldx; a.K = w.K; a.N = w.N; a.blocks = w.blocks; a.scales = w.scales; a.bias = w.bias;
    a.Y = act; a.ldy = w.N / 2; a.sorted = mt.sorted; a.tile_e = mt.tile_e; a.tile_start = mt.tile_start;
    a.tile_count = mt.tile_count; a.n_tiles = mt.n_tiles; a.topk = topk; a.alpha = alpha; a.limit = limit;
    a.vec = ldx % 4 == 0 && (reinterpret_cast<uintptr_t>(x) & 15u) == 0;
    a.split = split;
    check_tile(mt);
    moe_gemm(true, mt.gemm, a, unsigned(mt.max_tiles), st);
    return;
  } else {
    check_rows16(x, ldx);
    MoeGemvArgs a{x, ldx, topk, mt, w, nullptr, alpha, limit, act, w.N / 2, MoeCombine{}, false};
    dim3 grid(unsigned(cdiv(w.N, kGemvRows)), unsigned(mt.max_tiles));
    launch_kernel(moe_gemv_instance<true>(w, split), grid, kGemvWarps * 32, 0, st, a);
  }
}

bool moe_mlp2(const float* act, const MoeTiles& mt, const MxWeights& w, const float* rw, float* y, bool tensor_cores,
              cudaStream_t st, bool split, const MoeCombine* comb) {
  check_mx(w);
  if (mt.direct > 0 && tensor_cores) throw InvalidArgument("moe: direct pairs are a GEMV-path mode");
  if (mt.max_tiles <= 0) return false;
  if (tensor_cores) {
    TcArgs a;
    a.X = act; a.ldx = w.K; a.K = w.K; a.N = w.N; a.blocks = w.blocks; a.scales = w.scales; a.bias = w.bias;
    a.Y = y; a.ldy = w.N; a.sorted = mt.sorted; a.tile_e = mt.tile_e; a.tile_start = mt.tile_start;
    a.tile_count = mt.tile_count; a.n_tiles = mt.n_tiles; a.topk = 1; a.rw = rw;
    a.vec = (reinterpret_cast<uintptr_t>(act) & 15u) == 0;
    a.split = split;
    a.E = w.E;
    a.pre = stream_prefetch(st);
    check_tile(mt);
    moe_gemm(false, mt.gemm, a, unsigned(mt.max_tiles), st);
    return false;
  }
  check_rows16(act, w.K);
  MoeGemvArgs a{act, w.K, 1, mt, w, rw, 0.f, 0.f, y, w.N, MoeCombine{}, stream_prefetch(st)};
  // Every block must count itself in: only when each tile is one direct pair.
  const bool fuse = comb && comb->arrivals && mt.direct > 0 && mt.max_tiles == mt.direct;
  if (fuse) a.comb = *comb;
  dim3 grid(unsigned(cdiv(w.N, kGemvRows)), unsigned(mt.max_tiles));
  launch_kernel(moe_gemv_instance<false>(w, split), grid, kGemvWarps * 32, 0, st, a);
  return fuse;
}

void moe_kernels(std::vector<KernelEntry>& v) {
  GPTOSS_KERNEL_ENTRY(v, kRouterThreads, router_kernel);
  GPTOSS_KERNEL_ENTRY(v, kSplitThreads, router_split_kernel);
  GPTOSS_KERNEL_ENTRY(v, 1024, route_kernel);
  GPTOSS_KERNEL_ENTRY(v, kGemvWarps * 32, moe_gemv_kernel<true, 90, true>);
  GPTOSS_KERNEL_ENTRY(v, kGemvWarps * 32, moe_gemv_kernel<true, 90, false>);
  GPTOSS_KERNEL_ENTRY(v, kGemvWarps * 32, moe_gemv_kernel<true, 0, true>);
  GPTOSS_KERNEL_ENTRY(v, kGemvWarps * 32, moe_gemv_kernel<true, 0, false>);
  GPTOSS_KERNEL_ENTRY(v, kGemvWarps * 32, moe_gemv_kernel<false, 90, true>);
  GPTOSS_KERNEL_ENTRY(v, kGemvWarps * 32, moe_gemv_kernel<false, 90, false>);
  GPTOSS_KERNEL_ENTRY(v, kGemvWarps * 32, moe_gemv_kernel<false, 0, true>);
  GPTOSS_KERNEL_ENTRY(v, kGemvWarps * 32, moe_gemv_kernel<false, 0, false>);
  GPTOSS_KERNEL_ENTRY(v, 32, subnormal_probe_kernel);
}

}  // namespace gptoss::cuda
