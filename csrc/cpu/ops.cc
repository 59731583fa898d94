#include "cpu/ops.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common.h"

namespace gptoss::cpu {

#define GPTOSS_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

void embedding(const int32_t* tokens, int64_t T, const uint16_t* E, int64_t H, float* x) {
#pragma omp parallel for if (T > 16)
  for (int64_t t = 0; t < T; ++t) {
    const uint16_t* row = E + int64_t(tokens[t]) * H;
    float* dst = x + t * H;
    for (int64_t i = 0; i < H; ++i) dst[i] = bf16_to_f32(row[i]);
  }
}

GPTOSS_CLONES
static void rmsnorm_row(const float* x, int64_t H, const float* w, float eps, float* y) {
  float ss = 0.f;
#pragma omp simd reduction(+ : ss)
  for (int64_t i = 0; i < H; ++i) ss += x[i] * x[i];
  const float r = 1.0f / std::sqrt(ss / float(H) + eps);
  for (int64_t i = 0; i < H; ++i) y[i] = w[i] * (x[i] * r);
}

void rmsnorm(const float* x, int64_t T, int64_t H, const float* w, float eps, float* y) {
#pragma omp parallel for if (T > 8)
  for (int64_t t = 0; t < T; ++t) rmsnorm_row(x + t * H, H, w, eps, y + t * H);
}

void rope_table(const int64_t* pos, int64_t T, const float* inv_freq, int64_t half, float conc, float* cs) {
  for (int64_t t = 0; t < T; ++t) {
    const float p = float(pos[t]);
    for (int64_t i = 0; i < half; ++i) {
      const float a = p * inv_freq[i];  // fp32 product, as the reference
      cs[t * 2 * half + i] = float(std::cos(double(a))) * conc;
      cs[t * 2 * half + half + i] = float(std::sin(double(a))) * conc;
    }
  }
}

void rope_apply(float* x, int64_t T, int64_t ld, int64_t n_heads, int64_t half, const float* cs) {
#pragma omp parallel for if (T > 8)
  for (int64_t t = 0; t < T; ++t) {
    const float* c = cs + t * 2 * half;
    const float* s = c + half;
    for (int64_t h = 0; h < n_heads; ++h) {
      float* x1 = x + t * ld + h * 2 * half;
      float* x2 = x1 + half;
      for (int64_t i = 0; i < half; ++i) {
        const float a = x1[i], b = x2[i];
        x1[i] = a * c[i] - b * s[i];
        x2[i] = b * c[i] + a * s[i];
      }
    }
  }
}

void kv_store(const float* k, int64_t ldk, const float* v, int64_t ldv, int64_t T, const int64_t* pos,
              const KVLayerView* views, int64_t n_kv, int64_t head_dim) {
  for (int64_t t = 0; t < T; ++t) {
    const KVLayerView& vw = views[t];
    const int64_t B = vw.block_size;
    float* base = vw.block_ptrs[vw.table[pos[t] / B]] + vw.layer_offset;
    const int64_t off = pos[t] % B;
    for (int64_t g = 0; g < n_kv; ++g) {
      std::memcpy(base + (g * B + off) * head_dim, k + t * ldk + g * head_dim, head_dim * sizeof(float));
      std::memcpy(base + (n_kv * B + g * B + off) * head_dim, v + t * ldv + g * head_dim,
                  head_dim * sizeof(float));
    }
  }
}

// One (query row, KV head) pair: the G query heads that share KV head g.
GPTOSS_CLONES
static void attend_group(const float* q, const KVLayerView& vw, int64_t g, int64_t G, int64_t n_kv,
                         int64_t D, float scale, const float* sinks, int64_t lo, int64_t hi,
                         float* scores, float* out) {
  const int64_t B = vw.block_size;
  const int64_t n = hi - lo + 1;
  // Scores, block by block.
  for (int64_t j = lo; j <= hi;) {
    const int64_t bi = j / B;
    const int64_t end = std::min(hi, bi * B + B - 1);
    const float* kb = vw.block_ptrs[vw.table[bi]] + vw.layer_offset + g * B * D;
    for (; j <= end; ++j) {
      const float* kj = kb + (j % B) * D;
      for (int64_t h = 0; h < G; ++h) {
        const float* qh = q + h * D;
        float s = 0.f;
#pragma omp simd reduction(+ : s)  // lets the compiler vectorise the reduction
        for (int64_t d = 0; d < D; ++d) s += qh[d] * kj[d];
        scores[h * n + (j - lo)] = s * scale;
      }
    }
  }
  // Softmax with the sink as one more logit, then drop the sink's share.
  for (int64_t h = 0; h < G; ++h) {
    float* sh = scores + h * n;
    float m = sinks[h];
    for (int64_t i = 0; i < n; ++i) m = std::max(m, sh[i]);
    float sum = std::exp(sinks[h] - m);
    for (int64_t i = 0; i < n; ++i) {
      sh[i] = std::exp(sh[i] - m);
      sum += sh[i];
    }
    const float inv = 1.0f / sum;
    for (int64_t i = 0; i < n; ++i) sh[i] *= inv;
    float* oh = out + h * D;
    for (int64_t d = 0; d < D; ++d) oh[d] = 0.f;
  }
  for (int64_t j = lo; j <= hi;) {
    const int64_t bi = j / B;
    const int64_t end = std::min(hi, bi * B + B - 1);
    const float* vb = vw.block_ptrs[vw.table[bi]] + vw.layer_offset + (n_kv * B + g * B) * D;
    for (; j <= end; ++j) {
      const float* vj = vb + (j % B) * D;
      for (int64_t h = 0; h < G; ++h) {
        const float p = scores[h * n + (j - lo)];
        float* oh = out + h * D;
        for (int64_t d = 0; d < D; ++d) oh[d] += p * vj[d];
      }
    }
  }
}

void attention(const float* q, int64_t ldq, int64_t T, const int64_t* pos, const KVLayerView* views,
               int64_t n_heads, int64_t n_kv, int64_t head_dim, float scale, const float* sinks,
               int64_t window, float* out) {
  const int64_t G = n_heads / n_kv;
  const int64_t tasks = T * n_kv;
  int64_t max_n = 1;
  for (int64_t t = 0; t < T; ++t) max_n = std::max(max_n, window > 0 ? std::min(window, pos[t] + 1) : pos[t] + 1);
#pragma omp parallel if (tasks > 1)
  {
    std::vector<float> scores(size_t(G * max_n));
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t t = task / n_kv, g = task % n_kv;
      const int64_t hi = pos[t];
      const int64_t lo = window > 0 ? std::max<int64_t>(0, hi - window + 1) : 0;
      attend_group(q + t * ldq + g * G * head_dim, views[t], g, G, n_kv, head_dim, scale, sinks + g * G,
                   lo, hi, scores.data(), out + t * n_heads * head_dim + g * G * head_dim);
    }
  }
}

void router_topk_softmax(const float* logits, int64_t T, int64_t E, int64_t k, int32_t* idx, float* w) {
  for (int64_t t = 0; t < T; ++t) {
    const float* l = logits + t * E;
    int32_t* it = idx + t * k;
    float* wt = w + t * k;
    // Selection by repeated scans: E and k are small (E <= 128, k = 4).
    for (int64_t s = 0; s < k; ++s) {
      int32_t best = -1;
      for (int64_t e = 0; e < E; ++e) {
        bool taken = false;
        for (int64_t r = 0; r < s; ++r) taken |= (it[r] == e);
        if (taken) continue;
        if (best < 0 || l[e] > l[best]) best = int32_t(e);  // strict: ties keep the lower id
      }
      it[s] = best;
    }
    const float m = l[it[0]];
    float sum = 0.f;
    for (int64_t s = 0; s < k; ++s) {
      wt[s] = std::exp(l[it[s]] - m);
      sum += wt[s];
    }
    for (int64_t s = 0; s < k; ++s) wt[s] /= sum;
  }
}

GPTOSS_CLONES
void swiglu(const float* h, int64_t T, int64_t I, float alpha, float limit, float* out) {
  for (int64_t t = 0; t < T; ++t) {
    const float* ht = h + t * 2 * I;
    float* ot = out + t * I;
    for (int64_t i = 0; i < I; ++i) {
      const float g = std::min(ht[2 * i], limit);
      const float l = std::min(std::max(ht[2 * i + 1], -limit), limit);
      ot[i] = g / (1.0f + std::exp(-alpha * g)) * (l + 1.0f);
    }
  }
}

}  // namespace gptoss::cpu
