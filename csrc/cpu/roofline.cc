#include "cpu/roofline.h"

#include <immintrin.h>

// GCC 12 warns about its own _mm512_reduce_* intrinsics (an intentionally undefined operand).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cpu/matmul.h"

namespace gptoss::cpu {

namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

__attribute__((target("avx2")))
float sum_avx2(const float* p, int64_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    a0 = _mm256_add_ps(a0, _mm256_load_ps(p + i));
    a1 = _mm256_add_ps(a1, _mm256_load_ps(p + i + 8));
    a2 = _mm256_add_ps(a2, _mm256_load_ps(p + i + 16));
    a3 = _mm256_add_ps(a3, _mm256_load_ps(p + i + 24));
  }
  __m256 s = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
  float t[8];
  _mm256_storeu_ps(t, s);
  float r = t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
  for (; i < n; ++i) r += p[i];
  return r;
}

// The same read with AVX-512 loads, several streams and software prefetch 2 KiB ahead: on some
// machines (VMs especially) one hardware-prefetched stream per core does not reach the memory
// system's peak, and the GEMV kernels read that way, so the roofline is measured that way too.
__attribute__((target("avx512f")))
float sum_avx512_prefetch(const float* p, int64_t n) {
  // Four streams a quarter of the range apart, as the GEMV kernels read four rows at once:
  // more requests in flight than one sequential stream.
  const int64_t q = n / 4 / 16 * 16;
  const float* s[4] = {p, p + q, p + 2 * q, p + 3 * q};
  __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
  for (int64_t i = 0; i + 16 <= q; i += 16)
    for (int k = 0; k < 4; ++k) {
      if ((i & 15) == 0) _mm_prefetch(reinterpret_cast<const char*>(s[k] + i + 512), _MM_HINT_T0);
      a[k] = _mm512_add_ps(a[k], _mm512_load_ps(s[k] + i));
    }
  float r = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3])));
  for (int64_t i = 4 * q; i < n; ++i) r += p[i];
  return r;
}

float sum_scalar(const float* p, int64_t n) {
  float r = 0.f;
  for (int64_t i = 0; i < n; ++i) r += p[i];
  return r;
}


__attribute__((target("avx512f")))
double fma_avx512(int64_t iters) {
  __m512 a[12];
  const __m512 b = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
  for (int k = 0; k < 12; ++k) a[k] = _mm512_set1_ps(float(k));
  for (int64_t i = 0; i < iters; ++i)
    for (int k = 0; k < 12; ++k) a[k] = _mm512_fmadd_ps(a[k], b, c);
  float s = 0.f, t[16];
  for (int k = 0; k < 12; ++k) { _mm512_storeu_ps(t, a[k]); s += t[0]; }
  return double(s) * 0 + double(iters) * 12 * 16 * 2;
}

// vdpbf16ps: 16 lanes x 2 multiply-adds each.
__attribute__((target("avx512f,avx512bf16")))
double dpbf16_avx512(int64_t iters) {
  __m512 a[12];
  const __m512bh b = (__m512bh)_mm512_set1_epi32(0x3f803f80), c = (__m512bh)_mm512_set1_epi32(0x33d633d6);
  for (int k = 0; k < 12; ++k) a[k] = _mm512_set1_ps(float(k));
  for (int64_t i = 0; i < iters; ++i)
    for (int k = 0; k < 12; ++k) a[k] = _mm512_dpbf16_ps(a[k], b, c);
  float s = 0.f, t[16];
  for (int k = 0; k < 12; ++k) { _mm512_storeu_ps(t, a[k]); s += t[0]; }
  return double(s) * 0 + double(iters) * 12 * 16 * 4;
}

__attribute__((target("avx2,fma")))
double fma_avx2(int64_t iters) {
  __m256 a[12];
  const __m256 b = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
  for (int k = 0; k < 12; ++k) a[k] = _mm256_set1_ps(float(k));
  for (int64_t i = 0; i < iters; ++i)
    for (int k = 0; k < 12; ++k) a[k] = _mm256_fmadd_ps(a[k], b, c);
  float s = 0.f, t[8];
  for (int k = 0; k < 12; ++k) { _mm256_storeu_ps(t, a[k]); s += t[0]; }
  return double(s) * 0 + double(iters) * 12 * 8 * 2;
}

}  // namespace

double measure_read_bandwidth(int64_t bytes, int reps) {
  const int64_t n = bytes / 4 / 64 * 64;
  float* buf = static_cast<float*>(std::aligned_alloc(64, size_t(n) * 4));
  const bool avx2 = __builtin_cpu_supports("avx2");
  const bool avx512 = __builtin_cpu_supports("avx512f");
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) buf[i] = 1.0f;  // first touch by the reading threads
  double best = 0;
  volatile float sink = 0;
  for (int r = 0; r < 2 * reps; ++r) {
    const bool pf = avx512 && (r % 2 == 1);  // alternate plain and prefetching reads
    double t0 = now();
    float total = 0;
#pragma omp parallel reduction(+ : total)
    {
      int nt = omp_get_num_threads(), id = omp_get_thread_num();
      int64_t per = (n / nt) / 64 * 64;
      int64_t b = id * per, e = id == nt - 1 ? n : b + per;
      total += pf ? sum_avx512_prefetch(buf + b, e - b) : avx2 ? sum_avx2(buf + b, e - b) : sum_scalar(buf + b, e - b);
    }
    double dt = now() - t0;
    sink = sink + total;
    best = std::max(best, double(n) * 4 / dt / 1e9);
  }
  std::free(buf);
  return best;
}

double measure_copy_bandwidth(int64_t bytes, int reps) {
  const int64_t n = bytes / 2 / 64 * 64;
  char* a = static_cast<char*>(std::aligned_alloc(64, size_t(n)));
  char* b = static_cast<char*>(std::aligned_alloc(64, size_t(n)));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; i += 4096) { a[i] = 1; b[i] = 2; }
  double best = 0;
  for (int r = 0; r < reps; ++r) {
    double t0 = now();
#pragma omp parallel
    {
      int nt = omp_get_num_threads(), id = omp_get_thread_num();
      int64_t per = (n / nt) / 64 * 64;
      int64_t s = id * per, e = id == nt - 1 ? n : s + per;
      std::memcpy(b + s, a + s, size_t(e - s));
    }
    double dt = now() - t0;
    best = std::max(best, 2.0 * double(n) / dt / 1e9);
  }
  std::free(a);
  std::free(b);
  return best;
}

double measure_peak_gflops() {
  const std::string level = simd_level();
  const int64_t iters = 20'000'000;
  double best = 0;
  for (int r = 0; r < 3; ++r) {
    double flops = 0, t0 = now();
#pragma omp parallel reduction(+ : flops)
    {
      if (level == "avx512") flops += fma_avx512(iters);
      else if (level == "avx2") flops += fma_avx2(iters);
      else {
        float a = 1.f;
        for (int64_t i = 0; i < iters; ++i) a = a * 0.999999f + 1e-7f;
        flops += double(iters) * 2 + a * 0;
      }
    }
    best = std::max(best, flops / (now() - t0) / 1e9);
  }
  return best;
}

double measure_peak_gflops_bf16() {
  if (!bf16_dot_available()) return 0.0;
  const int64_t iters = 20'000'000;
  double best = 0;
  for (int r = 0; r < 3; ++r) {
    double flops = 0, t0 = now();
#pragma omp parallel reduction(+ : flops)
    flops += dpbf16_avx512(iters);
    best = std::max(best, flops / (now() - t0) / 1e9);
  }
  return best;
}

}  // namespace gptoss::cpu
