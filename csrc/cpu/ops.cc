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
#pragma omp parallel for if (T > 8)
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
