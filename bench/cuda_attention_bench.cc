// CUDA attention over the paged KV cache (cuda/kernels.cuh, attention) at the gpt-oss shapes:
// 64 query heads over 8 KV heads of 64, sinks, blocks of 16 positions in a shuffled block
// table. Decode: one row after 1k/8k/32k positions, full and sliding-window (128) layers, with
// an fp32 (the engine's default) or a bf16 cache; bytes/s against the copy bandwidth. Prefill:
// 512 and 2048 rows from position 0 (the engine's row groups); FLOP/s. Each checks rows of
// its output against a float64 reference first.
#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "cuda_bench_util.h"

namespace gptoss::bench::gpu {
namespace {

constexpr int kBlock = 16;

struct AttnCase {
  int64_t T, L;  // query rows (at positions L-T .. L-1), cached positions
  int window;    // 0: full causal
  bool bf16;
};

struct AttnData {
  std::vector<DevBuf> pools;  // cold copies of the cache (same block table)
  DevBuf q, out, table, groups, sinks, part, arrivals;
  std::vector<int32_t> h_table;
  cuda::AttnArgs a;
  int64_t block_elems = 0;
  double keys = 0;  // (row, key) pairs attended, per KV head
};

std::unique_ptr<AttnData> make_attn(const AttnCase& c, const Options& opt) {
  auto d = std::make_unique<AttnData>();
  const int64_t nblk = (c.L + kBlock - 1) / kBlock;
  d->block_elems = 2 * kKvHeads * kBlock * kHeadDim;  // one layer: K then V
  const size_t pool_bytes = size_t(nblk * d->block_elems) * (c.bf16 ? 2 : 4);
  const int copies = c.T == 1 ? cold_sets(size_t(std::min<int64_t>(c.L, c.window > 0 ? c.window : c.L)) *
                                              size_t(d->block_elems / kBlock) * (c.bf16 ? 2 : 4),
                                          opt)
                              : 1;
  for (int i = 0; i < copies; ++i) {
    d->pools.emplace_back(pool_bytes);
    if (c.bf16) fill_bf16(d->pools.back(), 1.f, 61 + i);
    else fill_f32(d->pools.back(), 0.f, 1.f, 61 + i);
  }
  d->h_table.resize(size_t(nblk));
  std::iota(d->h_table.begin(), d->h_table.end(), 0);
  std::shuffle(d->h_table.begin(), d->h_table.end(), std::mt19937(7));
  d->table = upload(d->h_table);
  // The engine's groups: runs of consecutive positions, at most attn_rows_per_group rows each.
  const int rpg = cuda::attn_rows_per_group(int(kHeads), int(kKvHeads));
  std::vector<cuda::AttnGroup> groups;
  int max_span = 1;
  for (int64_t r = 0; r < c.T; r += rpg) {
    const int n = int(std::min<int64_t>(rpg, c.T - r)), p0 = int(c.L - c.T + r);
    groups.push_back(cuda::AttnGroup{int32_t(r), n, p0, 0});
    const int lo = c.window > 0 ? std::max(0, p0 - c.window + 1) : 0;
    max_span = std::max(max_span, p0 + n - lo);
  }
  for (int64_t r = 0; r < c.T; ++r) {
    const int64_t p = c.L - c.T + r;
    d->keys += double(c.window > 0 ? std::min<int64_t>(p + 1, c.window) : p + 1);
  }
  d->groups = upload(groups);
  d->q = DevBuf(size_t(c.T * kQDim) * 4);
  fill_f32(d->q, 0.f, 1.f, 71);
  d->sinks = DevBuf(size_t(kHeads) * 4);
  fill_f32(d->sinks, 1.f, 2.f, 72);
  d->out = DevBuf(size_t(c.T * kQDim) * 4);
  cuda::AttnArgs& a = d->a;
  a.q = d->q.as<float>();
  a.ldq = int(kQDim);
  a.T = int(c.T);
  a.kv.pool = d->pools[0].p;
  a.kv.block_elems = d->block_elems;
  a.kv.layer_offset = 0;
  a.kv.block_size = kBlock;
  a.kv.n_kv = int(kKvHeads);
  a.kv.head_dim = int(kHeadDim);
  a.kv.bf16 = c.bf16;
  a.tables = d->table.as<int32_t>();
  a.groups = d->groups.as<cuda::AttnGroup>();
  a.n_groups = int(groups.size());
  a.n_heads = int(kHeads);
  a.window = c.window;
  a.scale = 1.f / std::sqrt(float(kHeadDim));
  a.sinks = d->sinks.as<float>();
  a.out = d->out.as<float>();
  a.ldo = int(kQDim);
  cuda::attention_prepare();
  cuda::attn_plan(a, max_span, c.T * 64, device().sms);
  d->part = DevBuf(size_t(c.T * kHeads * a.n_splits * (kHeadDim + 2)) * 4);
  a.part = d->part.as<float>();
  d->arrivals = DevBuf(size_t(a.n_groups * kKvHeads) * 4);
  d->arrivals.zero();
  a.arrivals = d->arrivals.as<int32_t>();
  return d;
}

// Rows `rows` (every head) against float64 attention with sinks over the cache as stored.
bool check_attn(benchmark::State& s, const AttnCase& c, const AttnData& d, const std::vector<int64_t>& rows) {
  const size_t n = d.pools[0].bytes / (c.bf16 ? 2 : 4);
  std::vector<float> pool(n);
  if (c.bf16) {
    const auto raw = download<uint16_t>(d.pools[0].p, n);
    for (size_t i = 0; i < n; ++i) pool[i] = bf16(raw[i]);
  } else {
    pool = download<float>(d.pools[0].p, n);
  }
  const auto q = download<float>(d.q.p, size_t(c.T * kQDim));
  const auto out = download<float>(d.out.p, size_t(c.T * kQDim));
  const auto sinks = download<float>(d.sinks.p, size_t(kHeads));
  std::vector<float> got, ref;
  auto at = [&](int64_t pos, int64_t g, bool v) {
    const int64_t base = int64_t(d.h_table[size_t(pos / kBlock)]) * d.block_elems;
    return pool.data() + base + ((v ? kKvHeads + g : g) * kBlock + pos % kBlock) * kHeadDim;
  };
  for (int64_t r : rows) {
    const int64_t p = c.L - c.T + r, lo = c.window > 0 ? std::max<int64_t>(0, p - c.window + 1) : 0;
    for (int64_t h = 0; h < kHeads; ++h) {
      const int64_t g = h / (kHeads / kKvHeads);
      const float* qh = q.data() + r * kQDim + h * kHeadDim;
      std::vector<double> sc;
      double m = sinks[size_t(h)];
      for (int64_t j = lo; j <= p; ++j) {
        const float* k = at(j, g, false);
        double dot = 0;
        for (int64_t e = 0; e < kHeadDim; ++e) dot += double(qh[e]) * k[e];
        sc.push_back(dot / std::sqrt(double(kHeadDim)));
        m = std::max(m, sc.back());
      }
      double den = std::exp(double(sinks[size_t(h)]) - m);
      std::vector<double> acc(static_cast<size_t>(kHeadDim), 0.0);
      for (int64_t j = lo; j <= p; ++j) {
        const double w = std::exp(sc[size_t(j - lo)] - m);
        den += w;
        const float* v = at(j, g, true);
        for (int64_t e = 0; e < kHeadDim; ++e) acc[size_t(e)] += w * v[e];
      }
      for (int64_t e = 0; e < kHeadDim; ++e) {
        ref.push_back(float(acc[size_t(e)] / den));
        got.push_back(out[size_t(r * kQDim + h * kHeadDim + e)]);
      }
    }
  }
  return check_close(s, "out", got.data(), ref.data(), got.size(), 1e-4, 1e-6);
}

void bm_attn(benchmark::State& s, const Options& opt, AttnCase c, const std::string& key) {
  auto d = cached<AttnData>(key, [&] { return make_attn(c, opt).release(); });
  auto run = [&](int i) {
    cuda::AttnArgs a = d->a;
    a.kv.pool = d->pools[size_t(i) % d->pools.size()].p;
    cuda::attention(a, 0);
  };
  run(0);
  std::vector<int64_t> rows{0};
  if (c.T > 1) rows = {0, c.T / 2, c.T - 1};
  if (!check_attn(s, c, *d, rows)) return;
  const double eb = c.bf16 ? 2 : 4;
  // Decode reads every attended key and value once per KV head; prefill is compute-bound.
  const double bytes = c.T == 1 ? d->keys * 2 * kKvDim * eb + 8.0 * kQDim : 0;
  time_loop(s, opt, run, bytes, 4.0 * double(kHeads * kHeadDim) * d->keys);
}

}  // namespace

void register_attention(const Options& opt) {
  const std::vector<int64_t> decode_ctx = opt.smoke ? std::vector<int64_t>{150} : std::vector<int64_t>{1024, 8192, 32768};
  const std::vector<int64_t> prefill = opt.smoke ? std::vector<int64_t>{136} : std::vector<int64_t>{512, 2048};
  for (bool bf16 : {false, true})
    for (int window : {0, int(kWindow)})
      for (int64_t L : decode_ctx) {
        const std::string key = std::string("cuda_attn_decode/") + (window ? "window" : "full") + "/ctx:" +
                                std::to_string(L) + "/kv:" + (bf16 ? "bf16" : "fp32");
        const AttnCase c{1, L, window, bf16};
        add_cuda(opt, key, [=](benchmark::State& s) { bm_attn(s, opt, c, key); });
      }
  for (int window : {0, int(kWindow)})
    for (int64_t T : prefill) {
      const std::string key = std::string("cuda_attn_prefill/") + (window ? "window" : "full") + "/T:" + std::to_string(T);
      const AttnCase c{T, T, window, false};
      add_cuda(opt, key, [=](benchmark::State& s) { bm_attn(s, opt, c, key); });
    }
}

}  // namespace gptoss::bench::gpu
