// The small kernels of a layer (csrc/cpu/ops.h) at the gpt-oss shapes: RMSNorm, YaRN RoPE
// (table and rotation of q and k), router top-4 + softmax over 32 / 128 experts, SwiGLU.
// Each is checked against a plain loop here before it is timed; bytes/s against the read
// bandwidth (they are memory-bound, and at T = 1 mostly call overhead).
#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "bench_util.h"
#include "checkpoint_dir.h"
#include "cpu/ops.h"

namespace gptoss::bench {
namespace {

void BM_rmsnorm(benchmark::State& s, int64_t T) {
  const int64_t H = kHidden;
  std::vector<float> x(size_t(T * H)), w(static_cast<size_t>(H)), y(size_t(T * H)), ref(size_t(T * H));
  fill_normal(x.data(), x.size(), 1);
  fill_normal(w.data(), w.size(), 2);
  cpu::rmsnorm(x.data(), T, H, w.data(), 1e-5f, y.data());
  for (int64_t t = 0; t < T; ++t) {
    double ss = 0;
    for (int64_t i = 0; i < H; ++i) ss += double(x[size_t(t * H + i)]) * x[size_t(t * H + i)];
    const double r = 1.0 / std::sqrt(ss / double(H) + 1e-5);
    for (int64_t i = 0; i < H; ++i) ref[size_t(t * H + i)] = float(w[size_t(i)] * x[size_t(t * H + i)] * r);
  }
  if (!check_close(s, "rmsnorm", y.data(), ref.data(), y.size())) return;
  for (auto _ : s) {
    cpu::rmsnorm(x.data(), T, H, w.data(), 1e-5f, y.data());
    benchmark::ClobberMemory();
  }
  count_bytes(s, 4.0 * (2 * T * H + H));
}

// Table for T positions (a decode step at position 4000, or a prefill from 0), then the rotation
// of the q and k rows.
void BM_rope(benchmark::State& s, int64_t T) {
  const int64_t half = kHeadDim / 2;
  float conc;  // gpt-oss's YaRN: theta 150000, factor 32, beta 32 / 1, original context 4096
  const std::vector<float> inv = yarn_inv_freq(kHeadDim, 150000.0f, 32.0f, 32.0f, 1.0f, 4096, false, &conc);
  std::vector<int64_t> pos(static_cast<size_t>(T));
  std::iota(pos.begin(), pos.end(), T == 1 ? 4000 : 0);
  std::vector<float> q0(size_t(T * kQDim)), k0(size_t(T * kKvDim)), cs(size_t(T * kHeadDim));
  fill_normal(q0.data(), q0.size(), 3);
  fill_normal(k0.data(), k0.size(), 4);
  std::vector<float> q = q0, k = k0;
  cpu::rope_table(pos.data(), T, inv.data(), half, conc, cs.data());
  cpu::rope_apply(q.data(), T, kQDim, kHeads, half, cs.data());
  std::vector<float> ref(q.size());
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < kHeads; ++h)
      for (int64_t i = 0; i < half; ++i) {
        const double a = double(float(pos[size_t(t)]) * inv[size_t(i)]);
        const double c = std::cos(a) * conc, sn = std::sin(a) * conc;
        const size_t o = size_t(t * kQDim + h * kHeadDim + i);
        ref[o] = float(q0[o] * c - q0[o + half] * sn);
        ref[o + half] = float(q0[o + half] * c + q0[o] * sn);
      }
  if (!check_close(s, "q", q.data(), ref.data(), q.size())) return;
  for (auto _ : s) {
    cpu::rope_table(pos.data(), T, inv.data(), half, conc, cs.data());
    cpu::rope_apply(q.data(), T, kQDim, kHeads, half, cs.data());
    cpu::rope_apply(k.data(), T, kKvDim, kKvHeads, half, cs.data());
    benchmark::ClobberMemory();
  }
  count_bytes(s, 4.0 * 2 * T * (kQDim + kKvDim));
}

void BM_router(benchmark::State& s, int64_t E, int64_t T) {
  std::vector<float> logits(size_t(T * E)), w(size_t(T * kTopK));
  std::vector<int32_t> idx(size_t(T * kTopK));
  fill_normal(logits.data(), logits.size(), 5);
  cpu::router_topk_softmax(logits.data(), T, E, kTopK, idx.data(), w.data());
  std::vector<float> ref(w.size());
  for (int64_t t = 0; t < T; ++t) {
    const float* l = logits.data() + t * E;
    std::vector<int32_t> ord(static_cast<size_t>(E));
    std::iota(ord.begin(), ord.end(), 0);
    std::stable_sort(ord.begin(), ord.end(), [&](int32_t a, int32_t b) { return l[a] > l[b]; });
    double sum = 0;
    for (int64_t k = 0; k < kTopK; ++k) sum += std::exp(double(l[ord[size_t(k)]] - l[ord[0]]));
    for (int64_t k = 0; k < kTopK; ++k) {
      if (idx[size_t(t * kTopK + k)] != ord[size_t(k)]) {
        s.SkipWithError(("validation failed: router expert at row " + std::to_string(t)).c_str());
        return;
      }
      ref[size_t(t * kTopK + k)] = float(std::exp(double(l[ord[size_t(k)]] - l[ord[0]])) / sum);
    }
  }
  if (!check_close(s, "weights", w.data(), ref.data(), w.size())) return;
  for (auto _ : s) {
    cpu::router_topk_softmax(logits.data(), T, E, kTopK, idx.data(), w.data());
    benchmark::ClobberMemory();
  }
  count_bytes(s, 4.0 * T * (E + 2 * kTopK));
}

void BM_swiglu(benchmark::State& s, int64_t T) {
  const int64_t I = kInter;
  const float alpha = 1.702f, limit = 7.0f;
  std::vector<float> h(size_t(T * 2 * I)), out(size_t(T * I)), ref(out.size());
  fill_normal(h.data(), h.size(), 6, 4.0f);  // wide enough to hit the clamps
  cpu::swiglu(h.data(), T, I, alpha, limit, out.data());
  for (size_t i = 0; i < ref.size(); ++i) {
    const double g = std::min(double(h[2 * i]), double(limit));
    const double l = std::clamp(double(h[2 * i + 1]), -double(limit), double(limit));
    ref[i] = float(g / (1 + std::exp(-alpha * g)) * (l + 1));
  }
  if (!check_close(s, "swiglu", out.data(), ref.data(), out.size())) return;
  for (auto _ : s) {
    cpu::swiglu(h.data(), T, I, alpha, limit, out.data());
    benchmark::ClobberMemory();
  }
  count_bytes(s, 4.0 * 3 * T * I);
}

}  // namespace

void register_ops(const Options& opt) {
  const std::vector<int64_t> Ts = opt.smoke ? std::vector<int64_t>{1} : std::vector<int64_t>{1, 512};
  for (int64_t T : Ts) {
    const std::string t = "/T:" + std::to_string(T);
    add(opt, "rmsnorm" + t, BM_rmsnorm, T);
    add(opt, "rope" + t, BM_rope, T);
    add(opt, "swiglu" + t, BM_swiglu, T);
    for (const ModelShape& m : kModels)
      add(opt, std::string("router_topk/") + m.name + t, BM_router, m.experts, T);
  }
}

}  // namespace gptoss::bench
