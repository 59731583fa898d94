// cuda-emu: the subset of the CUDA runtime and device language that cuda/ uses, implemented on
// the CPU, so the unchanged kernel sources compile with the host compiler and run in CI (no GPU).
//
// Every CUDA thread of a block is a fiber (its own stack, cooperative switching); a block's
// fibers run on one OS thread until each has finished or waits at a barrier, so __syncthreads
// and the warp shuffles have their real semantics (a shuffle is a warp barrier with an exchange
// slot). Blocks start in an order shuffled per launch and are interleaved: a block that does an
// atomic on global memory may be held there while other blocks run (up to 4 blocks in flight;
// the first ones to arrive are held the longest), so a block that counts itself in before all
// its stores are done is caught by the block that arrives last. Each block in flight has its
// own static and dynamic shared memory (translate.cmake turns `__shared__ T x[...]` into a
// reference into the block's arena).
// Global memory has a store-visibility model: a block's stores become visible to other blocks
// only when one of its threads calls __threadfence, or when it exits (kernel end), never through
// a plain store or an atomic alone. Device memory is mapped read-only to kernels; the first store
// of a block to a page faults, the page becomes the block's private copy, and a fence or the
// block's exit merges the bytes it changed into what every other block sees (a block that is
// held keeps its copies to itself). So a missing fence, or stores that the fence does not cover
// (no barrier between the other threads' stores and the fencing thread), leave the last block
// reading stale partials. Atomics on global memory act on the visible memory at once.
// The legacy default stream (0) is asynchronous: its memsets and copies run when something waits
// for it (a synchronising call, a kernel on stream 0, a blocking stream), not before work on a
// cudaStreamNonBlocking stream, so work that relies on an order between the two is caught.
// An event recorded on a capturing stream by cudaEventRecord marks the capture only (no graph
// node): it is never recorded by a replay, and elapsed times involving it fail, as on CUDA;
// cudaEventRecordWithFlags(..., cudaEventRecordExternal) records at each replay.
// What it checks beyond running the code: launch limits (block <= 1024 threads, grid y/z <=
// 65535, static + dynamic shared memory <= 48 KiB unless the dynamic limit is raised by
// cudaFuncSetAttribute, 227 KiB at most; the static size is measured as the blocks declare it),
// barriers that not every live thread reaches (deadlock), ldmatrix row alignment, copies
// whose pointers are not device memory of the right extent, raw pointer kernel arguments that
// are not device memory, guard pages around every allocation (an overrun faults), vector loads
// and stores (float4, uint4, ...) at addresses not aligned to their size (they trap: the emulator
// is built with -fsanitize=alignment), L2 prefetches of ranges outside one device allocation,
// missing barriers that the thread order (flipped from block to block) exposes, reliance on an
// order of blocks (they run shuffled), capture rules of CUDA graphs (no synchronisation or
// allocation while a stream captures), cp.async copies read before their wait (cuda_pipeline.h:
// they land only at __pipeline_wait_prior), kernels launched with a programmatic dependency
// (cudaLaunchKernelEx) in which a thread never calls cudaGridDependencySynchronize. A fault
// names the launch and thread.
// What it cannot check: timing, register and occupancy limits, the acquire side of the memory
// model (a block sees every store published before it reads, fence or not), races between the
// threads of a block on global memory, the hardware's own fragment layouts. MMAs are exact by
// default; emu_set_mma_mode("hardware") aligns and truncates them as tensor cores do (mma_sync.h).
//
// Environment: GPTOSS_EMU_MEMORY_GIB (device memory, default 4), GPTOSS_EMU_SMS (multiprocessors,
// default 132), GPTOSS_EMU_SM (compute capability, default 90), GPTOSS_EMU_VERBOSE (print errors),
// GPTOSS_EMU_MMA (the MMA mode at start: exact, hardware, flush_a, flush_b), GPTOSS_EMU_INFLIGHT
// (blocks in flight, default 4; 1: one after the other), GPTOSS_EMU_VISIBILITY=0 (stores visible
// at once: no read-only mapping, no page faults).
//
// Built only into the test backend `gptoss._core.cuda_emu` (see cuda/CMakeLists.txt), with
// -Dcuda=cuda_emu so its symbols never meet the real backend's.
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmath>
#include <tuple>
#include <type_traits>
#include <utility>

// ---- language ------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
// Static shared memory is rewritten by translate.cmake (GPTOSS_SHARED below); a declaration it did
// not see (a header not in cuda/emu/CMakeLists.txt's list) fails to compile here.
#define __shared__ __shared__memory_declaration_not_translated_by_cuda_emu
#define __align__(n) __attribute__((aligned(n)))
#define __restrict__ __restrict

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
  unsigned x, y, z;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(8) uint2 {
  unsigned x, y;
};
struct alignas(16) int4 {
  int x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline float2 make_float2(float x, float y) { return float2{x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }

// ---- runtime types -------------------------------------------------------------------------
enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevice = 101,
  cudaErrorNoDevice = 100,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorNotReady = 600,
  cudaErrorIllegalAddress = 700,
  cudaErrorMisalignedAddress = 716,
  cudaErrorLaunchFailure = 719,
  cudaErrorStreamCaptureUnsupported = 900,
  cudaErrorStreamCaptureInvalidated = 901,
  cudaErrorInvalidDeviceFunction = 98,
};
using cudaError = cudaError_t;
enum cudaMemcpyKind : int {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4
};
enum cudaFuncAttribute : int { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum cudaDeviceAttr : int { cudaDevAttrMaxSharedMemoryPerBlockOptin = 97, cudaDevAttrMultiProcessorCount = 16 };
enum cudaStreamCaptureMode : int {
  cudaStreamCaptureModeGlobal = 0,
  cudaStreamCaptureModeThreadLocal = 1,
  cudaStreamCaptureModeRelaxed = 2
};
enum cudaStreamCaptureStatus : int { cudaStreamCaptureStatusNone = 0, cudaStreamCaptureStatusActive = 1 };
constexpr unsigned cudaStreamNonBlocking = 1;

struct cudaDeviceProp {
  char name[256];
  size_t totalGlobalMem;
  int major, minor;
  int multiProcessorCount;
  size_t sharedMemPerBlockOptin;
  int l2CacheSize;
};
struct cudaFuncAttributes {
  size_t sharedSizeBytes = 0;  // static shared memory (as far as the blocks run so far declared it)
  size_t constSizeBytes = 0;
  size_t localSizeBytes = 0;
  int maxThreadsPerBlock = 1024;
  int numRegs = 0;
  int ptxVersion = 0, binaryVersion = 0;
  int maxDynamicSharedSizeBytes = 48 * 1024;
};
enum cudaEventRecordFlags : unsigned { cudaEventRecordDefault = 0, cudaEventRecordExternal = 1 };

namespace gptoss_emu {
struct Stream;
struct Event;
struct Graph;
struct GraphExec;
}  // namespace gptoss_emu
using cudaStream_t = gptoss_emu::Stream*;
using cudaEvent_t = gptoss_emu::Event*;
using cudaGraph_t = gptoss_emu::Graph*;
using cudaGraphExec_t = gptoss_emu::GraphExec*;

// ---- runtime API ---------------------------------------------------------------------------
const char* cudaGetErrorName(cudaError_t e);
const char* cudaGetErrorString(cudaError_t e);
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
cudaError_t cudaGetDeviceCount(int* n);
cudaError_t cudaSetDevice(int d);
cudaError_t cudaGetDevice(int* d);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int d);
cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int d);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaMalloc(void** p, size_t bytes);
template <typename T>
inline cudaError_t cudaMalloc(T** p, size_t bytes) {
  return cudaMalloc(reinterpret_cast<void**>(p), bytes);
}
cudaError_t cudaFree(void* p);
cudaError_t cudaMallocHost(void** p, size_t bytes);
cudaError_t cudaFreeHost(void* p);
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t st = nullptr);
cudaError_t cudaMemset(void* p, int v, size_t bytes);
cudaError_t cudaMemsetAsync(void* p, int v, size_t bytes, cudaStream_t st = nullptr);
cudaError_t cudaStreamCreate(cudaStream_t* st);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* st, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t st);
cudaError_t cudaStreamSynchronize(cudaStream_t st);
cudaError_t cudaStreamBeginCapture(cudaStream_t st, cudaStreamCaptureMode mode);
cudaError_t cudaStreamEndCapture(cudaStream_t st, cudaGraph_t* g);
cudaError_t cudaStreamIsCapturing(cudaStream_t st, cudaStreamCaptureStatus* s);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* e, cudaGraph_t g, unsigned long long flags = 0);
cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t st);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e);
cudaError_t cudaGraphDestroy(cudaGraph_t g);
cudaError_t cudaEventCreate(cudaEvent_t* e);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t st = nullptr);
cudaError_t cudaEventRecordWithFlags(cudaEvent_t e, cudaStream_t st = nullptr, unsigned flags = 0);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b);

namespace gptoss_emu {
cudaError_t func_set_max_dynamic_smem(const void* fn, int bytes);
cudaError_t func_get_attributes(cudaFuncAttributes* a, const void* fn);
}
template <typename F>
inline cudaError_t cudaFuncSetAttribute(F* fn, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  return gptoss_emu::func_set_max_dynamic_smem(reinterpret_cast<const void*>(fn), value);
}
template <typename F>
inline cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* a, F* fn) {
  return gptoss_emu::func_get_attributes(a, reinterpret_cast<const void*>(fn));
}

// ---- the emulator's device side ------------------------------------------------------------
namespace gptoss_emu {

const uint3& thread_idx();
const uint3& block_idx();
void* dynamic_smem();
// The calling block's instance of the static shared variable declared at `tag` (GPTOSS_SHARED):
// bytes of its arena, uninitialised (poisoned) when the block first declares it.
void* block_shared(const void* tag, size_t bytes, size_t align);
void syncthreads();
// __threadfence: the calling block's stores so far become visible to every block.
void threadfence();
// Where an atomic on global memory reads and writes (AtomicSite), then atomic_done: the atomic is
// visible at once; the block may be held there while others run.
struct AtomicSite {
  char* visible;  // the value every block sees
  char* base;     // the block's base copy of the page (so the merge does not repeat it), or null
  char* view;     // the block's own view of it, or null (then `visible` is its view)
};
bool is_block_shared(const void* p);  // in the calling block's shared memory (static or dynamic)
AtomicSite atomic_site(void* p, size_t bytes);
void atomic_done();
// Every live lane of the calling warp deposits `bits`; returns the bits of lane `src` (its own
// when src is out of the warp).
uint64_t warp_exchange(uint64_t bits, int src_lane);
// Every live lane of the calling warp deposits `bits`; out[i] = lane i's (0 past the warp's end).
void warp_gather(uint64_t bits, uint64_t* out);
// The same for n <= kGatherWords words a lane: out[32 * n], lane i's words at out[i * n].
constexpr int kGatherWords = 3;
void warp_gather_n(const uint64_t* words, int n, uint64_t* out);
int lane_id();

struct LaunchConfig {
  dim3 grid, block;
  size_t smem;
  cudaStream_t stream;
  const void* fn;
  bool pdl = false;  // programmatic dependent launch: every thread must call cudaGridDependencySynchronize
};
void grid_dependency_wait();
// Validates the configuration, then runs (or, while the stream captures, records) `body`
// once per thread of every block. Errors are reported through cudaGetLastError.
struct Body {
  virtual ~Body() = default;
  virtual void run() const = 0;
};
void launch(const LaunchConfig& c, Body* body);  // takes ownership
bool is_device_range(const void* p, size_t bytes);
// A device-side fault (a misaligned or misplaced access the hardware would trap): the launch
// fails with `what`, the calling block is abandoned.
[[noreturn]] void device_fault(const char* what);
// prefetch_l2 (common.cuh): faults unless [p, p + bytes) lies in one device allocation.
void check_prefetch(const void* p, size_t bytes);
uint64_t prefetch_count();  // ranges checked so far (tests: the prefetching path ran)
void bad_kernel_argument(const LaunchConfig& c, int index);

template <typename T>
inline void check_arg(const LaunchConfig& c, int i, const T& v, bool& ok) {
  if constexpr (std::is_pointer_v<T>) {
    if (ok && v != nullptr && !is_device_range(static_cast<const void*>(v), 1)) {
      bad_kernel_argument(c, i);
      ok = false;
    }
  }
}

template <typename... P>
struct KernelBody final : Body {
  void (*fn)(P...);
  std::tuple<std::decay_t<P>...> args;
  template <typename... A>
  KernelBody(void (*f)(P...), A&&... a) : fn(f), args(std::forward<A>(a)...) {}
  void run() const override { std::apply(fn, args); }
};

template <typename... P>
struct Launcher {
  LaunchConfig c;
  void (*fn)(P...);
  template <typename... A>
  void operator()(A&&... a) const {
    static_assert(sizeof...(A) == sizeof...(P), "kernel launched with the wrong number of arguments");
    auto* b = new KernelBody<P...>(fn, std::forward<A>(a)...);
    bool ok = true;
    int i = 0;
    std::apply([&](const auto&... v) { (check_arg(c, i++, v, ok), ...); }, b->args);
    if (!ok) {
      delete b;
      return;
    }
    launch(c, b);
  }
};
template <typename... P>
inline Launcher<P...> make_launcher(dim3 grid, dim3 block, size_t smem, cudaStream_t st, void (*fn)(P...)) {
  return Launcher<P...>{LaunchConfig{grid, block, smem, st, reinterpret_cast<const void*>(fn), false}, fn};
}

template <typename T>
inline T shfl_bits(T v, int src) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffle of a type over 8 bytes");
  uint64_t b = 0;
  memcpy(&b, &v, sizeof(T));
  b = warp_exchange(b, src);
  T r;
  memcpy(&r, &b, sizeof(T));
  return r;
}

}  // namespace gptoss_emu

// cudaLaunchKernelEx with the one attribute cuda/ uses (programmatic stream serialisation).
enum cudaLaunchAttributeID : int { cudaLaunchAttributeProgrammaticStreamSerialization = 6 };
union cudaLaunchAttributeValue {
  int programmaticStreamSerializationAllowed;
  char pad[64];
};
struct cudaLaunchAttribute {
  cudaLaunchAttributeID id;
  cudaLaunchAttributeValue val;
};
struct cudaLaunchConfig_t {
  dim3 gridDim, blockDim;
  size_t dynamicSmemBytes;
  cudaStream_t stream;
  cudaLaunchAttribute* attrs;
  unsigned numAttrs;
};
template <typename... P, typename... A>
inline cudaError_t cudaLaunchKernelEx(const cudaLaunchConfig_t* cfg, void (*fn)(P...), A&&... args) {
  auto l = gptoss_emu::make_launcher(cfg->gridDim, cfg->blockDim, cfg->dynamicSmemBytes, cfg->stream, fn);
  for (unsigned i = 0; i < cfg->numAttrs; ++i)
    if (cfg->attrs[i].id == cudaLaunchAttributeProgrammaticStreamSerialization)
      l.c.pdl = cfg->attrs[i].val.programmaticStreamSerializationAllowed != 0;
  l(std::forward<A>(args)...);
  return cudaGetLastError();  // a launch reports its own error here
}
inline void cudaGridDependencySynchronize() { gptoss_emu::grid_dependency_wait(); }


// kernel<<<grid, block, smem, stream>>>(args) is written GPTOSS_LAUNCH(grid, block, smem, stream, kernel)(args)
#define GPTOSS_LAUNCH(grid, block, smem, stream, ...) \
  ::gptoss_emu::make_launcher(dim3(grid), dim3(block), size_t(smem), (stream), __VA_ARGS__)
// extern __shared__ T name[];
#define GPTOSS_DYNAMIC_SMEM(T, name) T* name = static_cast<T*>(::gptoss_emu::dynamic_smem())
// __shared__ [__align__(A)] T name dims;  (dims: [n][m]... or nothing): the block's own instance.
#define GPTOSS_SHARED_A(A, T, name, dims)                                                                 \
  static char name##_gptoss_emu_tag;                                                                     \
  using name##_gptoss_emu_type = T dims;                                                                 \
  name##_gptoss_emu_type& name = *static_cast<name##_gptoss_emu_type*>(::gptoss_emu::block_shared(        \
      &name##_gptoss_emu_tag, sizeof(name##_gptoss_emu_type),                                           \
      alignof(name##_gptoss_emu_type) > size_t(A) ? alignof(name##_gptoss_emu_type) : size_t(A)))
#define GPTOSS_SHARED(T, name, dims) GPTOSS_SHARED_A(1, T, name, dims)

#define threadIdx (::gptoss_emu::thread_idx())
#define blockIdx (::gptoss_emu::block_idx())
// The same for every thread of a launch (launches run one at a time): plain variables, not
// macros, so that cudaLaunchConfig_t can have members of these names.
extern dim3 blockDim, gridDim;

inline void __syncthreads() { gptoss_emu::syncthreads(); }
inline void __threadfence() { gptoss_emu::threadfence(); }
template <typename T>
inline T __shfl_xor_sync(unsigned, T v, int mask, int = 32) {
  return gptoss_emu::shfl_bits(v, gptoss_emu::lane_id() ^ mask);
}
template <typename T>
inline T __shfl_sync(unsigned, T v, int src, int = 32) {
  return gptoss_emu::shfl_bits(v, src);
}
template <typename T>
inline T __shfl_down_sync(unsigned, T v, unsigned d, int = 32) {
  const int s = gptoss_emu::lane_id() + int(d);
  return gptoss_emu::shfl_bits(v, s < 32 ? s : gptoss_emu::lane_id());
}
inline void __syncwarp(unsigned = 0xffffffffu) { gptoss_emu::warp_exchange(0, 0); }

namespace gptoss_emu {
template <typename To, typename From>
inline To bits_as(From v) {
  static_assert(sizeof(To) == sizeof(From), "bit cast between sizes");
  To r;
  memcpy(&r, &v, sizeof r);
  return r;
}
}  // namespace gptoss_emu
inline float __uint_as_float(unsigned u) { return gptoss_emu::bits_as<float>(u); }
inline unsigned __float_as_uint(float f) { return gptoss_emu::bits_as<unsigned>(f); }
inline float __int_as_float(int u) { return gptoss_emu::bits_as<float>(u); }
inline int __float_as_int(float f) { return gptoss_emu::bits_as<int>(f); }
template <typename T>
inline T __ldg(const T* p) {
  return *p;
}
template <typename T>
inline T __ldcg(const T* p) {
  return *p;
}
// Byte j of the result is byte (s >> 4j) & 7 of y:x (x the low four bytes).
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
  const unsigned long long v = (unsigned long long)(x) | ((unsigned long long)(y) << 32);
  unsigned r = 0;
  for (int j = 0; j < 4; ++j) r |= unsigned((v >> (8 * ((s >> (4 * j)) & 7u))) & 0xffu) << (8 * j);
  return r;
}
// Fibers switch only at barriers (and after an atomic on global memory), so a read-modify-write
// is atomic. On global memory it acts on what every block sees (AtomicSite).
namespace gptoss_emu {
template <typename T, typename F>
inline T atomic_rmw(T* p, F f) {
  if (is_block_shared(p)) {
    const T old = *p;
    *p = f(old);
    return old;
  }
  const AtomicSite s = atomic_site(p, sizeof(T));
  T old;
  memcpy(&old, s.visible, sizeof(T));
  const T nv = f(old);
  memcpy(s.visible, &nv, sizeof(T));
  if (s.base) memcpy(s.base, &nv, sizeof(T));
  if (s.view) memcpy(s.view, &nv, sizeof(T));
  atomic_done();
  return old;
}
}  // namespace gptoss_emu
template <typename T>
inline T atomicAdd(T* p, T v) {
  return gptoss_emu::atomic_rmw(p, [v](T old) { return T(old + v); });
}
template <typename T>
inline T atomicMax(T* p, T v) {
  return gptoss_emu::atomic_rmw(p, [v](T old) { return v > old ? v : old; });
}
template <typename A, typename B>
inline std::common_type_t<A, B> min(A a, B b) {
  using T = std::common_type_t<A, B>;
  return T(b) < T(a) ? T(b) : T(a);
}
template <typename A, typename B>
inline std::common_type_t<A, B> max(A a, B b) {
  using T = std::common_type_t<A, B>;
  return T(a) < T(b) ? T(b) : T(a);
}
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float cospif(float x) { return float(std::cos(double(x) * 3.14159265358979323846)); }
inline float sinpif(float x) { return float(std::sin(double(x) * 3.14159265358979323846)); }
#include <math.h>  // expf, sincosf (glibc), fminf, ...
