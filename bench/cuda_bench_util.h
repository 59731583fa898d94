// Shared pieces of the CUDA kernel benchmarks (gptoss_bench_cuda; the same sources build
// against the CPU emulator as gptoss_bench_cuda_emu): device buffers, the device's copy
// bandwidth measured once per run, cudaEvent timing as Google Benchmark manual time, and the
// roofline counters. Host-only code: it calls the launchers of cuda/kernels.cuh, so it compiles
// with the host compiler against either the CUDA runtime or the emulator's cuda_runtime.h.
#pragma once

#include <cuda_runtime.h>

#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench_util.h"
#include "kernels.cuh"

namespace gptoss::bench::gpu {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};
void check(cudaError_t e, const char* expr);
#define GB_CHECK(expr) ::gptoss::bench::gpu::check((expr), #expr)

// Owning device allocation (freed on destruction; move-only).
struct DevBuf {
  void* p = nullptr;
  size_t bytes = 0;
  DevBuf() = default;
  explicit DevBuf(size_t n);
  DevBuf(DevBuf&& o) noexcept : p(o.p), bytes(o.bytes) { o.p = nullptr; o.bytes = 0; }
  DevBuf& operator=(DevBuf&& o) noexcept;
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  ~DevBuf();
  template <class T>
  T* as() const { return static_cast<T*>(p); }
  void zero();
};
// Copies to and from the device (synchronous).
template <class T>
DevBuf upload(const std::vector<T>& v) {
  DevBuf b(v.size() * sizeof(T));
  if (!v.empty()) GB_CHECK(cudaMemcpy(b.p, v.data(), b.bytes, cudaMemcpyHostToDevice));
  return b;
}
template <class T>
std::vector<T> download(const void* p, size_t count) {
  std::vector<T> v(count);
  GB_CHECK(cudaDeviceSynchronize());
  if (count) GB_CHECK(cudaMemcpy(v.data(), p, count * sizeof(T), cudaMemcpyDeviceToHost));
  return v;
}
// Device-side random fills (kernels.cuh), one distinct stream per call.
void fill_bf16(DevBuf& b, float std, uint64_t seed);
void fill_f32(DevBuf& b, float mean, float std, uint64_t seed);
void fill_bytes(DevBuf& b, uint64_t seed);
void fill_scales(DevBuf& b, int base, uint64_t seed);

// The device (first one) and its limits, measured once at start-up in the same process.
struct Device {
  std::string name;
  int sms = 0;
  size_t l2_bytes = 0;
  double copy_gbps = 0;  // device-to-device cudaMemcpy, read + write bytes per second
};
// Whether a device is present: false (with the reason) when cudaGetDeviceCount finds none.
bool present(std::string* why);
const Device& device();
void measure_device(const Options& opt);

// Copies of a working set of `bytes` so that a loop over them exceeds twice the L2 cache (the
// weights of a decode step come from HBM); 1 in smoke mode.
int cold_sets(size_t bytes, const Options& opt);

// Times `run(i)` (i = 0, 1, 2, ...: the cold copy to use) between cudaEvents on stream 0, in
// batches of launches long enough to hide the per-launch event overhead, and reports each
// iteration's share as manual time. Then sets the counters: bytes and FLOPs are per launch;
// bw_frac is bytes/s over the measured copy bandwidth. Errors become SkipWithError.
void time_loop(benchmark::State& s, const Options& opt, const std::function<void(int)>& run, double bytes,
               double flops);

// Registers a benchmark timed by time_loop (manual time, microseconds; one iteration in smoke
// mode). The body runs inside a try block: an exception marks the benchmark failed.
benchmark::internal::Benchmark* add_cuda(const Options& opt, const std::string& name,
                                    std::function<void(benchmark::State&)> body);

// Host references.
inline float bf16(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
}
float mxfp4_value(const uint8_t* blocks, const uint8_t* scales, int64_t k);  // element k of one row

}  // namespace gptoss::bench::gpu
