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

#include "common.cuh"
#include "kernels.cuh"
#include "mma_sync.cuh"

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
// per KV head, merges them all (the merge kernel's work without its launch).
__device__ void merge_if_last(const AttnArgs& a, const BlockWork& w, int D) {
  if (!last_block_arrives(a.arrivals + int64_t(blockIdx.x) * w.n_kv + w.kvh, a.n_splits)) return;
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
// O += P V, on register-level bf16 MMAs (mma_sync.cuh). Every operand is split as x = hi + lo
// and each product takes three MMAs (hi*hi + lo*hi + hi*lo), so the result keeps ~16 mantissa
// bits like the fp32 kernel above (a.split = false: the hi parts only, one MMA, bf16-level).
// Warp w owns pairs 16w..16w+15 and keeps everything about them in registers: its Q fragments,
// its S tile (4 n-tiles of 8 keys), the online softmax (row g's values sit in lanes 4g..4g+3),
// and its 16 x 64 block of O. The accumulator layout of S is the A-operand layout of P, so P
// goes from S to the second product without shared memory. K (row-major) and V (transposed)
// are staged per 32-key tile as bf16 hi/lo; one ldmatrix.x4 loads the B operands of two n-tiles.
namespace tc {
constexpr int D = 64, LQ = D + 8, LV = kTile + 8;  // row strides in bf16 (+8: fewer bank conflicts)
constexpr size_t kQh = 0, kQl = kQh + 2 * kMaxComb * LQ, kKh = kQl + 2 * kMaxComb * LQ, kKl = kKh + 2 * kTile * LQ,
                 kVh = kKl + 2 * kTile * LQ, kVl = kVh + 2 * D * LV, kBytes = kVl + 2 * D * LV;

__device__ __forceinline__ void split_bf16(float x, __nv_bfloat16* hi, __nv_bfloat16* lo) {
  const __nv_bfloat16 h = __float2bfloat16_rn(x);
  *hi = h;
  *lo = __float2bfloat16_rn(x - __bfloat162float(h));
}
// Two floats as bf16x2 hi and lo parts (round to nearest: hi + lo keeps ~16 significant bits).
__device__ __forceinline__ void split_pair(float a, float b, uint32_t& hi, uint32_t& lo) {
  hi = pack_bf16x2(a, b);
  lo = pack_bf16x2(a - __uint_as_float(hi << 16), b - __uint_as_float(hi & 0xffff0000u));
}
__device__ __forceinline__ uint32_t ld32(const __nv_bfloat16* p) { return *reinterpret_cast<const uint32_t*>(p); }

// d0, d1 += A B for the two n-tiles whose B operands one ldmatrix.x4 loads at bh (hi parts) and
// bl (lo parts): hi*hi, and with split also lo(A)*hi(B) + hi(A)*lo(B).
__device__ __forceinline__ void mma2_split(float (&d0)[4], float (&d1)[4], const uint32_t (&ah)[4],
                                           const uint32_t (&al)[4], const __nv_bfloat16* bh,
                                           const __nv_bfloat16* bl, bool split) {
  uint32_t h[4], l[4];
  ldmatrix_x4(h, bh);
  if (split) ldmatrix_x4(l, bl);
  auto two = [&](float (&d)[4], int i) {
    const uint32_t b_h[2] = {h[2 * i], h[2 * i + 1]};
    mma_bf16_16816(d, ah, b_h);
    if (split) {
      const uint32_t b_l[2] = {l[2 * i], l[2 * i + 1]};
      mma_bf16_16816(d, al, b_h);
      mma_bf16_16816(d, ah, b_l);
    }
  };
  two(d0, 0);
  two(d1, 1);
}
}  // namespace tc

template <typename KV>
__global__ void __launch_bounds__(kThreads) attn_tc_kernel(AttnArgs a) {
  grid_dependency_wait();
  using namespace tc;
  // Its own name: extern shared arrays of one name share one declaration (and alignment) per file.
  extern __shared__ __align__(16) float tc_smem[];
  unsigned char* sm = reinterpret_cast<unsigned char*>(tc_smem);
  __nv_bfloat16* qh = reinterpret_cast<__nv_bfloat16*>(sm + kQh);
  __nv_bfloat16* ql = reinterpret_cast<__nv_bfloat16*>(sm + kQl);
  __nv_bfloat16* kh = reinterpret_cast<__nv_bfloat16*>(sm + kKh);
  __nv_bfloat16* kl = reinterpret_cast<__nv_bfloat16*>(sm + kKl);
  __nv_bfloat16* vh = reinterpret_cast<__nv_bfloat16*>(sm + kVh);  // [D][LV]: V transposed
  __nv_bfloat16* vl = reinterpret_cast<__nv_bfloat16*>(sm + kVl);

  const BlockWork w(a);
  const AttnGroup& g = w.g;
  const int kvh = w.kvh, split = w.split, n_kv = w.n_kv, G = w.G, B = w.B, ncomb = w.ncomb, s_lo = w.s_lo,
            s_hi = w.s_hi;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, gq = lane >> 2, q = lane & 3;
  // ldmatrix rows of this lane for B operands stored n-major (K: keys x dims; V^T: dims x keys):
  // matrices (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15).
  const int brow = (lane & 7) + (lane >> 4) * 8, bcol = ((lane >> 3) & 1) * 8;
  const int32_t* table = a.tables + g.table_off;

  // q (pre-scaled) as hi/lo; pairs past ncomb are zero rows.
  for (int idx = threadIdx.x; idx < kMaxComb * D; idx += kThreads) {
    const int c = idx / D, d = idx % D;
    float v = 0.f;
    if (c < ncomb) v = a.q[int64_t(g.row0 + c / G) * a.ldq + (kvh * G + c % G) * D + d] * a.scale;
    split_bf16(v, qh + c * LQ + d, ql + c * LQ + d);
  }
  __syncthreads();
  // This warp's Q as A fragments: k-step s (dims 16s..16s+15), hi and lo.
  uint32_t qa[4][2][4];
  const int r0 = warp * 16 + gq, r1 = r0 + 8;  // this lane's two pairs (rows of S and O)
#pragma unroll
  for (int s = 0; s < 4; ++s) {
    const int k0 = 16 * s + 2 * q;
    qa[s][0][0] = ld32(qh + r0 * LQ + k0), qa[s][0][1] = ld32(qh + r1 * LQ + k0);
    qa[s][0][2] = ld32(qh + r0 * LQ + k0 + 8), qa[s][0][3] = ld32(qh + r1 * LQ + k0 + 8);
    qa[s][1][0] = ld32(ql + r0 * LQ + k0), qa[s][1][1] = ld32(ql + r1 * LQ + k0);
    qa[s][1][2] = ld32(ql + r0 * LQ + k0 + 8), qa[s][1][3] = ld32(ql + r1 * LQ + k0 + 8);
  }
  const int pos0 = g.pos0 + r0 / G, pos1 = g.pos0 + r1 / G;
  float o[8][4] = {};                            // O: dims 8n + 2q (+1), rows r0 ([0], [1]) and r1 ([2], [3])
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;  // rows r0, r1

  for (int j0 = s_lo; j0 <= s_hi; j0 += kTile) {
    __syncthreads();  // the previous tile's K/V are consumed
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
        split_bf16(vv[i], vh + (d4 + i) * LV + jj, vl + (d4 + i) * LV + jj);
      }
    }
    __syncthreads();

    // S = Q K^T: n-tile t holds keys j0 + 8t + 2q (+1) of rows r0 ([0], [1]) and r1 ([2], [3]).
    // B operands by ldmatrix: one x4 gives n-tiles t and t + 1 (keys as rows, dims as columns).
    float sc[4][4] = {};
#pragma unroll
    for (int t = 0; t < 4; t += 2) {
#pragma unroll
      for (int s = 0; s < 4; ++s) {
        const int at = (8 * t + brow) * LQ + 16 * s + bcol;
        mma2_split(sc[t], sc[t + 1], qa[s][0], qa[s][1], kh + at, kl + at, a.split);
      }
    }

    // Online softmax of rows r0 and r1 over this tile (the 4 lanes of a row hold 8 keys each).
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int t = 0; t < 4; ++t)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int key = j0 + 8 * t + 2 * q + e;
        const bool in = key <= s_hi;
        const bool v0 = in && r0 < ncomb && key <= pos0 && (a.window <= 0 || key > pos0 - a.window);
        const bool v1 = in && r1 < ncomb && key <= pos1 && (a.window <= 0 || key > pos1 - a.window);
        sc[t][e] = v0 ? sc[t][e] : -INFINITY;
        sc[t][2 + e] = v1 ? sc[t][2 + e] : -INFINITY;
        mx0 = fmaxf(mx0, sc[t][e]);
        mx1 = fmaxf(mx1, sc[t][2 + e]);
      }
#pragma unroll
    for (int o2 = 1; o2 <= 2; o2 <<= 1) {
      mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, o2));
      mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, o2));
    }
    const float n0 = fmaxf(m0, mx0), n1 = fmaxf(m1, mx1);
    float sum0 = 0.f, sum1 = 0.f;
#pragma unroll
    for (int t = 0; t < 4; ++t)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        sc[t][e] = n0 == -INFINITY || sc[t][e] == -INFINITY ? 0.f : expf(sc[t][e] - n0);
        sc[t][2 + e] = n1 == -INFINITY || sc[t][2 + e] == -INFINITY ? 0.f : expf(sc[t][2 + e] - n1);
        sum0 += sc[t][e];
        sum1 += sc[t][2 + e];
      }
#pragma unroll
    for (int o2 = 1; o2 <= 2; o2 <<= 1) {
      sum0 += __shfl_xor_sync(0xffffffffu, sum0, o2);
      sum1 += __shfl_xor_sync(0xffffffffu, sum1, o2);
    }
    const float c0 = m0 == -INFINITY ? 0.f : expf(m0 - n0), c1 = m1 == -INFINITY ? 0.f : expf(m1 - n1);
    l0 = l0 * c0 + sum0, l1 = l1 * c1 + sum1;
    m0 = n0, m1 = n1;
#pragma unroll
    for (int n = 0; n < 8; ++n) o[n][0] *= c0, o[n][1] *= c0, o[n][2] *= c1, o[n][3] *= c1;

    // O += P V: P's A fragment for key step u (keys 16u..16u+15) is S's n-tiles 2u and 2u + 1.
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      uint32_t ph[4], pl[4];
      split_pair(sc[2 * u][0], sc[2 * u][1], ph[0], pl[0]);
      split_pair(sc[2 * u][2], sc[2 * u][3], ph[1], pl[1]);
      split_pair(sc[2 * u + 1][0], sc[2 * u + 1][1], ph[2], pl[2]);
      split_pair(sc[2 * u + 1][2], sc[2 * u + 1][3], ph[3], pl[3]);
#pragma unroll
      for (int n = 0; n < 8; n += 2) {  // dims 8n .. 8n + 15 (V^T rows), keys 16u .. 16u + 15
        const int at = (8 * n + brow) * LV + 16 * u + bcol;
        mma2_split(o[n], o[n + 1], ph, pl, vh + at, vl + at, a.split);
      }
    }
  }

  // Out: with one split add the sink and finish, else the partial (o, m, l) for the merge.
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int c = half ? r1 : r0;
    if (c >= ncomb) continue;
    const float m = half ? m1 : m0, l = half ? l1 : l0;
    const int hq = kvh * G + c % G;
    if (a.n_splits == 1) {
      const float sink = a.sinks[hq];
      const float M = fmaxf(sink, m);
      const float wt = m == -INFINITY ? 0.f : expf(m - M);
      const float inv = wt / (expf(sink - M) + wt * l);
      float* dst = a.out + int64_t(g.row0 + c / G) * a.ldo + hq * D;
#pragma unroll
      for (int n = 0; n < 8; ++n) {
        dst[8 * n + 2 * q] = o[n][2 * half] * inv;
        dst[8 * n + 2 * q + 1] = o[n][2 * half + 1] * inv;
      }
    } else {
      const int64_t slot = (int64_t(g.row0 + c / G) * a.n_heads + hq) * a.n_splits + split;
      float* dst = a.part + slot * (D + 2);
#pragma unroll
      for (int n = 0; n < 8; ++n) {
        dst[8 * n + 2 * q] = o[n][2 * half];
        dst[8 * n + 2 * q + 1] = o[n][2 * half + 1];
      }
      if (q == 0) {
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
  allow_dynamic_smem(attn_kernel<D, KV>, attn_smem<D>());
}

// The kernels' shared-memory opt-in, once per device (outside any graph capture: the engine
// calls attention_prepare when it starts).
void prepare_device() {
  once_per_device([] {
    allow_smem<32, float>(); allow_smem<32, uint16_t>();
    allow_smem<64, float>(); allow_smem<64, uint16_t>();
    allow_smem<128, float>(); allow_smem<128, uint16_t>();
    allow_dynamic_smem(attn_tc_kernel<float>, tc::kBytes);
    allow_dynamic_smem(attn_tc_kernel<uint16_t>, tc::kBytes);
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

void attention_kernels(std::vector<KernelEntry>& v) {
  GPTOSS_KERNEL_ENTRY(v, kThreads, attn_kernel<32, float>);
  GPTOSS_KERNEL_ENTRY(v, kThreads, attn_kernel<32, uint16_t>);
  GPTOSS_KERNEL_ENTRY(v, kThreads, attn_kernel<64, float>);
  GPTOSS_KERNEL_ENTRY(v, kThreads, attn_kernel<64, uint16_t>);
  GPTOSS_KERNEL_ENTRY(v, kThreads, attn_kernel<128, float>);
  GPTOSS_KERNEL_ENTRY(v, kThreads, attn_kernel<128, uint16_t>);
  GPTOSS_KERNEL_ENTRY(v, kThreads, attn_tc_kernel<float>);
  GPTOSS_KERNEL_ENTRY(v, kThreads, attn_tc_kernel<uint16_t>);
  GPTOSS_KERNEL_ENTRY(v, kThreads, attn_combine_kernel);
}

}  // namespace gptoss::cuda
