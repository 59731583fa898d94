// Shared helpers for the CUDA kernels: error checking, bf16 conversion, warp reductions.
//
// Every CUDA runtime call goes through CUDA_CHECK and every kernel launch is followed by
// CUDA_CHECK_LAUNCH(), so a failure surfaces as a C++ exception at the call that caused it:
// gptoss::OutOfMemory for allocation failures, gptoss::cuda::CudaError otherwise.
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

#include <cmath>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "common.h"

namespace gptoss::cuda {

struct CudaError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

[[noreturn]] inline void throw_cuda_error(cudaError_t e, const char* expr, const char* file, int line) {
  std::string msg = std::string("CUDA error ") + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ") at " +
                    file + ":" + std::to_string(line) + ": " + expr;
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();  // clear the sticky-free allocation error
    throw OutOfMemory(msg);
  }
  throw CudaError(msg);
}

#define CUDA_CHECK(expr)                                                                  \
  do {                                                                                    \
    cudaError_t e_ = (expr);                                                              \
    if (e_ != cudaSuccess) ::gptoss::cuda::throw_cuda_error(e_, #expr, __FILE__, __LINE__); \
  } while (0)

#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())

inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Runs f once per device (per call site): kernel attributes such as the shared-memory opt-in,
// which must not be set during a graph capture.
template <class F>
void once_per_device(F&& f) {
  static std::mutex mu;
  static std::vector<char> done;
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  std::lock_guard<std::mutex> g(mu);
  if (size_t(dev) < done.size() && done[size_t(dev)]) return;
  f();
  if (done.size() <= size_t(dev)) done.resize(size_t(dev) + 1, 0);
  done[size_t(dev)] = 1;
}

// ---- programmatic dependent launch (sm_90+) -------------------------------------------------
// On a stream marked with stream_set_pdl, launch_kernel lets each kernel be launched while its
// predecessor is still running, so launch latency hides under the predecessor's tail (decode
// steps are ~200 short kernels). It is safe because every kernel calls grid_dependency_wait()
// before it reads anything a predecessor writes (only prefetch_l2 of weights comes first); the
// wait returns once the predecessor has completed and its writes are visible (at once after an
// ordinary launch), then lets the next kernel launch (its blocks take free SM slots and wait in
// turn). The emulator checks that every thread of a kernel so launched calls it.
__device__ __forceinline__ void grid_dependency_wait() {
#if !defined(__CUDACC__)
  cudaGridDependencySynchronize();  // cuda-emu
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Asks L2 for the bytes [p, p + bytes), one 128-byte line per thread t of nt in turn; nothing
// waits for it and nothing faults. Kernels whose operand does not depend on the predecessor (the
// weights) call it before grid_dependency_wait when launched with a programmatic dependency:
// their blocks that start during the predecessor's tail then already stream from memory, where
// otherwise DRAM would idle between the two kernels. (The emulator checks the range is one
// device allocation.)
__device__ __forceinline__ void prefetch_l2(const void* p, int64_t bytes, int t, int nt) {
#if !defined(__CUDACC__)
  if (t == 0) gptoss_emu::check_prefetch(p, size_t(bytes));  // cuda-emu
#elif defined(__CUDA_ARCH__)
  const char* c = static_cast<const char*>(p);
  for (int64_t o = int64_t(t) * 128; o < bytes; o += int64_t(nt) * 128)
    asm volatile("prefetch.global.L2 [%0];" ::"l"(c + o));
#endif
}

// The streams that launch with programmatic dependencies (the engine's, when enabled), and
// whether their weight-streaming kernels prefetch before waiting.
struct PdlStream {
  cudaStream_t st;
  bool prefetch;
};
inline std::vector<PdlStream>& pdl_streams(std::mutex** mu) {
  static std::mutex m;
  static std::vector<PdlStream> v;
  *mu = &m;
  return v;
}

inline void stream_set_pdl(cudaStream_t st, bool on, bool prefetch = true) {
  std::mutex* mu = nullptr;
  auto& v = pdl_streams(&mu);
  std::lock_guard<std::mutex> g(*mu);
  for (size_t i = 0; i < v.size(); ++i)
    if (v[i].st == st) v.erase(v.begin() + long(i));
  if (on && st) v.push_back(PdlStream{st, prefetch});
}

// st's entry, if st launches with programmatic dependencies: (is one, prefetches).
inline std::pair<bool, bool> stream_pdl_mode(cudaStream_t st) {
  if (!st) return {false, false};
  std::mutex* mu = nullptr;
  auto& v = pdl_streams(&mu);
  std::lock_guard<std::mutex> g(*mu);
  for (const PdlStream& s : v)
    if (s.st == st) return {true, s.prefetch};
  return {false, false};
}

inline bool stream_pdl(cudaStream_t st) { return stream_pdl_mode(st).first; }

// Whether kernels launched on st prefetch their weights before grid_dependency_wait.
inline bool stream_prefetch(cudaStream_t st) { return stream_pdl_mode(st).second; }

// kernel<<<grid, block, smem, st>>>(args...), with a programmatic dependency on the previous
// kernel of st when st launches so; checked.
template <typename... P, typename... A>
void launch_kernel(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t st, A&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = st;
  cudaLaunchAttribute attr[1];
  if (stream_pdl(st)) {
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
  }
  CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<A>(args)...));
}

// Dynamic shared memory of a kernel: the default limit is 48 KiB for static and dynamic shared
// memory together (the kernel's own __shared__ arrays count too), so the opt-in is set for every
// kernel that takes dynamic shared memory, to exactly what it launches with; outside any graph
// capture (once_per_device). Over the device's opt-in limit it fails here, not at the launch.
template <typename F>
void allow_dynamic_smem(F* kernel, size_t bytes) {
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

inline int device_sm_count() {
  static std::mutex mu;
  static std::vector<int> sms;
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  std::lock_guard<std::mutex> g(mu);
  if (sms.size() <= size_t(dev)) sms.resize(size_t(dev) + 1, 0);
  if (sms[size_t(dev)] == 0) CUDA_CHECK(cudaDeviceGetAttribute(&sms[size_t(dev)], cudaDevAttrMultiProcessorCount, dev));
  return sms[size_t(dev)];
}

// "The last block merges": the blocks of a group each store partial results, count themselves in
// on `counter` (zero before the launch), and the last to arrive reads every block's partials.
// Every thread of the block calls it after its own stores; it returns the same in all of them.
// The barrier orders all of the block's stores before thread 0's fence (a fence covers what its
// thread has synchronised with), so they are visible device-wide before the count; in the last
// block thread 0 fences again after the count, and the barrier after it orders the others'
// partials before every thread's reads (as cooperative groups' grid sync does). The last block
// leaves the counter at zero for the next launch. Blocks that do not call it must not be counted
// in `blocks`.
__device__ __forceinline__ bool last_block_arrives(int32_t* counter, int blocks) {
  __shared__ bool last;
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    last = atomicAdd(counter, 1) == blocks - 1;
    if (last) {
      *counter = 0;
      __threadfence();
    }
  }
  __syncthreads();
  return last;
}

__device__ __forceinline__ float bf16_bits_to_float(uint32_t h) { return __uint_as_float(h << 16); }

// Round to nearest even (NaN stays NaN), matching csrc/common.h f32_to_bf16.
__device__ __forceinline__ uint16_t float_to_bf16_bits(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); red: 32 floats of shared memory.
__device__ __forceinline__ float block_sum(float v, float* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // red may still be read from a previous call
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float s = 0.f;
  for (int i = 0; i < nw; ++i) s += red[i];
  return s;
}

// t = x / sqrt(mean(x^2) + eps) * w for one row of H, by the whole block (the one formula of
// every RMSNorm here, so fused and plain norms agree bit for bit).
__device__ __forceinline__ void block_rmsnorm(const float* x, int H, const float* w, float eps, float* t, float* red) {
  float ss = 0.f;
  for (int i = threadIdx.x; i < H; i += blockDim.x) ss += x[i] * x[i];
  ss = block_sum(ss, red);
  const float r = 1.0f / sqrtf(ss / float(H) + eps);
  for (int i = threadIdx.x; i < H; i += blockDim.x) t[i] = w[i] * (x[i] * r);
}

// x += add[0] + ... + add[K-1] (rows of H, summed in that order; add null: nothing), then
// y = rmsnorm(x) * w, by one block. A: const float or const volatile float (rows other blocks
// of the same launch wrote).
template <typename A>
__device__ __forceinline__ void block_add_rmsnorm(float* x, A* add, int K, int H, const float* w, float eps, float* y,
                                                  float* red) {
  float ss = 0.f;
  for (int i = threadIdx.x; i < H; i += blockDim.x) {
    float v = x[i];
    if (add) {
      float s = 0.f;
      for (int k = 0; k < K; ++k) s += add[int64_t(k) * H + i];
      v += s;
      x[i] = v;
    }
    ss += v * v;
  }
  ss = block_sum(ss, red);
  const float r = 1.0f / sqrtf(ss / float(H) + eps);
  for (int i = threadIdx.x; i < H; i += blockDim.x) y[i] = w[i] * (x[i] * r);
}

// One KV-cache element (fp32 or bf16 cache) at pool index i.
template <typename KV>
__device__ __forceinline__ void kv_put(void* base, int64_t i, float v);
template <>
__device__ __forceinline__ void kv_put<float>(void* base, int64_t i, float v) {
  static_cast<float*>(base)[i] = v;
}
template <>
__device__ __forceinline__ void kv_put<uint16_t>(void* base, int64_t i, float v) {
  static_cast<uint16_t*>(base)[i] = float_to_bf16_bits(v);
}

// 2^(s-127) for an E8M0 scale byte (s = 0: the denormal 2^-127; s = 255: +inf), as the CPU.
__device__ __forceinline__ float e8m0_to_float(uint32_t s) {
  return s == 0 ? 5.87747175411e-39f : __uint_as_float(s << 23);
}

// E2M1 nibble -> float: {0, .5, 1, 1.5, 2, 3, 4, 6} with bit 3 the sign.
__device__ __forceinline__ float e2m1_to_float(uint32_t n) {
  const uint32_t e = (n >> 1) & 3u, m = n & 1u;
  const uint32_t bits = e == 0 ? (m ? (126u << 23) : 0u) : (((e + 126u) << 23) | (m << 22));
  return __uint_as_float(bits | ((n & 8u) << 28));
}

}  // namespace gptoss::cuda
