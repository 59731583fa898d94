// Shared pieces of the Google Benchmark programs in bench/: random data, the machine limits
// measured once per run, the roofline counters, and the check that a kernel's output matches
// its reference before it is timed.
#pragma once

#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>
#include <string>
#include <utility>
#include <vector>

namespace gptoss::bench {

// Command-line switches of our own, taken out of argv before Google Benchmark sees it.
struct Options {
  bool smoke = false;  // --gptoss_smoke: smallest size of each benchmark, one iteration each
};
// Removes the flags it knows from argv (argc updated) and returns them.
Options parse_options(int* argc, char** argv);
// Removes every "--<name>=VALUE" from argv and returns the last VALUE (`def` if none).
std::string take_flag(int* argc, char** argv, const std::string& name, const std::string& def);

// Registers a benchmark timed in wall-clock time (the kernels run on all OpenMP threads), in
// microseconds; one iteration in smoke mode.
template <class... A>
benchmark::internal::Benchmark* add(const Options& opt, const std::string& name, A&&... a) {
  auto* b = benchmark::RegisterBenchmark(name.c_str(), std::forward<A>(a)...);
  b->UseRealTime()->Unit(benchmark::kMicrosecond);
  if (opt.smoke) b->Iterations(1);
  return b;
}

// Read bandwidth (GB/s) and fp32 FMA peak (GFLOP/s) of this machine, measured once at start-up
// in the same process (csrc/cpu/roofline.h) and recorded in the benchmark context.
struct MachineLimits {
  double read_gbps = 0, peak_gflops = 0;
};
const MachineLimits& limits();
void measure_limits(const Options& opt);

// Counters: bytes and FLOPs per iteration, as rates and as fractions of the machine limits
// ("bw_frac" and "peak_frac", shown with Google Benchmark's "/s" suffix but dimensionless).
void count_bytes(benchmark::State& s, double bytes_per_iter);
void count_flops(benchmark::State& s, double flops_per_iter);

// The gpt-oss shapes (spec: /work/shared/spec/gpt-oss.md): both models share every per-layer
// matrix shape; they differ in depth and in the number of experts.
constexpr int64_t kHidden = 2880, kHeads = 64, kKvHeads = 8, kHeadDim = 64, kQDim = kHeads * kHeadDim,
                  kKvDim = kKvHeads * kHeadDim, kInter = 2880, kVocab = 201088, kTopK = 4, kWindow = 128;
struct ModelShape {
  const char* name;
  int64_t layers, experts;
};
constexpr ModelShape kModels[] = {{"gpt-oss-20b", 24, 32}, {"gpt-oss-120b", 36, 128}};

// Google Benchmark calls a benchmark function several times (to size the iteration count);
// the inputs (up to gigabytes of weights) are built once and kept in a one-slot cache, so the
// benchmark that ran last holds its data until the next one needs the slot.
struct CacheSlot {
  std::string key;
  std::shared_ptr<void> data;
};
CacheSlot& cache_slot();  // one for the whole program, whatever the data type
template <class D, class Make>
std::shared_ptr<D> cached(const std::string& key, Make make) {
  std::string& k = cache_slot().key;
  std::shared_ptr<void>& slot = cache_slot().data;
  if (k != key || !slot) {
    slot.reset();  // free the previous benchmark's data first
    slot = std::shared_ptr<D>(make());
    k = key;
  }
  return std::static_pointer_cast<D>(slot);
}

// Deterministic random numbers (xorshift), per seed.
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint64_t next() {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
  }
  float uniform() { return float(next() >> 40) / float(1 << 24); }  // [0, 1)
  float normal() {                                                   // roughly N(0, 1)
    float a = 0;
    for (int i = 0; i < 4; ++i) a += uniform();
    return (a - 2.0f) * 1.732f;
  }
};

// 64-byte aligned buffer of T.
template <class T>
struct Buffer {
  std::unique_ptr<T, void (*)(void*)> p{nullptr, std::free};
  size_t n = 0;
  Buffer() = default;
  explicit Buffer(size_t count) : p(static_cast<T*>(std::aligned_alloc(64, (count * sizeof(T) + 63) / 64 * 64)), std::free), n(count) {
    if (!p) throw std::bad_alloc();
  }
  T* data() const { return p.get(); }
  T& operator[](size_t i) const { return p.get()[i]; }
};

// Parallel fills (large weight pools take seconds on one thread).
void fill_normal(float* p, size_t n, uint64_t seed, float scale = 1.0f);
void fill_bf16(uint16_t* p, size_t n, uint64_t seed, float scale);
void fill_bytes(uint8_t* p, size_t n, uint64_t seed, int lo, int hi);
// MXFP4 weights: random nibbles, scales around 2^-5 (as trained weights have).
void fill_mxfp4(uint8_t* blocks, uint8_t* scales, size_t rows, size_t K, uint64_t seed);

// Compares out[0, n) with ref[0, n): true when every |out - ref| <= rtol * rms(ref) + atol
// and everything is finite; else marks the benchmark failed (SkipWithError, which the JSON
// output reports as "error_occurred") and returns false. The caller returns at once then.
bool check_close(benchmark::State& s, const char* what, const float* out, const float* ref, size_t n,
                 double rtol = 1e-4, double atol = 1e-6);

// A working set of `bytes` per copy, cycled over enough copies to exceed the last-level cache,
// so that weights come from DRAM as they do in real decoding. 1 in smoke mode.
int cold_copies(size_t bytes, const Options& opt);

}  // namespace gptoss::bench
