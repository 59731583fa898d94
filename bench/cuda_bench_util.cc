#include "cuda_bench_util.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>

namespace gptoss::bench::gpu {

namespace {
Device g_device;
std::atomic<uint64_t> g_stream{1};
}  // namespace

void check(cudaError_t e, const char* expr) {
  if (e == cudaSuccess) return;
  cudaGetLastError();
  throw Error(std::string(cudaGetErrorName(e)) + " (" + cudaGetErrorString(e) + "): " + expr);
}

DevBuf::DevBuf(size_t n) : bytes(n) { GB_CHECK(cudaMalloc(&p, n ? n : 16)); }
DevBuf& DevBuf::operator=(DevBuf&& o) noexcept {
  if (this != &o) {
    if (p) cudaFree(p);
    p = o.p;
    bytes = o.bytes;
    o.p = nullptr;
    o.bytes = 0;
  }
  return *this;
}
DevBuf::~DevBuf() {
  if (p) cudaFree(p);
}
void DevBuf::zero() { GB_CHECK(cudaMemset(p, 0, bytes)); }

void fill_bf16(DevBuf& b, float std, uint64_t seed) {
  cuda::fill_normal_bf16(b.as<uint16_t>(), int64_t(b.bytes / 2), 0.f, std, seed, g_stream++, 0);
}
void fill_f32(DevBuf& b, float mean, float std, uint64_t seed) {
  cuda::fill_normal_f32(b.as<float>(), int64_t(b.bytes / 4), mean, std, seed, g_stream++, 0);
}
void fill_bytes(DevBuf& b, uint64_t seed) { cuda::fill_bytes(b.as<uint8_t>(), int64_t(b.bytes), seed, g_stream++, 0); }
void fill_scales(DevBuf& b, int base, uint64_t seed) {
  cuda::fill_scales(b.as<uint8_t>(), int64_t(b.bytes), base, seed, g_stream++, 0);
}

bool present(std::string* why) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) {
    cudaGetLastError();
    *why = e != cudaSuccess ? std::string("cudaGetDeviceCount failed: ") + cudaGetErrorString(e)
                            : std::string("cudaGetDeviceCount found no device");
    return false;
  }
  return true;
}

const Device& device() { return g_device; }

void measure_device(const Options& opt) {
  cudaDeviceProp p{};
  GB_CHECK(cudaGetDeviceProperties(&p, 0));
  g_device.name = p.name;
  g_device.sms = p.multiProcessorCount;
  g_device.l2_bytes = size_t(p.l2CacheSize);
  // Best of a few 1 GiB copies (far past L2); the smoke run only needs a plausible figure.
  const size_t bytes = opt.smoke ? size_t(8) << 20 : size_t(1) << 30;
  DevBuf a(bytes), b(bytes);
  GB_CHECK(cudaMemset(a.p, 1, bytes));
  cudaEvent_t e0, e1;
  GB_CHECK(cudaEventCreate(&e0));
  GB_CHECK(cudaEventCreate(&e1));
  float best = 1e30f;
  for (int r = 0; r < (opt.smoke ? 2 : 6); ++r) {
    GB_CHECK(cudaEventRecord(e0, 0));
    GB_CHECK(cudaMemcpyAsync(b.p, a.p, bytes, cudaMemcpyDeviceToDevice, 0));
    GB_CHECK(cudaEventRecord(e1, 0));
    GB_CHECK(cudaEventSynchronize(e1));
    float ms = 0;
    GB_CHECK(cudaEventElapsedTime(&ms, e0, e1));
    if (r > 0) best = std::min(best, ms);  // the first copy warms up
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  g_device.copy_gbps = 2.0 * double(bytes) / (std::max(double(best), 1e-6) * 1e-3) / 1e9;
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.1f", g_device.copy_gbps);
  benchmark::AddCustomContext("device", g_device.name);
  benchmark::AddCustomContext("device_sms", std::to_string(g_device.sms));
  benchmark::AddCustomContext("device_l2_bytes", std::to_string(g_device.l2_bytes));
  benchmark::AddCustomContext("device_copy_GBps", buf);
}

int cold_sets(size_t bytes, const Options& opt) {
  if (opt.smoke) return 1;
  const size_t min_set = std::max<size_t>(2 * g_device.l2_bytes, size_t(64) << 20);
  return int(std::min<size_t>(64, std::max<size_t>(1, (min_set + bytes - 1) / bytes)));
}

void time_loop(benchmark::State& s, const Options& opt, const std::function<void(int)>& run, double bytes,
               double flops) {
  cudaEvent_t e0, e1;
  GB_CHECK(cudaEventCreate(&e0));
  GB_CHECK(cudaEventCreate(&e1));
  auto timed = [&](int n, int first) {  // n launches, seconds in all
    GB_CHECK(cudaEventRecord(e0, 0));
    for (int i = 0; i < n; ++i) run(first + i);
    GB_CHECK(cudaEventRecord(e1, 0));
    GB_CHECK(cudaEventSynchronize(e1));
    float ms = 0;
    GB_CHECK(cudaEventElapsedTime(&ms, e0, e1));
    return double(ms) * 1e-3;
  };
  // Launches per batch: enough for ~1 ms of work (one in smoke mode).
  int batch = 1;
  if (!opt.smoke) {
    timed(1, 0);  // warm-up
    const double one = timed(1, 1);
    batch = int(std::clamp(1e-3 / std::max(one, 1e-7), 1.0, 256.0));
  }
  double total = 0;
  int64_t launches = 0, k = 0;
  for (auto _ : s) {
    const double t = timed(batch, int(k));
    k += batch;
    s.SetIterationTime(t / batch);
    total += t;
    launches += batch;
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  const double per = total / double(std::max<int64_t>(launches, 1));
  s.counters["launches_per_iter"] = batch;
  if (bytes > 0) {
    s.counters["bytes_per_second"] = bytes / per;
    if (g_device.copy_gbps > 0) s.counters["bw_frac"] = bytes / per / (g_device.copy_gbps * 1e9);
  }
  if (flops > 0) s.counters["FLOP/s"] = flops / per;
}

benchmark::internal::Benchmark* add_cuda(const Options& opt, const std::string& name,
                                    std::function<void(benchmark::State&)> body) {
  auto* b = benchmark::RegisterBenchmark(name.c_str(), [body](benchmark::State& s) {
    try {
      body(s);
    } catch (const std::exception& e) {
      s.SkipWithError((std::string("exception: ") + e.what()).c_str());
    }
  });
  b->UseManualTime()->Unit(benchmark::kMicrosecond);
  if (opt.smoke) b->Iterations(1);
  return b;
}

float mxfp4_value(const uint8_t* blocks, const uint8_t* scales, int64_t k) {
  static const float kFp4[16] = {0.f, .5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f, -0.f, -.5f, -1.f, -1.5f, -2.f, -3.f, -4.f, -6.f};
  const uint8_t byte = blocks[k / 2];
  const int nib = (k & 1) ? byte >> 4 : byte & 15;
  return std::ldexp(kFp4[nib], int(scales[k / 32]) - 127);
}

}  // namespace gptoss::bench::gpu
