// Sampling on the device: greedy, temperature, top-k, top-p, min-p, one block per row, no sort
// (for up to 8 rows the ids that can be drawn are gathered first by two kernels over slices of
// each row: "few rows: the candidates first" below).
//
// Semantics: python/gptoss/sampling.py, Sampler steps 4-8 on raw logits (no penalties, no logit
// bias). The valid ids of a row are i < vocab_limit with a finite logit x (NaN and +-inf are never
// sampled); none valid -> out = -1 (sampling.py raises). Greedy (temperature 0) is the argmax over
// the non-NaN logits, lowest id on ties (+inf wins, as np.argmax picks it).
//
// Keys and mass (everything in fp32; sampling.py scales in float64):
//   e(x)    = exp2((x - max) * log2(e) / T), the probability relative to the most likely id
//             (1 there, never inf/NaN even for tiny T);
//   lkey(x) = the logit's bits made unsigned-monotonic: top-k orders by logit, lower id on ties;
//   ekey(x) = the bits of e(x) (non-negative floats order as their bits): top-p orders by
//             probability, lower id on ties, as sampling.py does (equal e from different logits
//             are a tie, exactly as equal float probabilities are there);
//   q(x)    = floor(e(x) * 2^s), s = 63 - floor(log2(#valid)): probability mass as a 64-bit
//             integer, so no sum overflows. Integer sums are exact and independent of order: every
//             pass sees the same mass for the same set (deterministic, no float atomics). The draw
//             is from q / sum(q); ids with e < 2^-s (below ~1e-14 of the top id) get no mass.
// min-p needs no pass: p / p_max = e, so it keeps e >= min_p.
//
// Passes over the row's V logits (one 1024-thread block per row):
//   1.     #valid, max, greedy argmax (greedy stops here), the histogram of lkey's first digit;
//   2-3.   top-k (0 < top_k < #valid): radix select of the k-th largest lkey, 11+11+10 bit
//          digits, block histograms of counts in shared memory (digit 1 came with pass 1);
//   4-6.   top-p (top_p < 1): the same radix select on ekey over the top-k survivors, with
//          histograms of mass: the boundary key is the first one, in descending order, where the
//          running mass reaches ceil(top_p * total); a token is kept iff the mass before it is
//          < top_p * total, so the most likely token always survives;
//   (+1)   after top-k and after top-p, only when more ids share the boundary key than are kept:
//          an ordered select finds the last tie kept (lower ids first);
//   7.     the draw: inverse CDF accumulated in ascending id order, as sampling.py does: the
//          mass of each tile of consecutive ids (at most 2048 tiles), a scan over the tiles, then
//          one warp scans the tile that holds u * total.
// So at most 7 full passes (9 with boundary ties); greedy 1; temperature and min-p alone 2.
//
// Log-probabilities (logprobs_kernel, sampling.py's Sampler._with_logprobs: log_softmax of the
// raw logits, NaN as -inf), also one block per row:
//   1.  each thread's max, its lowest id and its compensated sum of exp(x - max), rescaled when
//       the max grows; block max and a float64 block sum give log-sum-exp (n = 0 stops here);
//   -   the threshold: the n-th best (value, then lower id) of the 1024 thread bests, by n rounds
//       of block argmax on registers. The top n of the row are at or above it, and only the n
//       threads whose best reaches it can hold such ids: at most n * (ids per thread)
//       candidates, 4040 for gpt-oss (typically a few n);
//   2.  collect the ids at or above the threshold into shared memory; each candidate's rank
//       among them (the number that beat it; ids are distinct, so no two share one) is its place
//       in the output.
// So 1 pass for n = 0, 2 otherwise; n + 2 when the candidates overflow (V > ~210K), where n
// passes of block argmax below the previous pick take over.
#include <float.h>

#include <algorithm>

#include "common.cuh"
#include "kernels.cuh"

namespace gptoss::cuda {
namespace {

typedef unsigned long long u64;  // atomicAdd's 64-bit type

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr int kBins = 2048;  // 11-bit radix digits; also the most tiles of the ordered select
static_assert(kWarps == 32 && kBins == 2 * kThreads, "the scans below take 2 bins per thread and 32 warps");

struct Shared {
  uint32_t cnt[kBins];                      // top-k histogram
  uint32_t mass_lo[kBins], mass_hi[kBins];  // top-p histogram: 64-bit sums as two halves
  u64 tile_mass[kBins];                     // the ordered select's
  u64 red[kWarps];
  float redf[kWarps];
  int redi[kWarps];
  int bin, tile, result;
  u64 above, value, carry;
};

// Radix digits, most significant first: bits [31:21], [20:10], [9:0].
__device__ __forceinline__ int digit_shift(int d) { return d == 0 ? 21 : d == 1 ? 10 : 0; }
__device__ __forceinline__ int digit_bits(int d) { return d == 2 ? 10 : 11; }

__device__ __forceinline__ bool finite(float x) { return (__float_as_uint(x) & 0x7f800000u) != 0x7f800000u; }

// Unsigned order = float order; -0 is folded into +0 (sampling.py sees them equal).
__device__ __forceinline__ uint32_t lkey(float x) {
  uint32_t u = __float_as_uint(x);
  if (u == 0x80000000u) u = 0;
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// A 64-bit add into shared memory as 32-bit atomics (a 64-bit shared atomicAdd is a CAS loop):
// the low half's carry goes into the high half, so the sum stays exact.
__device__ __forceinline__ void add_mass(Shared& sm, int bin, u64 v) {
  const uint32_t lo = uint32_t(v), old = atomicAdd(&sm.mass_lo[bin], lo);
  const uint32_t hi = uint32_t(v >> 32) + (old + lo < old ? 1u : 0u);
  if (hi) atomicAdd(&sm.mass_hi[bin], hi);
}
__device__ __forceinline__ u64 mass_at(const Shared& sm, int bin) {
  return (u64(sm.mass_hi[bin]) << 32) | sm.mass_lo[bin];
}

__device__ __forceinline__ u64 warp_sum_u64(u64 v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ u64 warp_inclusive_scan(u64 v) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int d = 1; d < 32; d <<= 1) {
    const u64 t = __shfl_sync(0xffffffffu, v, lane >= d ? lane - d : lane);
    if (lane >= d) v += t;
  }
  return v;
}

__device__ __forceinline__ int warp_min_int(int v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = min(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Exclusive prefix sum of v over the block in thread order; total = the sum of all.
template <class S>  // S: Shared or SplitShared (red)
__device__ u64 block_scan(u64 v, u64& total, S& sm) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const u64 incl = warp_inclusive_scan(v);
  if (lane == 31) sm.red[warp] = incl;
  __syncthreads();
  const u64 w = sm.red[lane];
  const u64 wincl = warp_inclusive_scan(w);
  const u64 before = __shfl_sync(0xffffffffu, wincl - w, warp);
  total = __shfl_sync(0xffffffffu, wincl, 31);
  __syncthreads();  // sm.red is reused by the next call
  return before + incl - v;
}

template <class S>  // S: Shared or LpShared (redf, redi)
__device__ float block_max(float v, S& sm) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_max(v);
  if (lane == 0) sm.redf[warp] = v;
  __syncthreads();
  v = warp_max(sm.redf[lane]);
  __syncthreads();
  return v;
}

// Does (ov, oi) beat (v, i) for argmax? Larger value, then lower id; id < 0 = nothing.
__device__ __forceinline__ bool beats(float ov, int oi, float v, int i) {
  return oi >= 0 && (i < 0 || ov > v || (ov == v && oi < i));
}

// The block's best (v, i) by `beats`: returns the id; v becomes its value.
template <class S>
__device__ int block_argmax(float& v, int i, S& sm) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, o);
    const int oi = __shfl_xor_sync(0xffffffffu, i, o);
    if (beats(ov, oi, v, i)) v = ov, i = oi;
  }
  if (lane == 0) sm.redf[warp] = v, sm.redi[warp] = i;
  __syncthreads();
  v = sm.redf[lane];
  i = sm.redi[lane];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, o);
    const int oi = __shfl_xor_sync(0xffffffffu, i, o);
    if (beats(ov, oi, v, i)) v = ov, i = oi;
  }
  __syncthreads();
  return i;
}

// f(i, row[i]) for every i < n, block-strided; each thread sees its ids in ascending order.
// float4 loads (two in flight per thread) once the row is 16-byte aligned.
template <class F>
__device__ __forceinline__ void for_each(const float* row, int n, F f) {
  const int head = min(n, int((4 - ((reinterpret_cast<uintptr_t>(row) >> 2) & 3)) & 3));
  const int t = threadIdx.x;
  if (t < head) f(t, row[t]);
  const float4* v = reinterpret_cast<const float4*>(row + head);
  const int n4 = (n - head) >> 2;
  int j = t;
  for (; j + kThreads < n4; j += 2 * kThreads) {
    const float4 a = v[j], b = v[j + kThreads];
    const int i = head + 4 * j, k = i + 4 * kThreads;
    f(i, a.x), f(i + 1, a.y), f(i + 2, a.z), f(i + 3, a.w);
    f(k, b.x), f(k + 1, b.y), f(k + 2, b.z), f(k + 3, b.w);
  }
  if (j < n4) {
    const float4 a = v[j];
    const int i = head + 4 * j;
    f(i, a.x), f(i + 1, a.y), f(i + 2, a.z), f(i + 3, a.w);
  }
  for (int i = head + 4 * n4 + t; i < n; i += kThreads) f(i, row[i]);
}

struct Pick {
  int bin;
  u64 above, value;  // the sum of the bins above it; its own value
};

// Walks the histogram h(bin) from the highest bin down; returns the bin where the running sum
// first reaches target(total) (callers keep it in [1, total]).
template <class H, class Target>
__device__ Pick pick_bin(H h, Target target, Shared& sm) {
  const int hi = kBins - 1 - 2 * int(threadIdx.x);
  const u64 a = h(hi), b = h(hi - 1);
  u64 total;
  const u64 before = block_scan(a + b, total, sm);
  const u64 t = target(total);
  if (before < t && t <= before + a + b) {
    const bool first = t <= before + a;
    sm.bin = first ? hi : hi - 1;
    sm.above = first ? before : before + a;
    sm.value = first ? a : b;
  }
  __syncthreads();
  return Pick{sm.bin, sm.above, sm.value};  // rewritten only after the next call's barriers
}

// The first id i (ascending) with w(0) + ... + w(i) > target(total), total = the sum of every w
// (the target is clamped below it); -1 when total is 0. Costs one pass over the row: the mass of
// each tile of ts consecutive ids (one warp per tile, no block barrier), a block scan over the
// tiles, then warp 0 scans the one tile that holds the target.
template <class W, class Target>
__device__ int ordered_select(const float* row, int n, W w, Target target, Shared& sm) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int ts = 32 * ((n + 32 * kBins - 1) / (32 * kBins));  // ids per tile: >= 32, <= kBins tiles
  const int nt = (n + ts - 1) / ts;
  for (int t = warp; t < nt; t += kWarps) {
    const int end = min(n, (t + 1) * ts);
    u64 s = 0;
    for (int i = t * ts + lane; i < end; i += 32) s += w(i, row[i]);
    s = warp_sum_u64(s);
    if (lane == 0) sm.tile_mass[t] = s;
  }
  for (int t = nt + threadIdx.x; t < kBins; t += kThreads) sm.tile_mass[t] = 0;
  __syncthreads();
  const u64 a = sm.tile_mass[2 * threadIdx.x], b = sm.tile_mass[2 * threadIdx.x + 1];
  u64 total;
  const u64 before = block_scan(a + b, total, sm);
  if (total == 0) return -1;
  const u64 tg = min(target(total), total - 1);
  if (before <= tg && tg < before + a + b) {
    const bool first = tg < before + a;
    sm.tile = 2 * threadIdx.x + (first ? 0 : 1);
    sm.carry = first ? before : before + a;
  }
  __syncthreads();
  if (warp == 0) {
    const int t = sm.tile, end = min(n, (t + 1) * ts);
    u64 carry = sm.carry;
    int found = -1;
    for (int i0 = t * ts; i0 < end; i0 += 32) {  // the same trip count on every lane
      const int i = i0 + lane;
      const u64 incl = warp_inclusive_scan(i < end ? w(i, row[i]) : 0);
      const int l = warp_min_int(carry + incl > tg ? lane : 32);
      if (l < 32) {
        found = i0 + l;
        break;
      }
      carry += __shfl_sync(0xffffffffu, incl, 31);
    }
    if (lane == 0) sm.result = found;
  }
  __syncthreads();
  return sm.result;
}

// ceil(top_p * total) in [1, total]: a token is kept iff the (integer) mass before it is below.
__device__ u64 nucleus(float top_p, u64 total) {
  const double t = ceil(double(top_p) * double(total));
  if (!(t >= 1.0)) return 1;
  return t >= double(total) ? total : u64(t);
}

__device__ __forceinline__ int row_limit(const SampleParams& p, int64_t V) {
  return p.vocab_limit > 0 && p.vocab_limit < V ? p.vocab_limit : int(V);
}

// The sampling scale: e(x) * 2^s is the mass of x, s = 63 - floor(log2(#valid)).
__device__ __forceinline__ float mass_scale(u64 nv) {
  int s = 63;
  for (u64 m = nv; m > 1; m >>= 1) --s;
  return ldexpf(1.f, s);
}
__device__ __forceinline__ float inv_temperature_log2e(float t) { return fminf(1.44269504088896341f / t, FLT_MAX); }

// scr.cand_n[row] >= 0 (few rows, see "the candidates first" below): the row is that many candidates
// (scr.cand_val, ids scr.cand_id, ascending) and the row's #valid is scr.row_nv[row].
__global__ void __launch_bounds__(kThreads, 1)
    sample_kernel(const float* logits, int64_t V, const SampleParams* params, int32_t* out, SampleScratch scr) {
  grid_dependency_wait();
  __shared__ Shared sm;
  const SampleParams p = params[blockIdx.x];
  const float* row = logits + int64_t(blockIdx.x) * V;
  int n = row_limit(p, V);
  const int32_t* ids = nullptr;  // candidates: position -> id
  int64_t nv_row = -1;
  if (scr.cand_n && scr.cand_n[blockIdx.x] >= 0) {
    row = scr.cand_val + int64_t(blockIdx.x) * V;
    ids = scr.cand_id + int64_t(blockIdx.x) * V;
    n = scr.cand_n[blockIdx.x];
    nv_row = scr.row_nv[blockIdx.x];
  }
  const bool greedy = !(p.temperature > 0.f);
  const bool maybe_topk = !greedy && p.top_k > 0 && p.top_k < n;

  // ---- pass 1: #valid, max, greedy argmax, top-k digit 0
  if (maybe_topk)
    for (int b = threadIdx.x; b < kBins; b += kThreads) sm.cnt[b] = 0;
  __syncthreads();
  float mx = -INFINITY, bv = -INFINITY;
  int bi = -1;
  uint32_t nvalid = 0;
  for_each(row, n, [&](int i, float x) {
    if (greedy && !(x != x) && beats(x, i, bv, bi)) bv = x, bi = i;
    if (finite(x)) {
      ++nvalid;
      mx = fmaxf(mx, x);
      if (maybe_topk) atomicAdd(&sm.cnt[lkey(x) >> 21], 1u);
    }
  });
  u64 nv;
  block_scan(nvalid, nv, sm);
  if (nv_row >= 0) nv = u64(nv_row);
  if (greedy) bi = block_argmax(bv, bi, sm);
  if (nv == 0 || greedy) {
    if (threadIdx.x == 0) out[blockIdx.x] = nv == 0 ? -1 : bi;
    return;
  }
  mx = block_max(mx, sm);

  const float c = inv_temperature_log2e(p.temperature);  // log2(e) / T, finite
  auto prob = [&](float x) { return exp2f((x - mx) * c); };
  const float scale = mass_scale(nv);
  auto mass = [&](float e) { return u64(e * scale); };

  // ---- passes 2-3: top-k; kept iff lkey > kkey, or lkey == kkey and id <= klast
  const bool topk = maybe_topk && u64(p.top_k) < nv;
  uint32_t kkey = 0;
  int klast = n;
  if (topk) {
    uint32_t prefix = 0;
    u64 rem = u64(p.top_k);
    Pick pk{};
    for (int d = 0; d < 3; ++d) {
      if (d > 0) {
        for (int b = threadIdx.x; b < kBins; b += kThreads) sm.cnt[b] = 0;
        __syncthreads();
        const int hs = digit_shift(d - 1), sh = digit_shift(d);
        const uint32_t mask = (1u << digit_bits(d)) - 1;
        for_each(row, n, [&](int, float x) {
          if (!finite(x)) return;
          const uint32_t k = lkey(x);
          if ((k >> hs) == prefix) atomicAdd(&sm.cnt[(k >> sh) & mask], 1u);
        });
        __syncthreads();
      }
      pk = pick_bin([&](int b) -> u64 { return sm.cnt[b]; }, [&](u64) { return rem; }, sm);
      rem -= pk.above;
      prefix = (prefix << digit_bits(d)) | uint32_t(pk.bin);
    }
    kkey = prefix;
    if (rem < pk.value)  // keep the first rem of the pk.value ids tied at the k-th logit
      klast = ordered_select(
          row, n, [&](int, float x) -> u64 { return finite(x) && lkey(x) == kkey; },
          [&](u64) { return rem - 1; }, sm);
  }
  auto topk_ok = [&](int i, float x) {
    if (!topk) return true;
    const uint32_t k = lkey(x);
    return k > kkey || (k == kkey && i <= klast);
  };

  // ---- passes 4-6: top-p over the top-k survivors; kept iff ekey > pkey, or == pkey and id <= plast
  const bool topp = p.top_p < 1.f;
  uint32_t pkey = 0;
  int plast = n;
  if (topp) {
    uint32_t prefix = 0;
    u64 rem = 0;
    Pick pk{};
    for (int d = 0; d < 3; ++d) {
      for (int b = threadIdx.x; b < kBins; b += kThreads) sm.mass_lo[b] = sm.mass_hi[b] = 0;
      __syncthreads();
      const int hs = d > 0 ? digit_shift(d - 1) : 0, sh = digit_shift(d);
      const uint32_t mask = (1u << digit_bits(d)) - 1;
      for_each(row, n, [&](int i, float x) {
        if (!finite(x) || !topk_ok(i, x)) return;
        const float e = prob(x);
        const uint32_t k = __float_as_uint(e);
        if (d == 0 || (k >> hs) == prefix) add_mass(sm, int((k >> sh) & mask), mass(e));
      });
      __syncthreads();
      // The first pass's histogram holds the whole survivor mass: the nucleus target comes from it.
      pk = pick_bin([&](int b) { return mass_at(sm, b); },
                    [&](u64 total) { return d == 0 ? (rem = nucleus(p.top_p, total)) : rem; }, sm);
      rem -= pk.above;
      prefix = (prefix << digit_bits(d)) | uint32_t(pk.bin);
    }
    pkey = prefix;
    const u64 q = mass(__uint_as_float(pkey));  // > 0: the picked bin has mass, and one key
    const u64 ties = pk.value / q, keep = (rem + q - 1) / q;
    if (keep < ties)
      plast = ordered_select(
          row, n,
          [&](int i, float x) -> u64 { return finite(x) && topk_ok(i, x) && __float_as_uint(prob(x)) == pkey; },
          [&](u64) { return keep - 1; }, sm);
  }

  // ---- pass 7: min-p and the draw, inverse CDF in id order
  const float min_p = fminf(p.min_p, 1.f);
  auto weight = [&](int i, float x) -> u64 {
    if (!finite(x) || !topk_ok(i, x)) return 0;
    const float e = prob(x);
    const uint32_t k = __float_as_uint(e);
    if (topp && (k < pkey || (k == pkey && i > plast))) return 0;
    return e < min_p ? 0 : mass(e);
  };
  const double u = fmax(double(p.u), 0.0);
  const int tok = ordered_select(
      row, n, weight,
      [&](u64 total) {
        const double t = u * double(total);
        return t < double(total) ? u64(t) : total - 1;
      },
      sm);
  if (threadIdx.x == 0) out[blockIdx.x] = tok >= 0 && ids ? ids[tok] : tok;
}

// ---- few rows: the candidates first -------------------------------------------------------
// One block per row streams a row's 201,088 logits through one SM up to 7 times. For few rows,
// two kernels over slices of each row first keep only the ids that can be drawn: the finite
// logits whose mass (above) is at least 1, computed exactly as sample_kernel does from the
// row's max and #valid, in ascending id order. sample_kernel then works on those (typically a
// few hundred) with the row's #valid and maps its pick back to an id. The draws are identical:
// every id left out has zero mass, so no total, top-p boundary or draw moves, and top-k keeps
// all candidates whenever k reaches past them (they are the highest logits). Greedy rows skip it.
struct SplitShared {
  u64 red[kWarps];
  float redf[kWarps];
  int redi[kWarps];
};

__device__ __forceinline__ void slice_bounds(int n, int s, int S, int& lo, int& hi) {
  const int len = (n + S - 1) / S;
  lo = min(n, s * len);
  hi = min(n, lo + len);
}

// Grid (R, S): the max and #valid of each slice; the last block of a row combines them.
__global__ void __launch_bounds__(kThreads) sample_stats_kernel(const float* logits, int64_t V,
                                                                const SampleParams* params, SampleScratch scr) {
  grid_dependency_wait();
  __shared__ SplitShared sm;
  const int r = blockIdx.x, s = blockIdx.y, S = int(gridDim.y);
  const SampleParams p = params[r];
  if (!(p.temperature > 0.f)) return;
  int lo, hi;
  slice_bounds(row_limit(p, V), s, S, lo, hi);
  const float* row = logits + int64_t(r) * V;
  float mx = -INFINITY;
  uint32_t nvalid = 0;
  for (int i = lo + int(threadIdx.x); i < hi; i += kThreads) {
    const float x = row[i];
    if (finite(x)) ++nvalid, mx = fmaxf(mx, x);
  }
  u64 nv;
  block_scan(nvalid, nv, sm);
  mx = block_max(mx, sm);
  if (threadIdx.x == 0) {
    scr.part_max[r * S + s] = mx;
    scr.part_n[r * S + s] = uint32_t(nv);
  }
  if (!last_block_arrives(&scr.arrivals[r], S) || threadIdx.x != 0) return;
  const volatile float* pm = scr.part_max + r * S;
  const volatile uint32_t* pn = scr.part_n + r * S;
  float m = -INFINITY;
  uint32_t total = 0;
  for (int k = 0; k < S; ++k) m = fmaxf(m, pm[k]), total += pn[k];
  scr.row_max[r] = m;
  scr.row_nv[r] = total;
}

// Grid (R, S): each slice's candidates, in order, into its own place of the row's staging
// area; the last block of a row concatenates them (cand_val, cand_id, cand_n).
__global__ void __launch_bounds__(kThreads) sample_compact_kernel(const float* logits, int64_t V,
                                                                  const SampleParams* params, SampleScratch scr) {
  grid_dependency_wait();
  __shared__ SplitShared sm;
  const int r = blockIdx.x, s = blockIdx.y, S = int(gridDim.y);
  const SampleParams p = params[r];
  if (!(p.temperature > 0.f)) {
    if (s == 0 && threadIdx.x == 0) scr.cand_n[r] = -1;  // sample_kernel reads the row itself
    return;
  }
  const int n = row_limit(p, V);
  int lo, hi;
  slice_bounds(n, s, S, lo, hi);
  const float* row = logits + int64_t(r) * V;
  const float mx = scr.row_max[r], c = inv_temperature_log2e(p.temperature), scale = mass_scale(scr.row_nv[r]);
  float* sv = scr.stage_val + int64_t(r) * V + lo;
  int32_t* si = scr.stage_id + int64_t(r) * V + lo;
  u64 count = 0;
  for (int i0 = lo; i0 < hi; i0 += kThreads) {  // the same trip count on every thread
    const int i = i0 + int(threadIdx.x);
    const float x = i < hi ? row[i] : __uint_as_float(0x7fc00000u);  // NaN: not kept
    const bool keep = finite(x) && exp2f((x - mx) * c) * scale >= 1.f;
    u64 total;
    const u64 at = count + block_scan(keep ? 1u : 0u, total, sm);
    if (keep) sv[at] = x, si[at] = i;
    count += total;
  }
  if (threadIdx.x == 0) scr.part_n[r * S + s] = uint32_t(count);
  if (!last_block_arrives(&scr.arrivals[r], S)) return;
  const volatile uint32_t* pn = scr.part_n + r * S;
  int off = 0;
  for (int k = 0; k < S; ++k) {
    int klo, khi;
    slice_bounds(n, k, S, klo, khi);
    const int cnt = int(pn[k]);
    const volatile float* kv = scr.stage_val + int64_t(r) * V + klo;
    const volatile int32_t* ki = scr.stage_id + int64_t(r) * V + klo;
    for (int j = int(threadIdx.x); j < cnt; j += kThreads) {
      scr.cand_val[int64_t(r) * V + off + j] = kv[j];
      scr.cand_id[int64_t(r) * V + off + j] = ki[j];
    }
    off += cnt;
  }
  if (threadIdx.x == 0) scr.cand_n[r] = off;
}

}  // namespace

void sample_rows(const float* logits, int R, int64_t V, const SampleParams* params, int32_t* out, cudaStream_t st,
                 const SampleScratch* scratch) {
  if (R <= 0) return;
  GPTOSS_CHECK_ARG(V >= 0 && V <= (int64_t(1) << 30), "sample_rows: vocabulary size out of range (at most 2^30)");
  SampleScratch scr;  // cand_n null: sample_kernel reads the rows
  if (scratch && R <= scratch->rows) {
    // Slices of >= 4096 logits, up to the scratch's splits and about two blocks per SM overall.
    const int S = scratch->force_splits > 0
                      ? scratch->force_splits
                      : int(std::min<int64_t>({int64_t(scratch->splits), (V + 4095) / 4096,
                                               int64_t(cdiv(2 * device_sm_count(), R))}));
    if (S > 1) {
      GPTOSS_CHECK_ARG(S <= scratch->splits, "sample_rows: more splits than the scratch holds");
      scr = *scratch;
      const dim3 grid{unsigned(R), unsigned(S)};
      launch_kernel(sample_stats_kernel, grid, kThreads, 0, st, logits, V, params, scr);
      launch_kernel(sample_compact_kernel, grid, kThreads, 0, st, logits, V, params, scr);
    }
  }
  launch_kernel(sample_kernel, R, kThreads, 0, st, logits, V, params, out, scr);
}

// ---- log-probabilities ------------------------------------------------------------------------
namespace {

constexpr int kCand = 4096;  // candidate buffer
// The candidates are at most n x (ids per thread) (see logprobs_kernel): for the gpt-oss
// vocabulary (201088 ids, <= 4 * 50 + 2 per thread) they always fit.
static_assert(kMaxTopLogprobs * (4 * 50 + 2) <= kCand, "candidate buffer too small");

struct LpShared {
  float cv[kCand];  // candidates: value, id
  int ci[kCand];
  double redd[kWarps];
  float redf[kWarps];
  int redi[kWarps];
  int count;
};

__device__ __forceinline__ float nan_to_ninf(float x) { return x != x ? -INFINITY : x; }

__device__ double block_sum(double v, LpShared& sm) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (lane == 0) sm.redd[warp] = v;
  __syncthreads();
  v = sm.redd[lane];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();
  return v;
}

// How many of the c pairs (v[j], id[j]) beat (x, i); counting stops at cap.
__device__ int rank_of(float x, int i, const float* v, const int* id, int c, int cap) {
  int r = 0;
  for (int j = 0; j < c && r < cap; ++j) r += beats(v[j], id[j], x, i);
  return r;
}

__global__ void __launch_bounds__(kThreads, 1)
    logprobs_kernel(const float* logits, int64_t V, int vocab_limit, const int32_t* token, int n, float* chosen_lp,
                    int32_t* top_ids, float* top_lp) {
  grid_dependency_wait();
  __shared__ LpShared sm;
  const float* row = logits + int64_t(blockIdx.x) * V;
  const int lim = vocab_limit > 0 && vocab_limit < V ? vocab_limit : int(V);

  // ---- pass 1: each thread's max m, its lowest id mi, and sum(exp(x - m)) rescaled whenever m
  // grows, compensated (Kahan: comp holds what s lost) so ~200 fp32 adds per thread stay exact.
  float m = -INFINITY, s = 0.f, comp = 0.f;
  int mi = -1;
  for_each(row, lim, [&](int i, float x) {
    x = nan_to_ninf(x);
    if (x > m) {
      const float f = expf(m - x);
      s *= f, comp *= f, m = x, mi = i;
    } else if (mi < 0) {
      mi = i;  // a thread of only -inf: its lowest id
    }
    if (x > -INFINITY) {
      const float y = expf(x - m) - comp, t = s + y;
      comp = (t - s) - y;
      s = t;
    }
  });
  const float M = block_max(m, sm);
  const double S = block_sum(m > -INFINITY ? (double(s) - double(comp)) * double(expf(m - M)) : 0.0, sm);
  const bool none = !(M > -INFINITY);                            // every id masked (or none)
  const double log_s = M == INFINITY ? double(NAN) : log(S);     // +inf: NaN, as the reference
  auto lp = [&](float x) { return none ? -INFINITY : float((double(x) - double(M)) - log_s); };

  if (threadIdx.x == 0) {
    const int t = token[blockIdx.x];
    chosen_lp[blockIdx.x] = t >= 0 && t < lim ? lp(nan_to_ninf(row[t])) : -INFINITY;
  }
  if (n == 0) return;
  int32_t* ids = top_ids + int64_t(blockIdx.x) * n;
  float* tlp = top_lp + int64_t(blockIdx.x) * n;
  if (none) {
    for (int j = threadIdx.x; j < n; j += kThreads) ids[j] = -1, tlp[j] = -INFINITY;
    return;
  }

  // ---- threshold: the n-th best of the 1024 thread bests (n rounds of block argmax, each
  // winner's thread dropping out). Those n bests are n distinct ids at or above it, so the top n
  // of the row are too; and only their n threads can hold such ids: at most n * (ids per thread).
  float tv = -INFINITY;
  int ti = -1, own = mi;  // ti -1: fewer than n threads hold ids, every id is a candidate
  for (int j = 0; j < n; ++j) {
    float v = m;
    const int w = block_argmax(v, own, sm);
    if (w < 0) {
      ti = -1;
      break;
    }
    if (w == own) own = -1;
    tv = v, ti = w;
  }
  if (threadIdx.x == 0) sm.count = 0;
  __syncthreads();

  // ---- pass 2: collect the ids at or above the threshold
  for_each(row, lim, [&](int i, float x) {
    x = nan_to_ninf(x);
    if (ti < 0 || i == ti || beats(x, i, tv, ti)) {
      const int k = atomicAdd(&sm.count, 1);
      if (k < kCand) sm.cv[k] = x, sm.ci[k] = i;
    }
  });
  __syncthreads();
  const int c = sm.count;
  if (c <= kCand) {
    // Each candidate's rank among the candidates is its place in the output (ids are distinct).
    for (int k = threadIdx.x; k < c; k += kThreads) {
      const float x = sm.cv[k];
      const int i = sm.ci[k], r = rank_of(x, i, sm.cv, sm.ci, c, n);
      if (r < n) ids[r] = i, tlp[r] = lp(x);
    }
    for (int j = c + threadIdx.x; j < n; j += kThreads) ids[j] = -1, tlp[j] = -INFINITY;  // lim < n
    return;
  }

  // ---- overflow (more ids per thread than the gpt-oss vocabulary has): n passes, each the
  // block's best below the previous pick.
  float pv = INFINITY;
  int pi = -1;
  for (int j = 0; j < n; ++j) {
    float bv = -INFINITY;
    int bi = -1;
    for_each(row, lim, [&](int i, float x) {
      x = nan_to_ninf(x);
      if ((pi < 0 || beats(pv, pi, x, i)) && beats(x, i, bv, bi)) bv = x, bi = i;
    });
    bi = block_argmax(bv, bi, sm);
    if (threadIdx.x == 0) ids[j] = bi, tlp[j] = lp(bv);  // c > kCand > n: never runs out
    pv = bv, pi = bi;
  }
}

}  // namespace

void logprobs_rows(const float* logits, int R, int64_t V, int vocab_limit, const int32_t* token, int n,
                   float* chosen_lp, int32_t* top_ids, float* top_lp, cudaStream_t st) {
  if (R <= 0) return;
  GPTOSS_CHECK_ARG(V >= 0 && V <= (int64_t(1) << 30), "logprobs_rows: vocabulary size out of range (at most 2^30)");
  GPTOSS_CHECK_ARG(n >= 0 && n <= kMaxTopLogprobs, "logprobs_rows: n must be in [0, 20]");
  launch_kernel(logprobs_kernel, R, kThreads, 0, st, logits, V, vocab_limit, token, n, chosen_lp, top_ids, top_lp);
}

// ---- penalties and logit bias (sampling.py steps 1-3) as sparse edits of the logits ----------
namespace {

// Row r's entries e in [off[r], off[r+1]): logit id[e] becomes
//   x / rep (x > 0) or x * rep (x <= 0), then - sub, then + bias   (val[e] = {rep, sub, bias}),
// the old value kept in saved[e] so the raw logits can be put back (for the log-probabilities).
__global__ void penalties_kernel(float* logits, int64_t V, const int32_t* off, const int32_t* id,
                                 const float* val, float* saved) {
  grid_dependency_wait();
  float* row = logits + int64_t(blockIdx.x) * V;
  for (int e = off[blockIdx.x] + threadIdx.x; e < off[blockIdx.x + 1]; e += blockDim.x) {
    float x = row[id[e]];
    saved[e] = x;
    const float rep = val[3 * e], sub = val[3 * e + 1], bias = val[3 * e + 2];
    if (rep != 1.0f) x = x > 0.f ? x / rep : x * rep;
    row[id[e]] = x - sub + bias;
  }
}

__global__ void restore_kernel(float* logits, int64_t V, const int32_t* off, const int32_t* id, const float* saved) {
  grid_dependency_wait();
  float* row = logits + int64_t(blockIdx.x) * V;
  for (int e = off[blockIdx.x] + threadIdx.x; e < off[blockIdx.x + 1]; e += blockDim.x) row[id[e]] = saved[e];
}

}  // namespace

void apply_penalties(float* logits, int R, int64_t V, const int32_t* off, const int32_t* id, const float* val,
                     float* saved, cudaStream_t st) {
  if (R <= 0) return;
  launch_kernel(penalties_kernel, R, 256, 0, st, logits, V, off, id, val, saved);
}

void restore_penalties(float* logits, int R, int64_t V, const int32_t* off, const int32_t* id, const float* saved,
                       cudaStream_t st) {
  if (R <= 0) return;
  launch_kernel(restore_kernel, R, 256, 0, st, logits, V, off, id, saved);
}

void sampling_kernels(std::vector<KernelEntry>& v) {
  GPTOSS_KERNEL_ENTRY(v, kThreads, sample_kernel);
  GPTOSS_KERNEL_ENTRY(v, kThreads, sample_stats_kernel);
  GPTOSS_KERNEL_ENTRY(v, kThreads, sample_compact_kernel);
  GPTOSS_KERNEL_ENTRY(v, kThreads, logprobs_kernel);
  GPTOSS_KERNEL_ENTRY(v, 256, penalties_kernel);
  GPTOSS_KERNEL_ENTRY(v, 256, restore_kernel);
}

}  // namespace gptoss::cuda
