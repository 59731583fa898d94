// Attention with sinks and sliding window over the paged KV cache (see attention.h).
//
// Work is split over (query row, KV head) pairs: the G = n_heads / n_kv query heads that share
// a KV head are handled together, so each key and value row is loaded once for all of them.
// Scores are computed block by block into a per-thread buffer, then a softmax that includes the
// sink, then the weighted sum of V. The AVX-512 path keeps G accumulators in registers for 16
// keys (scores) or 16 dims (values) at a time, and has a vectorised exp; the portable path is
// the same algorithm in plain loops.
#include "cpu/attention.h"

#include <immintrin.h>

// GCC 12 warns about its own _mm512_reduce_* intrinsics (an intentionally undefined operand).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "cpu/matmul.h"

namespace gptoss::cpu {

void kv_store(const float* k, int64_t ldk, const float* v, int64_t ldv, int64_t T, const int64_t* pos,
              const KVLayerView* views, int64_t n_kv, int64_t D) {
  for (int64_t t = 0; t < T; ++t) {
    const KVLayerView& vw = views[t];
    const int64_t B = vw.block_size;
    float* base = vw.block_ptrs[vw.table[pos[t] / B]] + vw.layer_offset;
    const int64_t off = pos[t] % B;
    for (int64_t g = 0; g < n_kv; ++g) {
      const float* kr = k + t * ldk + g * D;
      float* kt = base + g * D * B + off;  // K: [n_kv][D][B]
      for (int64_t d = 0; d < D; ++d) kt[d * B] = kr[d];
      std::memcpy(base + n_kv * D * B + (g * B + off) * D, v + t * ldv + g * D, size_t(D) * sizeof(float));
    }
  }
}

namespace {

struct Task {
  const float* q;      // G query heads, each D floats
  const KVLayerView* vw;
  int64_t g, G, n_kv, D;
  float scale;
  const float* sinks;  // G sink logits
  int64_t lo, hi;      // key positions, inclusive
  float* scores;       // G * (hi - lo + 1)
  float* out;          // G * D
};

const float* k_block(const Task& a, int64_t bi) {
  return a.vw->block_ptrs[a.vw->table[bi]] + a.vw->layer_offset + a.g * a.D * a.vw->block_size;
}
const float* v_block(const Task& a, int64_t bi) {
  const int64_t B = a.vw->block_size;
  return a.vw->block_ptrs[a.vw->table[bi]] + a.vw->layer_offset + (a.n_kv * a.D * B) + a.g * B * a.D;
}

// ---- portable path -----------------------------------------------------------------------------

void attend_generic(const Task& a) {
  const int64_t B = a.vw->block_size, D = a.D, G = a.G, n = a.hi - a.lo + 1;
  for (int64_t j = a.lo; j <= a.hi;) {
    const int64_t bi = j / B, p0 = j % B, np = std::min(a.hi, bi * B + B - 1) - j + 1;
    const float* kb = k_block(a, bi);
    for (int64_t h = 0; h < G; ++h) {
      float* sh = a.scores + h * n + (j - a.lo);
      for (int64_t i = 0; i < np; ++i) sh[i] = 0.f;
      for (int64_t d = 0; d < D; ++d) {
        const float qd = a.q[h * D + d];
        const float* kd = kb + d * B + p0;
#pragma omp simd
        for (int64_t i = 0; i < np; ++i) sh[i] += qd * kd[i];
      }
      for (int64_t i = 0; i < np; ++i) sh[i] *= a.scale;
    }
    j += np;
  }
  for (int64_t h = 0; h < G; ++h) {
    float* sh = a.scores + h * n;
    float m = a.sinks[h];
    for (int64_t i = 0; i < n; ++i) m = std::max(m, sh[i]);
    float sum = std::exp(a.sinks[h] - m);
    for (int64_t i = 0; i < n; ++i) {
      sh[i] = std::exp(sh[i] - m);
      sum += sh[i];
    }
    const float inv = 1.0f / sum;
    for (int64_t i = 0; i < n; ++i) sh[i] *= inv;
    std::fill(a.out + h * D, a.out + (h + 1) * D, 0.f);
  }
  for (int64_t j = a.lo; j <= a.hi;) {
    const int64_t bi = j / B, p0 = j % B, np = std::min(a.hi, bi * B + B - 1) - j + 1;
    const float* vb = v_block(a, bi);
    for (int64_t i = 0; i < np; ++i) {
      const float* vj = vb + (p0 + i) * D;
      for (int64_t h = 0; h < G; ++h) {
        const float p = a.scores[h * n + (j - a.lo) + i];
        float* oh = a.out + h * D;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) oh[d] += p * vj[d];
      }
    }
    j += np;
  }
}

// ---- AVX-512 path (head_dim and block_size multiples of 16) -------------------------------------

// exp(x) for x <= 0 (softmax arguments): 2^n * e^r with |r| <= ln2/2, degree-7 Taylor for e^r
// (truncation error < 6e-9 relative), scaled with vscalefps. Below -87 the result flushes to ~0.
__attribute__((target("avx512f"))) inline __m512 exp_neg512(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);  // ln2 split hi/lo
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
  __m512 p = _mm512_set1_ps(1.0f / 5040);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

template <int G>
__attribute__((target("avx512f"))) void attend_avx512(const Task& a) {
  const int64_t B = a.vw->block_size, D = a.D, n = a.hi - a.lo + 1;
  alignas(64) float tmp[G * 16];
  // Scores: 16 key positions at a time, all G heads.
  for (int64_t j = a.lo; j <= a.hi;) {
    const int64_t bi = j / B, c0 = (j % B) / 16 * 16;  // 16-aligned lane group holding j
    const int64_t first = bi * B + c0, last = std::min(a.hi, first + 15);
    const float* kb = k_block(a, bi) + c0;
    __m512 acc[G];
    for (int h = 0; h < G; ++h) acc[h] = _mm512_setzero_ps();
    for (int64_t d = 0; d < D; ++d) {
      const __m512 kv = _mm512_loadu_ps(kb + d * B);  // lanes past `last` are unused
      for (int h = 0; h < G; ++h) acc[h] = _mm512_fmadd_ps(_mm512_set1_ps(a.q[h * D + d]), kv, acc[h]);
    }
    const __m512 sc = _mm512_set1_ps(a.scale);
    for (int h = 0; h < G; ++h) _mm512_store_ps(tmp + h * 16, _mm512_mul_ps(acc[h], sc));
    for (int h = 0; h < G; ++h)
      std::memcpy(a.scores + h * n + (j - a.lo), tmp + h * 16 + (j - first), size_t(last - j + 1) * sizeof(float));
    j = last + 1;
  }
  // Softmax with the sink.
  for (int h = 0; h < G; ++h) {
    float* sh = a.scores + h * n;
    __m512 mv = _mm512_set1_ps(a.sinks[h]);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) mv = _mm512_max_ps(mv, _mm512_loadu_ps(sh + i));
    float m = _mm512_reduce_max_ps(mv);
    for (; i < n; ++i) m = std::max(m, sh[i]);
    const __m512 mm = _mm512_set1_ps(m);
    __m512 sv = _mm512_setzero_ps();
    for (i = 0; i + 16 <= n; i += 16) {
      const __m512 e = exp_neg512(_mm512_sub_ps(_mm512_loadu_ps(sh + i), mm));
      _mm512_storeu_ps(sh + i, e);
      sv = _mm512_add_ps(sv, e);
    }
    if (i < n) {
      const __mmask16 k = __mmask16((1u << (n - i)) - 1);
      const __m512 e = exp_neg512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, sh + i), mm));
      _mm512_mask_storeu_ps(sh + i, k, e);
      sv = _mm512_add_ps(sv, _mm512_maskz_mov_ps(k, e));
    }
    const float sink = _mm512_cvtss_f32(exp_neg512(_mm512_set1_ps(a.sinks[h] - m)));
    const __m512 inv = _mm512_set1_ps(1.0f / (_mm512_reduce_add_ps(sv) + sink));
    for (i = 0; i + 16 <= n; i += 16) _mm512_storeu_ps(sh + i, _mm512_mul_ps(_mm512_loadu_ps(sh + i), inv));
    if (i < n) {
      const __mmask16 k = __mmask16((1u << (n - i)) - 1);
      _mm512_mask_storeu_ps(sh + i, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, sh + i), inv));
    }
  }
  // Output: 16 dims at a time, all G heads, over every key.
  for (int64_t d0 = 0; d0 < D; d0 += 16) {
    __m512 acc[G];
    for (int h = 0; h < G; ++h) acc[h] = _mm512_setzero_ps();
    for (int64_t j = a.lo; j <= a.hi;) {
      const int64_t bi = j / B, p0 = j % B, np = std::min(a.hi, bi * B + B - 1) - j + 1;
      const float* vb = v_block(a, bi) + p0 * D + d0;
      const float* pj = a.scores + (j - a.lo);
      for (int64_t i = 0; i < np; ++i) {
        const __m512 vv = _mm512_loadu_ps(vb + i * D);
        for (int h = 0; h < G; ++h) acc[h] = _mm512_fmadd_ps(_mm512_set1_ps(pj[h * n + i]), vv, acc[h]);
      }
      j += np;
    }
    for (int h = 0; h < G; ++h) _mm512_storeu_ps(a.out + h * D + d0, acc[h]);
  }
}

using AttendFn = void (*)(const Task&);

AttendFn pick(int64_t G, int64_t D, int64_t B) {
  if (std::string(simd_level()) != "avx512" || D % 16 != 0 || B % 16 != 0) return attend_generic;
  switch (G) {
    case 1: return attend_avx512<1>;
    case 2: return attend_avx512<2>;
    case 3: return attend_avx512<3>;
    case 4: return attend_avx512<4>;
    case 6: return attend_avx512<6>;
    case 8: return attend_avx512<8>;
    case 16: return attend_avx512<16>;
    default: return attend_generic;
  }
}

}  // namespace

void attention(const float* q, int64_t ldq, int64_t T, const int64_t* pos, const KVLayerView* views,
               int64_t n_heads, int64_t n_kv, int64_t D, float scale, const float* sinks, int64_t window,
               float* out) {
  if (T <= 0) return;
  const int64_t G = n_heads / n_kv;
  const int64_t tasks = T * n_kv;
  int64_t max_n = 1;
  for (int64_t t = 0; t < T; ++t) max_n = std::max(max_n, window > 0 ? std::min(window, pos[t] + 1) : pos[t] + 1);
  const AttendFn fn = pick(G, D, views[0].block_size);
#pragma omp parallel if (tasks > 1)
  {
    std::vector<float> scores(size_t(G * max_n));
    // KV-head-major order: consecutive tasks read the same head's keys and values (a long
    // prompt's K and V of one head fit in L2; all heads' do not).
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t t = task % T, g = task / T;
      const int64_t hi = pos[t];
      const int64_t lo = window > 0 ? std::max<int64_t>(0, hi - window + 1) : 0;
      Task a{q + t * ldq + g * G * D, &views[t], g, G, n_kv, D, scale, sinks + g * G, lo, hi,
             scores.data(), out + t * n_heads * D + g * G * D};
      fn(a);
    }
  }
}

}  // namespace gptoss::cpu
