// Attention over the paged KV cache (csrc/cpu/attention.h) at the gpt-oss shapes: 64 query
// heads, 8 KV heads of 64, sinks; full layers and 128-token window layers.
//   decode:  one query at the end of a 1k / 8k / 32k context (bytes/s of K and V read, against
//            the read bandwidth; enough layers' caches are cycled to come from DRAM);
//   prefill: 512 / 2k queries from position 0, causal (FLOP/s against the FMA peak).
// The cache is filled through kv_store and its blocks are handed out in a shuffled order, as a
// long-running pool does. Outputs are checked against a plain loop over the unpaged K and V.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "bench_util.h"
#include "cpu/attention.h"

namespace gptoss::bench {
namespace {

constexpr int64_t kBlock = 16;
constexpr float kScale = 0.125f;  // 1 / sqrt(head_dim)

// One layer's cache of `ctx` positions, plus the same K and V unpaged for the reference.
struct LayerCache {
  std::vector<Buffer<float>> blocks;
  std::vector<float*> ptrs;
  std::vector<int32_t> table;
  std::vector<float> k, v;  // [ctx, n_kv * D]
  LayerCache(int64_t ctx, uint64_t seed, bool keep_plain) {
    const int64_t nb = (ctx + kBlock - 1) / kBlock;
    for (int64_t b = 0; b < nb; ++b) {
      blocks.emplace_back(size_t(2 * kKvDim * kBlock));
      ptrs.push_back(blocks.back().data());
    }
    table.resize(static_cast<size_t>(nb));
    std::iota(table.begin(), table.end(), 0);
    Rng r(seed);
    for (int64_t i = nb - 1; i > 0; --i) std::swap(table[size_t(i)], table[size_t(r.next() % uint64_t(i + 1))]);
    std::vector<float> kk(size_t(ctx * kKvDim)), vv(kk.size());
    fill_normal(kk.data(), kk.size(), seed + 1);
    fill_normal(vv.data(), vv.size(), seed + 2);
    std::vector<int64_t> pos(static_cast<size_t>(ctx));
    std::iota(pos.begin(), pos.end(), 0);
    std::vector<cpu::KVLayerView> views(size_t(ctx), view());
    cpu::kv_store(kk.data(), kKvDim, vv.data(), kKvDim, ctx, pos.data(), views.data(), kKvHeads, kHeadDim);
    if (keep_plain) {
      k = std::move(kk);
      v = std::move(vv);
    }
  }
  cpu::KVLayerView view() const { return {ptrs.data(), table.data(), 0, kBlock}; }
};

// out[h*D..] for the query at position p (window <= 0: all keys <= p).
void attention_ref(const float* q, int64_t p, const LayerCache& c, const float* sinks, int64_t window, float* out) {
  const int64_t lo = window > 0 ? std::max<int64_t>(0, p - window + 1) : 0;
  const int64_t G = kHeads / kKvHeads;
  std::vector<double> sc(size_t(p - lo + 1));
  for (int64_t h = 0; h < kHeads; ++h) {
    const int64_t g = h / G;
    double m = sinks[h];
    for (int64_t j = lo; j <= p; ++j) {
      double d = 0;
      for (int64_t i = 0; i < kHeadDim; ++i) d += double(q[h * kHeadDim + i]) * c.k[size_t(j * kKvDim + g * kHeadDim + i)];
      sc[size_t(j - lo)] = d * kScale;
      m = std::max(m, sc[size_t(j - lo)]);
    }
    double sum = std::exp(double(sinks[h]) - m);
    for (auto& x : sc) sum += (x = std::exp(x - m));
    for (int64_t i = 0; i < kHeadDim; ++i) {
      double o = 0;
      for (int64_t j = lo; j <= p; ++j) o += sc[size_t(j - lo)] * c.v[size_t(j * kKvDim + g * kHeadDim + i)];
      out[h * kHeadDim + i] = float(o / sum);
    }
  }
}

struct AttnData {
  std::vector<LayerCache> layers;  // layers[0] keeps the plain K/V for the check
  Buffer<float> q, out;
  std::vector<float> sinks;
  bool checked = false;
};

int64_t keys_seen(int64_t p, int64_t window) { return window > 0 ? std::min(window, p + 1) : p + 1; }

// T queries at positions [ctx - T, ctx) over a ctx-long cache.
void BM_attention(benchmark::State& s, const Options& opt, int64_t ctx, int64_t T, int64_t window) {
  const std::string key = "attn/" + std::to_string(ctx) + "/" + std::to_string(T) + "/" + std::to_string(window);
  const size_t kv_bytes = size_t(keys_seen(ctx - 1, window)) * kKvDim * 2 * 4;
  const int nlayers = T == 1 ? std::min(cold_copies(size_t(ctx) * kKvDim * 8, opt), 64) : 1;
  auto d = cached<AttnData>(key, [&] {
    auto p = new AttnData;
    for (int l = 0; l < nlayers; ++l) p->layers.emplace_back(ctx, 100 + l, l == 0);
    p->q = Buffer<float>(size_t(T * kQDim));
    p->out = Buffer<float>(size_t(T * kQDim));
    fill_normal(p->q.data(), size_t(T * kQDim), 7);
    p->sinks.resize(static_cast<size_t>(kHeads));
    fill_normal(p->sinks.data(), p->sinks.size(), 8);
    return p;
  });
  std::vector<int64_t> pos(static_cast<size_t>(T));
  std::iota(pos.begin(), pos.end(), ctx - T);
  std::vector<cpu::KVLayerView> views(size_t(T), d->layers[0].view());
  cpu::attention(d->q.data(), kQDim, T, pos.data(), views.data(), kHeads, kKvHeads, kHeadDim, kScale,
                 d->sinks.data(), window, d->out.data());
  if (!d->checked) {  // the reference takes long at 32k: once per input, on 3 rows at most
    std::vector<float> ref(static_cast<size_t>(kQDim));
    for (int64_t t : {int64_t(0), T / 2, T - 1}) {
      attention_ref(d->q.data() + t * kQDim, pos[size_t(t)], d->layers[0], d->sinks.data(), window, ref.data());
      if (!check_close(s, "out", d->out.data() + t * kQDim, ref.data(), ref.size())) return;
    }
    d->checked = true;
  }
  size_t l = 0;
  for (auto _ : s) {
    std::fill(views.begin(), views.end(), d->layers[l++ % d->layers.size()].view());
    cpu::attention(d->q.data(), kQDim, T, pos.data(), views.data(), kHeads, kKvHeads, kHeadDim, kScale,
                   d->sinks.data(), window, d->out.data());
    benchmark::ClobberMemory();
  }
  double keys = 0;
  for (int64_t p : pos) keys += double(keys_seen(p, window));
  count_flops(s, 2.0 * 2 * kHeads * kHeadDim * keys);  // QK^T and PV
  if (T == 1) count_bytes(s, double(kv_bytes));
}

}  // namespace

void register_attention(const Options& opt) {
  const std::vector<int64_t> ctxs = opt.smoke ? std::vector<int64_t>{kWindow + 32} : std::vector<int64_t>{1024, 8192, 32768};
  const std::vector<int64_t> prefills = opt.smoke ? std::vector<int64_t>{kWindow + 32} : std::vector<int64_t>{512, 2048};
  for (int64_t window : {int64_t(0), kWindow}) {
    const std::string kind = window > 0 ? "window" : "full";
    for (int64_t ctx : ctxs)
      add(opt, "attn_decode/" + kind + "/ctx:" + std::to_string(ctx), BM_attention, opt,
                                   ctx, int64_t(1), window);
    for (int64_t T : prefills)
      add(opt, "attn_prefill/" + kind + "/T:" + std::to_string(T), BM_attention, opt, T,
                                   T, window);
  }
}

}  // namespace gptoss::bench
