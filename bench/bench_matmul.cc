// Benchmark of the CPU matmul kernels (csrc/cpu/matmul.h).
//
//   bench_matmul [--quick] [--only gemv|gemm]
//
// 1. Machine limits: read bandwidth of a 1 GiB buffer (all OpenMP threads, AVX2 loads) and
//    memcpy bandwidth; fp32 FMA peak (AVX-512 or AVX2 FMA chains on all threads).
// 2. T = 1 GEMV for the gpt-oss-20b decode shapes: GB/s of weight bytes read and % of the
//    measured read bandwidth. Enough copies of each matrix are cycled so that the working set
//    exceeds the caches (weights come from DRAM, as in real decoding).
// 3. GEMM (T = 64, 512) for 2880x2880 and 5760x2880, bf16 and MXFP4: GFLOP/s and % of peak, on
//    the fp32 path and, where the CPU has AVX512_BF16, on bf16 dot products (precision bf16,
//    against the measured vdpbf16ps peak) side by side.
//
// GPTOSS_SIMD=avx2|scalar selects a narrower kernel path; OMP_NUM_THREADS sets the threads.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cpu/matmul.h"
#include "cpu/roofline.h"

#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

using gptoss::cpu::matmul_bf16;
using gptoss::cpu::matmul_mxfp4;
using gptoss::cpu::Precision;

namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Best time of fn() over at least min_iters runs and min_time seconds (after one warm-up).
template <class F>
double best_time(F&& fn, int min_iters = 3, double min_time = 0.25) {
  fn();
  double best = 1e30, start = now();
  for (int i = 0; i < min_iters || now() - start < min_time; ++i) {
    double t0 = now();
    fn();
    best = std::min(best, now() - t0);
    if (i > 10000) break;
  }
  return best;
}

// Times fn(i) call by call (i = 0, 1, 2, ...) for at least min_time seconds and min_calls calls;
// returns the best and the median single-call time. Per-call timing keeps the best-case number
// meaningful on a shared machine (a call that lost its core to another process is just slow).
struct CallTimes {
  double best, median;
};
CallTimes summarize(std::vector<double> ts) {
  std::sort(ts.begin(), ts.end());
  return {ts.front(), ts[ts.size() / 2]};
}
template <class F>
CallTimes time_calls(F&& fn, int min_calls, double min_time) {
  std::vector<double> ts;
  fn(0);
  double start = now();
  for (int i = 1; int(ts.size()) < min_calls || now() - start < min_time; ++i) {
    double t0 = now();
    fn(i);
    ts.push_back(now() - t0);
    if (ts.size() > 200000) break;
  }
  return summarize(ts);
}

struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint64_t next() {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
  }
  float normalish() {  // sum of 4 uniforms, centered: roughly normal, unit-ish variance
    uint64_t r = next();
    float a = float(r & 0xFFFF) + float((r >> 16) & 0xFFFF) + float((r >> 32) & 0xFFFF) +
              float(r >> 48);
    return (a / 65536.0f - 2.0f) * 1.7f;
  }
};

uint16_t to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

template <class T>
T* alloc(size_t n) {
  void* p = std::aligned_alloc(64, (n * sizeof(T) + 63) / 64 * 64);
  if (!p) {
    std::fprintf(stderr, "out of memory\n");
    std::exit(1);
  }
  return static_cast<T*>(p);
}

// Fill in parallel (large matrices) with a per-thread generator.
void fill_bf16(uint16_t* w, size_t n, uint64_t seed, float scale) {
#pragma omp parallel
  {
    Rng r(seed + omp_get_thread_num() * 7919);
#pragma omp for schedule(static)
    for (size_t i = 0; i < n; ++i) w[i] = to_bf16(r.normalish() * scale);
  }
}
void fill_bytes(uint8_t* p, size_t n, uint64_t seed, int lo, int hi) {
#pragma omp parallel
  {
    Rng r(seed + omp_get_thread_num() * 104729);
#pragma omp for schedule(static)
    for (size_t i = 0; i < n; ++i) p[i] = uint8_t(lo + int(r.next() % uint64_t(hi - lo + 1)));
  }
}
void fill_f32(float* p, size_t n, uint64_t seed) {
  Rng r(seed);
  for (size_t i = 0; i < n; ++i) p[i] = r.normalish();
}

// ---- machine limits -------------------------------------------------------------------------

// Sums n floats (AVX2 loads), optionally with a software prefetch 16 KiB ahead.
template <bool kPrefetch>
__attribute__((target("avx2"))) double read_sum(const float* p, size_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (size_t i = 0; i + 32 <= n; i += 32) {
    if (kPrefetch) {
      _mm_prefetch(reinterpret_cast<const char*>(p + i) + 16384, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(p + i) + 16384 + 64, _MM_HINT_T0);
    }
    a0 = _mm256_add_ps(a0, _mm256_load_ps(p + i));
    a1 = _mm256_add_ps(a1, _mm256_load_ps(p + i + 8));
    a2 = _mm256_add_ps(a2, _mm256_load_ps(p + i + 16));
    a3 = _mm256_add_ps(a3, _mm256_load_ps(p + i + 24));
  }
  __m256 s = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
  float f[8];
  _mm256_storeu_ps(f, s);
  return f[0] + f[1] + f[2] + f[3] + f[4] + f[5] + f[6] + f[7];
}

// A 1 GiB buffer read in slices by all threads: the streaming-read reference. The memory
// bandwidth of a shared (virtual) machine drifts from minute to minute, so every GEMV below is
// compared with reads of the same size timed in the same window, alternating call by call.
struct ReadRef {
  float* buf = nullptr;
  size_t n = 0;  // floats
  size_t next = 0;
  volatile double sink = 0;
  explicit ReadRef(size_t bytes) : n(bytes / 4) {
    buf = alloc<float>(n);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; ++i) buf[i] = 1.0f;
  }
  ~ReadRef() { std::free(buf); }
  // Reads `bytes` (at most the whole buffer) of a part not read recently; returns seconds.
  double read(size_t bytes, bool prefetch) {
    size_t cnt = std::min(n, bytes / 4) / 64 * 64;
    if (next + cnt > n) next = 0;
    const float* p = buf + next;
    next += cnt;
    double t0 = now(), s = 0;
#pragma omp parallel reduction(+ : s)
    {
      int nt = omp_get_num_threads(), id = omp_get_thread_num();
      size_t chunk = (cnt / nt) / 32 * 32;
      s += prefetch ? read_sum<true>(p + id * chunk, chunk) : read_sum<false>(p + id * chunk, chunk);
    }
    double t = now() - t0;
    sink = sink + s;
    return t;
  }
};

double measure_memcpy_bw(size_t bytes) {
  char* a = alloc<char>(bytes);
  char* b = alloc<char>(bytes);
  std::memset(a, 1, bytes);
  std::memset(b, 2, bytes);
  double t = best_time(
      [&] {
#pragma omp parallel
        {
          int nt = omp_get_num_threads(), id = omp_get_thread_num();
          size_t chunk = bytes / nt;
          std::memcpy(b + id * chunk, a + id * chunk, chunk);
        }
      },
      3, 0.5);
  std::free(a);
  std::free(b);
  return double(bytes) / t / 1e9;  // bytes read per second
}

template <int NACC>
__attribute__((target("avx512f,fma"))) float fma_loop_avx512(long iters) {
  __m512 acc[NACC];
  for (int i = 0; i < NACC; ++i) acc[i] = _mm512_set1_ps(float(i));
  const __m512 m = _mm512_set1_ps(0.999999f), a = _mm512_set1_ps(1e-7f);
  for (long it = 0; it < iters; ++it) {
#pragma GCC unroll 32
    for (int i = 0; i < NACC; ++i) acc[i] = _mm512_fmadd_ps(acc[i], m, a);
  }
  __m512 s = acc[0];
  for (int i = 1; i < NACC; ++i) s = _mm512_add_ps(s, acc[i]);
  float f[16];
  _mm512_storeu_ps(f, s);
  return f[0];
}

template <int NACC>
__attribute__((target("avx2,fma"))) float fma_loop_avx2(long iters) {
  __m256 acc[NACC];
  for (int i = 0; i < NACC; ++i) acc[i] = _mm256_set1_ps(float(i));
  const __m256 m = _mm256_set1_ps(0.999999f), a = _mm256_set1_ps(1e-7f);
  for (long it = 0; it < iters; ++it) {
#pragma GCC unroll 32
    for (int i = 0; i < NACC; ++i) acc[i] = _mm256_fmadd_ps(acc[i], m, a);
  }
  __m256 s = acc[0];
  for (int i = 1; i < NACC; ++i) s = _mm256_add_ps(s, acc[i]);
  float f[8];
  _mm256_storeu_ps(f, s);
  return f[0];
}

// fp32 FMA peak (GFLOP/s, 2 flops per lane per FMA) with all threads.
double measure_fma_peak(bool avx512) {
  const long iters = 2'000'000;
  volatile float sink = 0;
  double t = best_time(
      [&] {
#pragma omp parallel
        {
          float r = avx512 ? fma_loop_avx512<12>(iters) : fma_loop_avx2<12>(iters);
          if (r == 12345.0f) sink = r;
        }
      },
      3, 0.3);
  int nt = omp_get_max_threads();
  return double(nt) * iters * 12 * (avx512 ? 16 : 8) * 2 / t / 1e9;
}

// ---- kernel benchmarks ----------------------------------------------------------------------

struct Bf16Mat {
  uint16_t* w;
  uint16_t* bias;
};
struct MxMat {
  uint8_t* blocks;
  uint8_t* scales;
  uint16_t* bias;
};

// Copies so that the cycled working set is at least `min_bytes` (beats the 32 MiB L3).
int copies_for(size_t bytes, size_t min_bytes) {
  return int(std::max<size_t>(1, (min_bytes + bytes - 1) / bytes));
}

struct GemvResult {
  double gbps, gbps_median;        // GEMV: weight bytes per second, best and median call
  double read_best, read_median;   // streaming reads of as many bytes, same time window
  double us;                       // best call
};

GemvResult bench_gemv_bf16(int64_t N, int64_t K, size_t min_set, ReadRef& ref) {
  const size_t bytes = size_t(N) * K * 2;
  const int nc = copies_for(bytes, min_set);
  std::vector<Bf16Mat> m(nc);
  for (int c = 0; c < nc; ++c) {
    m[c].w = alloc<uint16_t>(size_t(N) * K);
    m[c].bias = alloc<uint16_t>(N);
    fill_bf16(m[c].w, size_t(N) * K, 11 + c, 0.05f);
    fill_bf16(m[c].bias, N, 99 + c, 0.1f);
  }
  float* x = alloc<float>(K);
  float* y = alloc<float>(N);
  fill_f32(x, K, 5);
  // Cycle through the copies: every call reads a matrix that is not in the caches.
  // Alternate: GEMV on a cold copy, then reads of as many bytes (hardware / software prefetch).
  std::vector<double> tg, tr[2];
  const double start = now();
  for (int i = 0; int(tg.size()) < 3 * nc || now() - start < 0.4; ++i) {
    const Bf16Mat& mm = m[i % nc];
    double t0 = now();
    matmul_bf16(x, 1, K, K, mm.w, N, K, mm.bias, y, N);
    tg.push_back(now() - t0);
    tr[i & 1].push_back(ref.read(bytes, i & 1));
    if (tg.size() > 100000) break;
  }
  CallTimes t = summarize(tg);
  CallTimes r0 = summarize(tr[0]), r1 = summarize(tr[1]);
  CallTimes r = {std::min(r0.best, r1.best), std::min(r0.median, r1.median)};
  for (auto& mm : m) {
    std::free(mm.w);
    std::free(mm.bias);
  }
  std::free(x);
  std::free(y);
  const double rb = double(std::min(ref.n * 4, bytes) / 256 * 256);
  return {double(bytes + 2 * N) / t.best / 1e9,   double(bytes + 2 * N) / t.median / 1e9,
          rb / r.best / 1e9, rb / r.median / 1e9, t.best * 1e6};
}

GemvResult bench_gemv_mxfp4(int64_t N, int64_t K, size_t min_set, ReadRef& ref) {
  const size_t nb = size_t(K) / 32;
  const size_t bytes = size_t(N) * nb * 17;
  const int nc = copies_for(bytes, min_set);
  std::vector<MxMat> m(nc);
  for (int c = 0; c < nc; ++c) {
    m[c].blocks = alloc<uint8_t>(size_t(N) * nb * 16);
    m[c].scales = alloc<uint8_t>(size_t(N) * nb);
    m[c].bias = alloc<uint16_t>(N);
    fill_bytes(m[c].blocks, size_t(N) * nb * 16, 21 + c, 0, 255);
    fill_bytes(m[c].scales, size_t(N) * nb, 31 + c, 118, 124);
    fill_bf16(m[c].bias, N, 41 + c, 0.1f);
  }
  float* x = alloc<float>(K);
  float* y = alloc<float>(N);
  fill_f32(x, K, 6);
  // Alternate: GEMV on a cold copy, then reads of as many bytes (hardware / software prefetch).
  std::vector<double> tg, tr[2];
  const double start = now();
  for (int i = 0; int(tg.size()) < 3 * nc || now() - start < 0.4; ++i) {
    const MxMat& mm = m[i % nc];
    double t0 = now();
    matmul_mxfp4(x, 1, K, K, mm.blocks, mm.scales, N, mm.bias, y, N);
    tg.push_back(now() - t0);
    tr[i & 1].push_back(ref.read(bytes, i & 1));
    if (tg.size() > 100000) break;
  }
  CallTimes t = summarize(tg);
  CallTimes r0 = summarize(tr[0]), r1 = summarize(tr[1]);
  CallTimes r = {std::min(r0.best, r1.best), std::min(r0.median, r1.median)};
  for (auto& mm : m) {
    std::free(mm.blocks);
    std::free(mm.scales);
    std::free(mm.bias);
  }
  std::free(x);
  std::free(y);
  const double rb = double(std::min(ref.n * 4, bytes) / 256 * 256);
  return {double(bytes + 2 * N) / t.best / 1e9,   double(bytes + 2 * N) / t.median / 1e9,
          rb / r.best / 1e9, rb / r.median / 1e9, t.best * 1e6};
}

double bench_gemm(bool mxfp4, int64_t T, int64_t N, int64_t K, double min_time, Precision prec) {
  const size_t nb = size_t(K) / 32;
  uint16_t* w = nullptr;
  uint8_t *blocks = nullptr, *scales = nullptr;
  uint16_t* bias = alloc<uint16_t>(N);
  fill_bf16(bias, N, 3, 0.1f);
  if (mxfp4) {
    blocks = alloc<uint8_t>(size_t(N) * nb * 16);
    scales = alloc<uint8_t>(size_t(N) * nb);
    fill_bytes(blocks, size_t(N) * nb * 16, 7, 0, 255);
    fill_bytes(scales, size_t(N) * nb, 8, 118, 124);
  } else {
    w = alloc<uint16_t>(size_t(N) * K);
    fill_bf16(w, size_t(N) * K, 9, 0.05f);
  }
  float* x = alloc<float>(size_t(T) * K);
  float* y = alloc<float>(size_t(T) * N);
  fill_f32(x, size_t(T) * K, 10);
  double t = best_time(
      [&] {
        if (mxfp4) matmul_mxfp4(x, T, K, K, blocks, scales, N, bias, y, N, prec);
        else matmul_bf16(x, T, K, K, w, N, K, bias, y, N, prec);
      },
      3, min_time);
  std::free(w);
  std::free(blocks);
  std::free(scales);
  std::free(bias);
  std::free(x);
  std::free(y);
  return 2.0 * T * N * K / t / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  std::string only;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--quick") quick = true;
    else if (a == "--only" && i + 1 < argc) only = argv[++i];
    else {
      std::fprintf(stderr, "usage: %s [--quick] [--only gemv|gemm]\n", argv[0]);
      return 2;
    }
  }
  const char* level = gptoss::cpu::simd_level();
  const bool avx512 = std::strcmp(level, "avx512") == 0;
  std::printf("simd path: %s, threads: %d\n", level, omp_get_max_threads());

  ReadRef ref(size_t(1) << 30);
  double r_hw = 1e30, r_sw = 1e30;
  for (int i = 0; i < 3; ++i) {
    r_hw = std::min(r_hw, ref.read(ref.n * 4, false));
    r_sw = std::min(r_sw, ref.read(ref.n * 4, true));
  }
  const double cbw = measure_memcpy_bw(size_t(512) << 20);
  std::printf("read 1 GiB (best of 3): %.1f GB/s (hardware prefetch), %.1f GB/s (+ software "
              "prefetch)\n", ref.n * 4 / r_hw / 1e9, ref.n * 4 / r_sw / 1e9);
  std::printf("memcpy 512 MiB (best): %.1f GB/s read (+ as much written)\n", cbw);
  const bool scalar = std::strcmp(level, "scalar") == 0;
  const double peak = scalar ? 0.0 : measure_fma_peak(avx512);
  if (peak > 0) std::printf("fp32 FMA peak (%s): %.0f GFLOP/s\n", avx512 ? "AVX-512" : "AVX2", peak);
  const double peak_bf16 = gptoss::cpu::measure_peak_gflops_bf16();
  if (peak_bf16 > 0) std::printf("bf16 dot-product peak (vdpbf16ps): %.0f GFLOP/s\n", peak_bf16);

  const size_t min_set = size_t(quick ? 128 : 256) << 20;
  if (only.empty() || only == "gemv") {
    std::printf("\nT=1 GEMV, weights from DRAM: GB/s of weights vs streaming reads of as many bytes "
                "timed\nin the same window (alternating calls; best call, then median call)\n");
    std::printf("  %-27s %8s %8s | %7s %7s %6s | %7s %7s %6s\n", "", "MB", "us", "GB/s", "read",
                "%", "GB/s", "read", "%");
    struct S {
      const char* name;
      bool mx;
      int64_t N, K;
    };
    std::vector<S> shapes = {{"bf16  qkv      5120x2880", false, 5120, 2880},
                             {"bf16  attn.out 2880x4096", false, 2880, 4096},
                             {"bf16  router     32x2880", false, 32, 2880},
                             {"mxfp4 mlp1     5760x2880", true, 5760, 2880},
                             {"mxfp4 mlp2     2880x2880", true, 2880, 2880}};
    if (!quick) shapes.insert(shapes.begin() + 2, S{"bf16  unembed 201088x2880", false, 201088, 2880});
    for (const S& s : shapes) {
      GemvResult r = s.mx ? bench_gemv_mxfp4(s.N, s.K, min_set, ref)
                          : bench_gemv_bf16(s.N, s.K, min_set, ref);
      double mb = s.mx ? double(s.N) * (s.K / 32) * 17 / 1e6 : double(s.N) * s.K * 2 / 1e6;
      std::printf("  %-27s %8.2f %8.1f | %7.1f %7.1f %5.0f%% | %7.1f %7.1f %5.0f%%\n", s.name, mb,
                  r.us, r.gbps, r.read_best, 100.0 * r.gbps / r.read_best, r.gbps_median,
                  r.read_median, 100.0 * r.gbps_median / r.read_median);
    }
  }
  if (only.empty() || only == "gemm") {
    std::printf("\nGEMM (best of >= 3 calls)                 %10s %8s", "GFLOP/s", "%peak");
    if (peak_bf16 > 0) std::printf(" | %14s %8s %8s", "bf16 GFLOP/s", "%peak", "speedup");
    std::printf("\n");
    for (int64_t T : {int64_t(64), int64_t(512)})
      for (bool mx : {false, true})
        for (int64_t N : {int64_t(2880), int64_t(5760)}) {
          const double mt = quick ? 0.1 : 0.3;
          double g = bench_gemm(mx, T, N, 2880, mt, Precision::Fp32);
          char name[64];
          std::snprintf(name, sizeof name, "%s T=%-4lld %lldx2880", mx ? "mxfp4" : "bf16 ",
                        (long long)T, (long long)N);
          std::printf("  %-40s %10.1f %7.1f%%", name, g, peak > 0 ? 100.0 * g / peak : 0.0);
          if (peak_bf16 > 0) {
            double b = bench_gemm(mx, T, N, 2880, mt, Precision::Bf16);
            std::printf(" | %14.1f %7.1f%% %7.2fx", b, 100.0 * b / peak_bf16, b / g);
          }
          std::printf("\n");
        }
  }
  return 0;
}
