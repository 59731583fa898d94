// Attention over the paged KV cache with per-head sinks, GQA, causal mask and sliding window.
//
// One kernel serves decode and prefill. A block takes one group of consecutive query rows of
// one sequence (1 row when decoding, up to 64/G rows in prefill), one KV head (so its G query
// heads share every K/V load) and one split of the key range (flash-decoding: long contexts
// are cut into splits that run in parallel). Keys are staged through shared memory in tiles
// of 32 (converted to fp32 from the fp32 or bf16 cache); each warp owns a few (row, head)
// pairs and keeps an online softmax (running max m, sum l, output o) in registers: lane j
// scores key j of the tile, then every lane accumulates its head_dim/32 output dimensions.
// The splits are merged with the sink in the denominator (merge_pair) by the last split block
// of each group and KV head to finish (an arrival count per pair), or, without the counts, by a
// second kernel; with a single split (window layers, short contexts) the block finishes alone.
#include <mutex>
#include <vector>

#include <cuda_bf16.h>
#include <mma.h>

#include "common.cuh"
#include "kernels.cuh"

namespace gptoss::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kTile = 32;     // keys per shared-memory tile
constexpr int kMaxComb = 64;  // (row, head) pairs per block
constexpr int kCPW = kMaxComb / kWarps;

template <typename KV>
struct KVLoad;
template <>
struct KVLoad<float> {
  static __device__ __forceinline__ float4 load4(const void* pool, int64_t i) {
    return *reinterpret_cast<const float4*>(static_cast<const float*>(pool) + i);
  }
};
template <>
struct KVLoad<uint16_t> {
  static __device__ __forceinline__ float4 load4(const void* pool, int64_t i) {
    const uint2 u = *reinterpret_cast<const uint2*>(static_cast<const uint16_t*>(pool) + i);
    return make_float4(__uint_as_float(u.x << 16), __uint_as_float(u.x & 0xffff0000u), __uint_as_float(u.y << 16),
                       __uint_as_float(u.y & 0xffff0000u));
  }
};

// What block (group, kv head, split) covers: its group, GQA shape and key range [s_lo, s_hi].
// split_len 0: the group's own key range cut into n_splits pieces of whole tiles, so one launch
// shape (and one captured CUDA graph) serves every context length.
struct BlockWork {
  AttnGroup g;
  int kvh, split, n_kv, G, B, ncomb, s_lo, s_hi;
  __device__ explicit BlockWork(const AttnArgs& a)
      : g(a.groups[blockIdx.x]), kvh(blockIdx.y), split(blockIdx.z), n_kv(a.kv.n_kv), G(a.n_heads / a.kv.n_kv),
        B(a.kv.block_size), ncomb(g.nrows * G) {
    const int last = g.pos0 + g.nrows - 1;
    const int lo = a.window > 0 ? max(0, g.pos0 - a.window + 1) : 0;
    int split_len = a.split_len;
    if (split_len <= 0) {
      const int per = (last - lo + 1 + a.n_splits - 1) / a.n_splits;
      split_len = (per + kTile - 1) / kTile * kTile;
    }
    s_lo = lo + split * split_len;
    s_hi = min(last, s_lo + split_len - 1);
  }
};

// Output (row, head h) from its n_splits partials (o, m, l) and the sink, by one warp:
//   o = sum_s e^(m_s - M) o_s / (e^(S_h - M) + sum_s e^(m_s - M) l_s),  M = max(S_h, m_s).
// Volatile reads: in merge_if_last the partials come from other blocks of the same launch.
__device__ void merge_pair(const AttnArgs& a, int row, int h, int D, int lane) {
  const volatile float* part = a.part + (int64_t(row) * a.n_heads + h) * a.n_splits * (D + 2);
  const float sink = a.sinks[h];
  float M = sink;
  for (int s = 0; s < a.n_splits; ++s) M = fmaxf(M, part[s * (D + 2) + D]);
  float denom = expf(sink - M);
  for (int s = 0; s < a.n_splits; ++s) {
    const float ms = part[s * (D + 2) + D];
    if (ms != -INFINITY) denom += expf(ms - M) * part[s * (D + 2) + D + 1];
  }
  const float inv = 1.0f / denom;
  for (int d = lane; d < D; d += 32) {
    float acc = 0.f;
    for (int s = 0; s < a.n_splits; ++s) {
      const float ms = part[s * (D + 2) + D];
      if (ms != -INFINITY) acc += expf(ms - M) * part[s * (D + 2) + d];
    }
    a.out[int64_t(row) * a.ldo + h * D + d] = acc * inv;
  }
}

// After a block wrote its partials (a.arrivals set): the last of its group's splits to arrive,
// per KV head, merges them all (the merge kernel's work without its launch) and resets the count
// for the next launch.
__device__ void merge_if_last(const AttnArgs& a, const BlockWork& w, int D) {
  __shared__ bool last;
  __threadfence();  // this block's partials are visible device-wide before it counts itself in
  __syncthreads();
  if (threadIdx.x == 0) {
    int32_t* count = a.arrivals + int64_t(blockIdx.x) * w.n_kv + w.kvh;
    last = atomicAdd(count, 1) == a.n_splits - 1;
    if (last) *count = 0;
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int c = warp; c < w.ncomb; c += kWarps) merge_pair(a, w.g.row0 + c / w.G, w.kvh * w.G + c % w.G, D, lane);
}

template <int D, typename KV>
__global__ void __launch_bounds__(kThreads) attn_kernel(AttnArgs a) {
  grid_dependency_wait();
  constexpr int DPL = D / 32;  // output dims per lane
  extern __shared__ __align__(16) float smem[];  // float4 accesses
  float* q_s = smem;                    // [kMaxComb][D]
  float* k_s = q_s + kMaxComb * D;      // [kTile][D + 1]
  float* v_s = k_s + kTile * (D + 1);   // [kTile][D]

  const BlockWork w(a);
  const AttnGroup& g = w.g;
  const int kvh = w.kvh, split = w.split, n_kv = w.n_kv, G = w.G, B = w.B, ncomb = w.ncomb, s_lo = w.s_lo,
            s_hi = w.s_hi;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int32_t* table = a.tables + g.table_off;

  for (int idx = threadIdx.x; idx < ncomb * D; idx += kThreads) {
    const int c = idx / D, d = idx % D;
    const int r = c / G, hh = c % G;
    q_s[idx] = a.q[int64_t(g.row0 + r) * a.ldq + (kvh * G + hh) * D + d];
  }

  float m[kCPW], l[kCPW], o[kCPW][DPL];
#pragma unroll
  for (int c = 0; c < kCPW; ++c) {
    m[c] = -INFINITY;
    l[c] = 0.f;
#pragma unroll
    for (int dd = 0; dd < DPL; ++dd) o[c][dd] = 0.f;
  }

  for (int j0 = s_lo; j0 <= s_hi; j0 += kTile) {
    __syncthreads();  // previous tile fully consumed (and q_s written on the first pass)
    for (int idx = threadIdx.x; idx < kTile * (D / 4); idx += kThreads) {
      const int jj = idx / (D / 4), d4 = (idx % (D / 4)) * 4;
      const int key = j0 + jj;
      float4 kv4 = make_float4(0.f, 0.f, 0.f, 0.f), vv4 = kv4;
      if (key <= s_hi) {
        const int64_t blk = table[key / B];
        const int64_t base = blk * a.kv.block_elems + a.kv.layer_offset + (int64_t(kvh) * B + key % B) * D + d4;
        kv4 = KVLoad<KV>::load4(a.kv.pool, base);
        vv4 = KVLoad<KV>::load4(a.kv.pool, base + int64_t(n_kv) * B * D);
      }
      float* kd = k_s + jj * (D + 1) + d4;
      kd[0] = kv4.x;
      kd[1] = kv4.y;
      kd[2] = kv4.z;
      kd[3] = kv4.w;
      *reinterpret_cast<float4*>(v_s + jj * D + d4) = vv4;
    }
    __syncthreads();

    float kr[D];
#pragma unroll
    for (int d = 0; d < D; ++d) kr[d] = k_s[lane * (D + 1) + d];
    const int kj = j0 + lane;

#pragma unroll
    for (int c = 0; c < kCPW; ++c) {
      const int comb = warp + kWarps * c;
      if (comb < ncomb) {
        const int posr = g.pos0 + comb / G;
        const bool valid = kj <= s_hi && kj <= posr && (a.window <= 0 || kj > posr - a.window);
        const float* qc = q_s + comb * D;
        float s = 0.f;
#pragma unroll
        for (int d = 0; d < D; d += 4) {
          const float4 qv = *reinterpret_cast<const float4*>(qc + d);
          s += qv.x * kr[d] + qv.y * kr[d + 1] + qv.z * kr[d + 2] + qv.w * kr[d + 3];
        }
        s = valid ? s * a.scale : -INFINITY;
        const float mnew = fmaxf(m[c], warp_max(s));
        if (mnew != -INFINITY) {
          const float p = valid ? expf(s - mnew) : 0.f;
          const float corr = expf(m[c] - mnew);  // 0 while m is -inf
          l[c] = l[c] * corr + warp_sum(p);
#pragma unroll
          for (int dd = 0; dd < DPL; ++dd) o[c][dd] *= corr;
#pragma unroll 8
          for (int jj = 0; jj < kTile; ++jj) {
            const float pj = __shfl_sync(0xffffffffu, p, jj);
#pragma unroll
            for (int dd = 0; dd < DPL; ++dd) o[c][dd] += pj * v_s[jj * D + lane + 32 * dd];
          }
          m[c] = mnew;
        }
      }
    }
  }

  if (a.n_splits == 1) {  // the whole range was this block's: add the sink and finish here
#pragma unroll
    for (int c = 0; c < kCPW; ++c) {
      const int comb = warp + kWarps * c;
      if (comb < ncomb) {
        const int r = comb / G, h = kvh * G + comb % G;
        const float sink = a.sinks[h];
        const float M = fmaxf(sink, m[c]);
        const float w = m[c] == -INFINITY ? 0.f : expf(m[c] - M);
        const float inv = 1.0f / (expf(sink - M) + w * l[c]);
        float* dst = a.out + int64_t(g.row0 + r) * a.ldo + h * D;
#pragma unroll
        for (int dd = 0; dd < DPL; ++dd) dst[lane + 32 * dd] = o[c][dd] * w * inv;
      }
    }
    return;
  }
#pragma unroll
  for (int c = 0; c < kCPW; ++c) {
    const int comb = warp + kWarps * c;
    if (comb < ncomb) {
      const int r = comb / G, hh = comb % G;
      const int64_t slot = (int64_t(g.row0 + r) * a.n_heads + kvh * G + hh) * a.n_splits + split;
      float* dst = a.part + slot * (D + 2);
#pragma unroll
      for (int dd = 0; dd < DPL; ++dd) dst[lane + 32 * dd] = o[c][dd];
      if (lane == 0) {
        dst[D] = m[c];
        dst[D + 1] = l[c];
      }
    }
  }
  if (a.arrivals) merge_if_last(a, w, D);
}

// ---- prefill on tensor cores (head_dim 64, groups of several rows) -------------------------
// The block's 64 (row, head) pairs are the M dimension of S = Q K^T (64 x 32 keys) and of
// O += P V. Every operand is split as x = hi + lo in bf16 and each product takes three MMAs
// (hi*hi + lo*hi + hi*lo), so the result keeps ~16 mantissa bits like the fp32 kernel above
// (a.split = false: the hi parts only, one MMA, bf16-level results).
// Warp w owns pairs 16w..16w+15: its S tile, their online softmax (a lane pair per pair) and its
// rows of O, which live in shared memory (fp32) so the per-row rescaling needs no knowledge of
// the accumulator fragments' layout.
namespace tc {
constexpr int D = 64, LQ = D + 8, LS = kTile + 4, LP = kTile + 8, LO = D + 4;
// Byte offsets of the shared-memory regions (each 128-byte aligned, as wmma wants 32).
constexpr size_t al(size_t x) { return (x + 127) / 128 * 128; }
constexpr size_t kQh = 0, kQl = al(kQh + 2 * kMaxComb * LQ), kKh = al(kQl + 2 * kMaxComb * LQ),
                 kKl = al(kKh + 2 * kTile * LQ), kVh = al(kKl + 2 * kTile * LQ), kVl = al(kVh + 2 * kTile * LQ),
                 kS = al(kVl + 2 * kTile * LQ), kPh = al(kS + 4 * kMaxComb * LS), kPl = al(kPh + 2 * kMaxComb * LP),
                 kO = al(kPl + 2 * kMaxComb * LP), kM = al(kO + 4 * kMaxComb * LO), kL = kM + 4 * kMaxComb,
                 kBytes = kL + 4 * kMaxComb;

__device__ __forceinline__ void split_bf16(float x, __nv_bfloat16* hi, __nv_bfloat16* lo) {
  const __nv_bfloat16 h = __float2bfloat16_rn(x);
  *hi = h;
  *lo = __float2bfloat16_rn(x - __bfloat162float(h));
}
}  // namespace tc

template <typename KV>
__global__ void __launch_bounds__(kThreads) attn_tc_kernel(AttnArgs a) {
  grid_dependency_wait();
  using namespace nvcuda;
  using namespace tc;
  // Its own name: extern shared arrays of one name share one declaration (and alignment) per file,
  // and wmma wants 32-byte aligned tiles behind the static shared variables.
  extern __shared__ __align__(128) float tc_smem[];
  unsigned char* sm = reinterpret_cast<unsigned char*>(tc_smem);
  __nv_bfloat16* qh = reinterpret_cast<__nv_bfloat16*>(sm + kQh);
  __nv_bfloat16* ql = reinterpret_cast<__nv_bfloat16*>(sm + kQl);
  __nv_bfloat16* kh = reinterpret_cast<__nv_bfloat16*>(sm + kKh);
  __nv_bfloat16* kl = reinterpret_cast<__nv_bfloat16*>(sm + kKl);
  __nv_bfloat16* vh = reinterpret_cast<__nv_bfloat16*>(sm + kVh);
  __nv_bfloat16* vl = reinterpret_cast<__nv_bfloat16*>(sm + kVl);
  float* S = reinterpret_cast<float*>(sm + kS);
  __nv_bfloat16* ph = reinterpret_cast<__nv_bfloat16*>(sm + kPh);
  __nv_bfloat16* pl = reinterpret_cast<__nv_bfloat16*>(sm + kPl);
  float* O = reinterpret_cast<float*>(sm + kO);
  float* Ms = reinterpret_cast<float*>(sm + kM);
  float* Ls = reinterpret_cast<float*>(sm + kL);

  const BlockWork w(a);
  const AttnGroup& g = w.g;
  const int kvh = w.kvh, split = w.split, n_kv = w.n_kv, G = w.G, B = w.B, ncomb = w.ncomb, s_lo = w.s_lo,
            s_hi = w.s_hi;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int32_t* table = a.tables + g.table_off;

  // q (pre-scaled) as hi/lo; pairs past ncomb are zero rows. O = 0, m = -inf, l = 0.
  for (int idx = threadIdx.x; idx < kMaxComb * D; idx += kThreads) {
    const int c = idx / D, d = idx % D;
    float v = 0.f;
    if (c < ncomb) v = a.q[int64_t(g.row0 + c / G) * a.ldq + (kvh * G + c % G) * D + d] * a.scale;
    split_bf16(v, qh + c * LQ + d, ql + c * LQ + d);
    O[c * LO + d] = 0.f;
  }
  for (int c = threadIdx.x; c < kMaxComb; c += kThreads) {
    Ms[c] = -INFINITY;
    Ls[c] = 0.f;
  }

  // This lane's pair of the softmax: row r (a (row, head) pair), columns 16h .. 16h+15.
  const int r = warp * 16 + (lane >> 1), h = lane & 1;
  const int posr = g.pos0 + r / G;
  for (int j0 = s_lo; j0 <= s_hi; j0 += kTile) {
    __syncthreads();  // the previous tile's K/V are consumed (and q, O, m, l are set)
    for (int idx = threadIdx.x; idx < kTile * (D / 4); idx += kThreads) {
      const int jj = idx / (D / 4), d4 = (idx % (D / 4)) * 4;
      const int key = j0 + jj;
      float4 k4 = make_float4(0.f, 0.f, 0.f, 0.f), v4 = k4;
      if (key <= s_hi) {
        const int64_t blk = table[key / B];
        const int64_t base = blk * a.kv.block_elems + a.kv.layer_offset + (int64_t(kvh) * B + key % B) * D + d4;
        k4 = KVLoad<KV>::load4(a.kv.pool, base);
        v4 = KVLoad<KV>::load4(a.kv.pool, base + int64_t(n_kv) * B * D);
      }
      const float kk[4] = {k4.x, k4.y, k4.z, k4.w}, vv[4] = {v4.x, v4.y, v4.z, v4.w};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        split_bf16(kk[i], kh + jj * LQ + d4 + i, kl + jj * LQ + d4 + i);
        split_bf16(vv[i], vh + jj * LQ + d4 + i, vl + jj * LQ + d4 + i);
      }
    }
    __syncthreads();

    // S[16 pairs of this warp][32 keys] = q k^T (k as a column-major D x 32 operand).
#pragma unroll
    for (int jn = 0; jn < 2; ++jn) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::fill_fragment(acc, 0.f);
#pragma unroll
      for (int kk = 0; kk < D; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> ah, al;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> bh, bl;
        wmma::load_matrix_sync(ah, qh + warp * 16 * LQ + kk, LQ);
        wmma::load_matrix_sync(bh, kh + jn * 16 * LQ + kk, LQ);
        if (a.split) {
          wmma::load_matrix_sync(al, ql + warp * 16 * LQ + kk, LQ);
          wmma::load_matrix_sync(bl, kl + jn * 16 * LQ + kk, LQ);
          wmma::mma_sync(acc, al, bh, acc);
          wmma::mma_sync(acc, ah, bl, acc);
        }
        wmma::mma_sync(acc, ah, bh, acc);
      }
      wmma::store_matrix_sync(S + warp * 16 * LS + jn * 16, acc, LS, wmma::mem_row_major);
    }
    __syncwarp();

    // Online softmax of row r over this tile; P = e^(s - m_new) as hi/lo, O's row rescaled.
    {
      const float* srow = S + r * LS + 16 * h;
      float s[16];
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        const int key = j0 + 16 * h + j;
        const bool valid = r < ncomb && key <= s_hi && key <= posr && (a.window <= 0 || key > posr - a.window);
        s[j] = valid ? srow[j] : -INFINITY;
        mx = fmaxf(mx, s[j]);
      }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      const float mold = Ms[r];
      const float mnew = fmaxf(mold, mx);
      float sum = 0.f;
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        const float p = mnew == -INFINITY || s[j] == -INFINITY ? 0.f : expf(s[j] - mnew);
        sum += p;
        split_bf16(p, ph + r * LP + 16 * h + j, pl + r * LP + 16 * h + j);
      }
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      const float corr = mold == -INFINITY ? 0.f : expf(mold - mnew);
#pragma unroll 8
      for (int d = 32 * h; d < 32 * h + 32; ++d) O[r * LO + d] *= corr;
      __syncwarp();  // both lanes of the pair have read m before it changes
      if (h == 0) {
        Ls[r] = Ls[r] * corr + sum;
        Ms[r] = mnew;
      }
    }
    __syncwarp();

    // O[16 pairs][64] += P[16][32] V[32][64].
#pragma unroll
    for (int dn = 0; dn < D; dn += 16) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::load_matrix_sync(acc, O + warp * 16 * LO + dn, LO, wmma::mem_row_major);
#pragma unroll
      for (int kk = 0; kk < kTile; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> ah, al;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> bh, bl;
        wmma::load_matrix_sync(ah, ph + warp * 16 * LP + kk, LP);
        wmma::load_matrix_sync(bh, vh + kk * LQ + dn, LQ);
        if (a.split) {
          wmma::load_matrix_sync(al, pl + warp * 16 * LP + kk, LP);
          wmma::load_matrix_sync(bl, vl + kk * LQ + dn, LQ);
          wmma::mma_sync(acc, al, bh, acc);
          wmma::mma_sync(acc, ah, bl, acc);
        }
        wmma::mma_sync(acc, ah, bh, acc);
      }
      wmma::store_matrix_sync(O + warp * 16 * LO + dn, acc, LO, wmma::mem_row_major);
    }
    __syncwarp();
  }
  __syncthreads();

  // Out: with one split add the sink and finish, else the partial (o, m, l) for the merge.
  for (int idx = threadIdx.x; idx < ncomb * D; idx += kThreads) {
    const int c = idx / D, d = idx % D;
    const int hq = kvh * G + c % G;
    const float m = Ms[c], l = Ls[c];
    if (a.n_splits == 1) {
      const float sink = a.sinks[hq];
      const float M = fmaxf(sink, m);
      const float w = m == -INFINITY ? 0.f : expf(m - M);
      a.out[int64_t(g.row0 + c / G) * a.ldo + hq * D + d] = O[c * LO + d] * w / (expf(sink - M) + w * l);
    } else {
      const int64_t slot = (int64_t(g.row0 + c / G) * a.n_heads + hq) * a.n_splits + split;
      float* dst = a.part + slot * (D + 2);
      dst[d] = O[c * LO + d];
      if (d == 0) {
        dst[D] = m;
        dst[D + 1] = l;
      }
    }
  }
  if (a.n_splits > 1 && a.arrivals) merge_if_last(a, w, D);
}

// One warp per (row, head): merge the splits with the sink (when no arrival counts are given).
__global__ void attn_combine_kernel(AttnArgs a, int D) {
  grid_dependency_wait();
  const int h = blockIdx.y * kWarps + (threadIdx.x >> 5);
  if (h < a.n_heads) merge_pair(a, blockIdx.x, h, D, threadIdx.x & 31);
}

template <int D>
size_t attn_smem() {
  return sizeof(float) * (size_t(kMaxComb) * D + size_t(kTile) * (D + 1) + size_t(kTile) * D);
}

template <int D, typename KV>
void allow_smem() {
  const size_t smem = attn_smem<D>();
  if (smem > 48 * 1024)
    CUDA_CHECK(cudaFuncSetAttribute(attn_kernel<D, KV>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
}

// The kernels' shared-memory opt-in, once per device (outside any graph capture: the engine
// calls attention_prepare when it starts).
void prepare_device() {
  once_per_device([] {
    allow_smem<32, float>(); allow_smem<32, uint16_t>();
    allow_smem<64, float>(); allow_smem<64, uint16_t>();
    allow_smem<128, float>(); allow_smem<128, uint16_t>();
    CUDA_CHECK(cudaFuncSetAttribute(attn_tc_kernel<float>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(tc::kBytes)));
    CUDA_CHECK(cudaFuncSetAttribute(attn_tc_kernel<uint16_t>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(tc::kBytes)));
  });
}

template <typename KV>
void launch_tc(const AttnArgs& a, cudaStream_t st) {
  prepare_device();
  dim3 grid(a.n_groups, a.kv.n_kv, a.n_splits);
  launch_kernel(attn_tc_kernel<KV>, grid, kThreads, tc::kBytes, st, a);
}

template <int D, typename KV>
void launch(const AttnArgs& a, cudaStream_t st) {
  prepare_device();
  const size_t smem = attn_smem<D>();
  dim3 grid(a.n_groups, a.kv.n_kv, a.n_splits);
  launch_kernel(attn_kernel<D, KV>, grid, kThreads, smem, st, a);
}

}  // namespace

int attn_rows_per_group(int n_heads, int n_kv) {
  const int G = n_heads / n_kv;
  return G > kMaxComb ? 0 : kMaxComb / G;
}

bool attn_head_dim_supported(int head_dim) { return head_dim == 32 || head_dim == 64 || head_dim == 128; }

void attention_prepare() { prepare_device(); }

void attn_plan(AttnArgs& a, int max_span, int64_t part_cap, int sm_count) {
  max_span = max_span < 1 ? 1 : max_span;
  const int64_t blocks = std::max<int64_t>(1, int64_t(a.n_groups) * a.kv.n_kv);  // T = 0: no groups
  int64_t want = cdiv(int64_t(2) * sm_count, blocks);               // fill the GPU twice over
  // At least one 32-key tile per split: a block walks its tiles one after the other (load,
  // barrier, compute), so at batch 1 a short context is latency, not bandwidth: 1k keys in 32
  // splits of one tile, not 8 of four (until session 4: >= 128 keys per split).
  want = std::min<int64_t>(want, cdiv(max_span, kTile));
  want = std::min<int64_t>(want, part_cap / std::max(a.T, 1));       // partial-buffer capacity
  int ns = 1;  // a power of two: few distinct launch shapes (CUDA graphs are keyed on it)
  while (2 * ns <= want) ns *= 2;
  a.split_len = 0;  // each group cuts its own range (attn_kernel)
  a.n_splits = ns;
}

void attention(const AttnArgs& a, cudaStream_t st) {
  if (a.T <= 0 || a.n_groups <= 0) return;
  const int D = a.kv.head_dim;
  if (a.n_heads / a.kv.n_kv > kMaxComb) throw InvalidArgument("attention: more than 64 query heads per KV head");
  // Tensor cores for prefill (some group has several rows, so the 64-row MMAs are mostly full);
  // decode (one row per group) keeps the CUDA-core kernel. path: 1 forces CUDA cores, 2 tensor cores.
  const bool tc = D == 64 && (a.path == 2 || (a.path == 0 && a.T > a.n_groups));
  if (tc) {
    a.kv.bf16 ? launch_tc<uint16_t>(a, st) : launch_tc<float>(a, st);
  } else switch (D) {
    case 32: a.kv.bf16 ? launch<32, uint16_t>(a, st) : launch<32, float>(a, st); break;
    case 64: a.kv.bf16 ? launch<64, uint16_t>(a, st) : launch<64, float>(a, st); break;
    case 128: a.kv.bf16 ? launch<128, uint16_t>(a, st) : launch<128, float>(a, st); break;
    default: throw InvalidArgument("attention: head_dim must be 32, 64 or 128 on CUDA, got " + std::to_string(D));
  }
  if (a.n_splits == 1 || a.arrivals) return;  // the attention kernel wrote the output
  dim3 grid(a.T, int(cdiv(a.n_heads, kWarps)));
  launch_kernel(attn_combine_kernel, grid, kThreads, 0, st, a, D);
}

}  // namespace gptoss::cuda
