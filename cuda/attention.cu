// Attention over the paged KV cache with per-head sinks, GQA, causal mask and sliding window.
//
// One kernel serves decode and prefill. A block takes one group of consecutive query rows of
// one sequence (1 row when decoding, up to 64/G rows in prefill), one KV head (so its G query
// heads share every K/V load) and one split of the key range (flash-decoding: long contexts
// are cut into splits that run in parallel). Keys are staged through shared memory in tiles
// of 32 (converted to fp32 from the fp32 or bf16 cache); each warp owns a few (row, head)
// pairs and keeps an online softmax (running max m, sum l, output o) in registers: lane j
// scores key j of the tile, then every lane accumulates its head_dim/32 output dimensions.
// A second kernel merges the splits and adds the sink to the denominator:
//   o = sum_s e^(m_s - M) o_s / (e^(S_h - M) + sum_s e^(m_s - M) l_s),  M = max(S_h, m_s);
// with a single split (window layers, short contexts) the first kernel does that itself.
#include <mutex>
#include <vector>

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

template <int D, typename KV>
__global__ void __launch_bounds__(kThreads) attn_kernel(AttnArgs a) {
  constexpr int DPL = D / 32;  // output dims per lane
  extern __shared__ float smem[];
  float* q_s = smem;                    // [kMaxComb][D]
  float* k_s = q_s + kMaxComb * D;      // [kTile][D + 1]
  float* v_s = k_s + kTile * (D + 1);   // [kTile][D]

  const AttnGroup g = a.groups[blockIdx.x];
  const int kvh = blockIdx.y, split = blockIdx.z;
  const int n_kv = a.kv.n_kv, G = a.n_heads / n_kv, B = a.kv.block_size;
  const int ncomb = g.nrows * G;
  const int last = g.pos0 + g.nrows - 1;
  const int lo = a.window > 0 ? max(0, g.pos0 - a.window + 1) : 0;
  // split_len 0: this group's own key range cut into n_splits pieces of whole tiles, so one
  // launch shape (and one captured CUDA graph) serves every context length.
  int split_len = a.split_len;
  if (split_len <= 0) {
    const int per = (last - lo + 1 + a.n_splits - 1) / a.n_splits;
    split_len = (per + kTile - 1) / kTile * kTile;
  }
  const int s_lo = lo + split * split_len;
  const int s_hi = min(last, s_lo + split_len - 1);
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
}

// One warp per (row, head): merge the splits with the sink.
__global__ void attn_combine_kernel(AttnArgs a, int D) {
  const int row = blockIdx.x;
  const int h = blockIdx.y * kWarps + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (h >= a.n_heads) return;
  const float* part = a.part + (int64_t(row) * a.n_heads + h) * a.n_splits * (D + 2);
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
  static std::mutex mu;
  static std::vector<bool> done;
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  std::lock_guard<std::mutex> g(mu);
  if (size_t(dev) < done.size() && done[size_t(dev)]) return;
  allow_smem<32, float>(); allow_smem<32, uint16_t>();
  allow_smem<64, float>(); allow_smem<64, uint16_t>();
  allow_smem<128, float>(); allow_smem<128, uint16_t>();
  if (done.size() <= size_t(dev)) done.resize(size_t(dev) + 1, false);
  done[size_t(dev)] = true;
}

template <int D, typename KV>
void launch(const AttnArgs& a, cudaStream_t st) {
  prepare_device();
  const size_t smem = attn_smem<D>();
  dim3 grid(a.n_groups, a.kv.n_kv, a.n_splits);
  attn_kernel<D, KV><<<grid, kThreads, smem, st>>>(a);
  CUDA_CHECK_LAUNCH();
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
  want = std::min<int64_t>(want, cdiv(max_span, 128));               // at least ~128 keys per split
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
  switch (D) {
    case 32: a.kv.bf16 ? launch<32, uint16_t>(a, st) : launch<32, float>(a, st); break;
    case 64: a.kv.bf16 ? launch<64, uint16_t>(a, st) : launch<64, float>(a, st); break;
    case 128: a.kv.bf16 ? launch<128, uint16_t>(a, st) : launch<128, float>(a, st); break;
    default: throw InvalidArgument("attention: head_dim must be 32, 64 or 128 on CUDA, got " + std::to_string(D));
  }
  if (a.n_splits == 1) return;  // attn_kernel wrote the output
  dim3 grid(a.T, int(cdiv(a.n_heads, kWarps)));
  attn_combine_kernel<<<grid, kThreads, 0, st>>>(a, D);
  CUDA_CHECK_LAUNCH();
}

}  // namespace gptoss::cuda
