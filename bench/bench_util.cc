#include "bench_util.h"

#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "common.h"
#include "cpu/matmul.h"
#include "cpu/roofline.h"

namespace gptoss::bench {

namespace {
MachineLimits g_limits;
}

Options parse_options(int* argc, char** argv) {
  Options o;
  int w = 1;
  for (int i = 1; i < *argc; ++i) {
    if (std::strcmp(argv[i], "--gptoss_smoke") == 0) o.smoke = true;
    else argv[w++] = argv[i];
  }
  *argc = w;
  return o;
}

CacheSlot& cache_slot() {
  static CacheSlot s;
  return s;
}

std::string take_flag(int* argc, char** argv, const std::string& name, const std::string& def) {
  const std::string prefix = "--" + name + "=";
  std::string v = def;
  int w = 1;
  for (int i = 1; i < *argc; ++i) {
    if (std::strncmp(argv[i], prefix.c_str(), prefix.size()) == 0) v = argv[i] + prefix.size();
    else argv[w++] = argv[i];
  }
  *argc = w;
  return v;
}

const MachineLimits& limits() { return g_limits; }

void measure_limits(const Options& opt) {
  // 1 GiB beats any cache; the smoke run only needs plausible figures.
  const int64_t bytes = opt.smoke ? int64_t(64) << 20 : int64_t(1) << 30;
  g_limits.read_gbps = cpu::measure_read_bandwidth(bytes, opt.smoke ? 1 : 3);
  // A peak is a best case: on a shared machine one measurement can lose its cores for a while.
  for (int i = 0; i < (opt.smoke ? 1 : 5); ++i) g_limits.peak_gflops = std::max(g_limits.peak_gflops, cpu::measure_peak_gflops());
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.1f", g_limits.read_gbps);
  benchmark::AddCustomContext("read_bandwidth_GBps", buf);
  std::snprintf(buf, sizeof buf, "%.1f", g_limits.peak_gflops);
  benchmark::AddCustomContext("fp32_peak_GFLOPs", buf);
  benchmark::AddCustomContext("simd", cpu::simd_level());
  benchmark::AddCustomContext("omp_threads", std::to_string(omp_get_max_threads()));
  benchmark::AddCustomContext("gptoss_version", GPTOSS_VERSION);
  benchmark::AddCustomContext("gptoss_compiler", GPTOSS_COMPILER);
}

void count_bytes(benchmark::State& s, double bytes) {
  s.SetBytesProcessed(int64_t(bytes * double(s.iterations())));
  if (g_limits.read_gbps > 0)
    s.counters["bw_frac"] = benchmark::Counter(bytes / (g_limits.read_gbps * 1e9),
                                               benchmark::Counter::kIsIterationInvariantRate);
}

void count_flops(benchmark::State& s, double flops) {
  s.counters["FLOP/s"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
  if (g_limits.peak_gflops > 0)
    s.counters["peak_frac"] = benchmark::Counter(flops / (g_limits.peak_gflops * 1e9),
                                                 benchmark::Counter::kIsIterationInvariantRate);
}

void fill_normal(float* p, size_t n, uint64_t seed, float scale) {
#pragma omp parallel
  {
    Rng r(seed + 7919 * uint64_t(omp_get_thread_num()));
#pragma omp for schedule(static)
    for (size_t i = 0; i < n; ++i) p[i] = r.normal() * scale;
  }
}

void fill_bf16(uint16_t* p, size_t n, uint64_t seed, float scale) {
#pragma omp parallel
  {
    Rng r(seed + 7919 * uint64_t(omp_get_thread_num()));
#pragma omp for schedule(static)
    for (size_t i = 0; i < n; ++i) p[i] = f32_to_bf16(r.normal() * scale);
  }
}

void fill_bytes(uint8_t* p, size_t n, uint64_t seed, int lo, int hi) {
#pragma omp parallel
  {
    Rng r(seed + 104729 * uint64_t(omp_get_thread_num()));
#pragma omp for schedule(static)
    for (size_t i = 0; i < n; ++i) p[i] = uint8_t(lo + int(r.next() % uint64_t(hi - lo + 1)));
  }
}

void fill_mxfp4(uint8_t* blocks, uint8_t* scales, size_t rows, size_t K, uint64_t seed) {
  fill_bytes(blocks, rows * K / 2, seed, 0, 255);
  fill_bytes(scales, rows * K / 32, seed + 1, 120, 124);
}

bool check_close(benchmark::State& s, const char* what, const float* out, const float* ref, size_t n,
                 double rtol, double atol) {
  double ss = 0;
  for (size_t i = 0; i < n; ++i) ss += double(ref[i]) * ref[i];
  const double tol = rtol * std::sqrt(ss / double(std::max<size_t>(n, 1))) + atol;
  for (size_t i = 0; i < n; ++i) {
    const double d = std::fabs(double(out[i]) - double(ref[i]));
    if (!std::isfinite(out[i]) || !(d <= tol)) {
      char msg[256];
      std::snprintf(msg, sizeof msg, "validation failed: %s[%zu] = %g, reference %g (tolerance %g)", what, i,
                    double(out[i]), double(ref[i]), tol);
      s.SkipWithError(msg);
      return false;
    }
  }
  return true;
}

int cold_copies(size_t bytes, const Options& opt) {
  if (opt.smoke) return 1;
  const size_t min_set = size_t(256) << 20;  // well past the last-level cache of a server CPU
  return int(std::max<size_t>(1, (min_set + bytes - 1) / bytes));
}

}  // namespace gptoss::bench
