// Small kernels: embedding, RMSNorm (plain and fused with the MoE combine + residual add),
// YaRN RoPE fused with the KV-cache store, greedy argmax, and the hash-based random fills used
// to build synthetic models directly on the device.
#include <algorithm>

#include <cuda_bf16.h>

#include "common.cuh"
#include "kernels.cuh"

namespace gptoss::cuda {
namespace {

__global__ void embedding_kernel(const int32_t* tok, const uint16_t* E, int H, float* x) {
  grid_dependency_wait();
  const int t = blockIdx.x;
  const uint16_t* row = E + int64_t(tok[t]) * H;
  float* dst = x + int64_t(t) * H;
  for (int i = threadIdx.x; i < H; i += blockDim.x) dst[i] = bf16_bits_to_float(row[i]);
}

// x[t] += sum_k add[t*K + k]; y[t] = x[t] / sqrt(mean(x^2) + eps) * w.
__global__ void add_rmsnorm_kernel(float* x, const float* add, int K, int H, const float* w, float eps, float* y) {
  grid_dependency_wait();
  __shared__ float red[32];
  const int t = blockIdx.x;
  block_add_rmsnorm(x + int64_t(t) * H, add ? add + int64_t(t) * K * H : add, K, H, w, eps, y + int64_t(t) * H, red);
}

template <typename KV>
__global__ void rope_kv_kernel(float* qkv, int ld, const int32_t* pos, const int32_t* row_table,
                               const int32_t* tables, int nq, int nk, int half, const float* inv_freq, float conc,
                               KVView kv) {
  grid_dependency_wait();
  const int t = blockIdx.x;
  const int p = pos[t];
  const int D = 2 * half;
  float* row = qkv + int64_t(t) * ld;
  const bool store = kv.pool != nullptr && nk > 0;
  int64_t kbase = 0, vbase = 0;
  if (store) {
    const int B = kv.block_size;
    const int64_t blk = tables[row_table[t] + p / B];
    const int off = p % B;
    kbase = blk * kv.block_elems + kv.layer_offset + int64_t(off) * D;
    vbase = kbase + int64_t(kv.n_kv) * B * D;
  }
  const int64_t head_stride = int64_t(kv.block_size) * D;
  for (int idx = threadIdx.x; idx < (nq + nk) * half; idx += blockDim.x) {
    const int h = idx / half, i = idx % half;
    const float a = float(p) * inv_freq[i];
    float s, c;
    sincosf(a, &s, &c);
    c *= conc;
    s *= conc;
    float* x1 = row + h * D + i;
    float* x2 = x1 + half;
    const float u = *x1, v = *x2;
    const float o1 = u * c - v * s, o2 = v * c + u * s;
    if (h < nq) {
      *x1 = o1;
      *x2 = o2;
    } else if (store) {
      const int g = h - nq;
      kv_put<KV>(kv.pool, kbase + g * head_stride + i, o1);
      kv_put<KV>(kv.pool, kbase + g * head_stride + i + half, o2);
    }
  }
  if (store) {
    const float* vrow = row + (nq + nk) * D;
    for (int idx = threadIdx.x; idx < nk * D; idx += blockDim.x) {
      const int g = idx / D, d = idx % D;
      kv_put<KV>(kv.pool, vbase + g * head_stride + d, vrow[idx]);
    }
  }
}

// The argmax (value, index) of row[lo, hi) over the block: NaN never wins, ties go to the lower
// index, index -1 when every value is NaN. Thread 0 gets the result.
__device__ void block_argmax_range(const float* row, int64_t lo, int64_t hi, float& b, int32_t& ix) {
  __shared__ float sv[32];
  __shared__ int32_t si[32];
  float bv = -INFINITY;
  int64_t bi = -1;
  for (int64_t i = lo + threadIdx.x; i < hi; i += blockDim.x) {
    const float v = row[i];
    if (v > bv || (bi < 0 && !(v != v))) {  // first non-NaN, then strictly larger
      bv = v;
      bi = i;
    }
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
    const int64_t oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (oi >= 0 && (bi < 0 || ov > bv || (ov == bv && oi < bi))) {
      bv = ov;
      bi = oi;
    }
  }
  if (lane == 0) {
    sv[warp] = bv;
    si[warp] = int32_t(bi);
  }
  __syncthreads();
  b = -INFINITY;
  ix = -1;
  if (threadIdx.x == 0)
    for (int w = 0; w < int(blockDim.x >> 5); ++w)
      if (si[w] >= 0 && (ix < 0 || sv[w] > b || (sv[w] == b && si[w] < ix))) {
        b = sv[w];
        ix = si[w];
      }
}

__global__ void __launch_bounds__(1024) argmax_kernel(const float* logits, int64_t V, int32_t* out) {
  grid_dependency_wait();
  float b;
  int32_t ix;
  block_argmax_range(logits + int64_t(blockIdx.x) * V, 0, V, b, ix);
  if (threadIdx.x == 0) out[blockIdx.x] = ix < 0 ? 0 : ix;
}

// Few rows: grid (R, S), block s takes slice s of its row, so a row streams through S SMs
// instead of one; the last of a row's blocks to finish picks from the S partials (in slice
// order, so ties still go to the lower index).
constexpr int kArgmaxSplitThreads = 256;
__global__ void __launch_bounds__(kArgmaxSplitThreads) argmax_split_kernel(const float* logits, int64_t V,
                                                                           int32_t* out, ArgmaxScratch scr) {
  grid_dependency_wait();
  const int r = blockIdx.x, s = blockIdx.y, S = int(gridDim.y);
  const int64_t len = (V + S - 1) / S;
  float b;
  int32_t ix;
  block_argmax_range(logits + int64_t(r) * V, min(V, s * len), min(V, (s + 1) * len), b, ix);
  if (threadIdx.x == 0) {
    scr.val[r * S + s] = b;
    scr.idx[r * S + s] = ix;
  }
  if (!last_block_arrives(&scr.arrivals[r], S) || threadIdx.x != 0) return;
  const volatile float* vals = scr.val + r * S;
  const volatile int32_t* ids = scr.idx + r * S;
  float bb = -INFINITY;
  int32_t bx = -1;
  for (int k = 0; k < S; ++k) {
    const int32_t i = ids[k];
    const float v = vals[k];
    if (i >= 0 && (bx < 0 || v > bb)) {  // slices in index order: strictly larger only
      bb = v;
      bx = i;
    }
  }
  out[r] = bx < 0 ? 0 : bx;
}

// ---- hash-based random numbers: value i of stream (seed, stream) ----------------------------
__device__ __forceinline__ uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
__device__ __forceinline__ uint64_t rnd(uint64_t key, int64_t i) { return mix64(key + uint64_t(i) * 0x9e3779b97f4a7c15ull); }
__device__ __forceinline__ float normal_at(uint64_t key, int64_t i) {
  const uint64_t r = rnd(key, i);
  const float u1 = (float((r >> 40) & 0xffffffu) + 0.5f) * (1.0f / 16777216.0f);
  const float u2 = float((r >> 16) & 0xffffffu) * (1.0f / 16777216.0f);
  return sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
}

__global__ void fill_normal_bf16_kernel(uint16_t* p, int64_t n, float mean, float std, uint64_t key) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    p[i] = float_to_bf16_bits(mean + std * normal_at(key, i));
}
__global__ void fill_normal_f32_kernel(float* p, int64_t n, float mean, float std, uint64_t key) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    p[i] = mean + std * normal_at(key, i);
}
__global__ void fill_bytes_kernel(uint8_t* p, int64_t n, uint64_t key) {
  // 8 bytes per hash.
  const int64_t n8 = (n + 7) / 8;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n8; i += int64_t(gridDim.x) * blockDim.x) {
    uint64_t r = rnd(key, i);
    for (int j = 0; j < 8 && i * 8 + j < n; ++j) p[i * 8 + j] = uint8_t(r >> (8 * j));
  }
}
__global__ void fill_scales_kernel(uint8_t* p, int64_t n, int base, uint64_t key) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int d = int(rnd(key, i) % 3u) - 1;
    p[i] = uint8_t(min(254, max(1, base + d)));
  }
}

int fill_grid(int64_t n) { return int(std::min<int64_t>(cdiv(n, 256), 65536)); }
uint64_t fill_key(uint64_t seed, uint64_t stream) {
  uint64_t z = seed * 0x9e3779b97f4a7c15ull + stream * 0xd1b54a32d192ed03ull + 0x632be59bd9b4e019ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  return z ^ (z >> 29);
}

}  // namespace

void embedding(const int32_t* tok, int T, const uint16_t* E, int H, float* x, cudaStream_t st) {
  if (T <= 0) return;
  launch_kernel(embedding_kernel, T, 256, 0, st, tok, E, H, x);
}

void rmsnorm(const float* x, int T, int H, const float* w, float eps, float* y, cudaStream_t st) {
  if (T <= 0) return;
  // add_rmsnorm with nothing to add does not write x.
  launch_kernel(add_rmsnorm_kernel, T, 256, 0, st, const_cast<float*>(x), nullptr, 0, H, w, eps, y);
}

void add_rmsnorm(float* x, const float* add, int K, int T, int H, const float* w, float eps, float* y,
                 cudaStream_t st) {
  if (T <= 0) return;
  launch_kernel(add_rmsnorm_kernel, T, 256, 0, st, x, add, K, H, w, eps, y);
}

void rope_kv_store(float* qkv, int ld, int T, const int32_t* pos, const int32_t* row_table, const int32_t* tables,
                   int nq, int nk, int half, const float* inv_freq, float conc, const KVView& kv, cudaStream_t st) {
  if (T <= 0) return;
  if (kv.bf16)
    launch_kernel(rope_kv_kernel<uint16_t>, T, 256, 0, st, qkv, ld, pos, row_table, tables, nq, nk, half, inv_freq, conc, kv);
  else
    launch_kernel(rope_kv_kernel<float>, T, 256, 0, st, qkv, ld, pos, row_table, tables, nq, nk, half, inv_freq, conc, kv);
}

void argmax_rows(const float* logits, int R, int64_t V, int32_t* out, cudaStream_t st, const ArgmaxScratch* scr) {
  if (R <= 0) return;
  // Slices of >= 4096 logits, up to the scratch's splits and about two blocks per SM overall.
  const int S = scr && R <= scr->rows ? int(std::min<int64_t>({int64_t(scr->splits), (V + 4095) / 4096,
                                                                int64_t(cdiv(2 * device_sm_count(), R))}))
                                      : 1;
  if (S > 1) {
    launch_kernel(argmax_split_kernel, dim3(unsigned(R), unsigned(S)), kArgmaxSplitThreads, 0, st, logits, V, out, *scr);
    return;
  }
  launch_kernel(argmax_kernel, R, 1024, 0, st, logits, V, out);
}

void fill_normal_bf16(uint16_t* p, int64_t n, float mean, float std, uint64_t seed, uint64_t stream, cudaStream_t st) {
  if (n <= 0) return;
  fill_normal_bf16_kernel<<<fill_grid(n), 256, 0, st>>>(p, n, mean, std, fill_key(seed, stream));
  CUDA_CHECK_LAUNCH();
}
void fill_normal_f32(float* p, int64_t n, float mean, float std, uint64_t seed, uint64_t stream, cudaStream_t st) {
  if (n <= 0) return;
  fill_normal_f32_kernel<<<fill_grid(n), 256, 0, st>>>(p, n, mean, std, fill_key(seed, stream));
  CUDA_CHECK_LAUNCH();
}
void fill_bytes(uint8_t* p, int64_t n, uint64_t seed, uint64_t stream, cudaStream_t st) {
  if (n <= 0) return;
  fill_bytes_kernel<<<fill_grid(cdiv(n, 8)), 256, 0, st>>>(p, n, fill_key(seed, stream));
  CUDA_CHECK_LAUNCH();
}
void fill_scales(uint8_t* p, int64_t n, int base, uint64_t seed, uint64_t stream, cudaStream_t st) {
  if (n <= 0) return;
  fill_scales_kernel<<<fill_grid(n), 256, 0, st>>>(p, n, base, fill_key(seed, stream));
  CUDA_CHECK_LAUNCH();
}

}  // namespace gptoss::cuda

namespace gptoss::cuda {
void ops_kernels(std::vector<KernelEntry>& v) {
  GPTOSS_KERNEL_ENTRY(v, 256, embedding_kernel);
  GPTOSS_KERNEL_ENTRY(v, 256, add_rmsnorm_kernel);
  GPTOSS_KERNEL_ENTRY(v, 256, rope_kv_kernel<float>);
  GPTOSS_KERNEL_ENTRY(v, 256, rope_kv_kernel<uint16_t>);
  GPTOSS_KERNEL_ENTRY(v, kArgmaxSplitThreads, argmax_split_kernel);
  GPTOSS_KERNEL_ENTRY(v, 1024, argmax_kernel);
  GPTOSS_KERNEL_ENTRY(v, 256, fill_normal_bf16_kernel);
  GPTOSS_KERNEL_ENTRY(v, 256, fill_normal_f32_kernel);
  GPTOSS_KERNEL_ENTRY(v, 256, fill_bytes_kernel);
  GPTOSS_KERNEL_ENTRY(v, 256, fill_scales_kernel);
}

std::vector<KernelEntry> all_kernels() {
  std::vector<KernelEntry> v;
  ops_kernels(v);
  attention_kernels(v);
  gemm_kernels(v);
  moe_kernels(v);
  sampling_kernels(v);
  return v;
}

// Throws a clear error when this build has no kernel image for the device's architecture.
void check_kernel_image(int device) {
  cudaFuncAttributes attr;
  const cudaError_t e = cudaFuncGetAttributes(&attr, embedding_kernel);
  if (e == cudaSuccess) return;
  cudaGetLastError();
  cudaDeviceProp p;
  std::string arch = "?";
  if (cudaGetDeviceProperties(&p, device) == cudaSuccess) arch = std::to_string(p.major) + std::to_string(p.minor);
  throw CudaError("this gptoss build has no CUDA kernels for sm_" + arch + " (" + cudaGetErrorString(e) +
                  "); rebuild with -DGPTOSS_CUDA_ARCHS=" + arch);
}
}  // namespace gptoss::cuda
