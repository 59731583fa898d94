// The small CUDA kernels of a gpt-oss step (cuda/kernels.cuh): RMSNorm, RoPE with the K/V
// store into the paged cache (rope_kv_store), the router (logits, top-4, softmax) for both
// expert counts, and sampling over the 201,088 logits (greedy; top-k/top-p with the two-stage
// candidate gathering of few rows). All memory-bound: bytes/s against the copy bandwidth.
// Each checks its output against a host reference first.
#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "cuda_bench_util.h"

namespace gptoss::bench::gpu {
namespace {

constexpr float kEps = 1e-5f;

struct RmsData {
  DevBuf x, w, y;
};

void bm_rmsnorm(benchmark::State& s, const Options& opt, int64_t T) {
  const int64_t H = kHidden;
  auto d = cached<RmsData>("cuda_rmsnorm/" + std::to_string(T), [&] {
    auto p = std::make_unique<RmsData>();
    p->x = DevBuf(size_t(T * H) * 4);
    fill_f32(p->x, 0.f, 1.f, 81);
    p->w = DevBuf(size_t(H) * 4);
    fill_f32(p->w, 1.f, 0.1f, 82);
    p->y = DevBuf(size_t(T * H) * 4);
    return p.release();
  });
  auto run = [&](int) { cuda::rmsnorm(d->x.as<float>(), int(T), int(H), d->w.as<float>(), kEps, d->y.as<float>(), 0); };
  run(0);
  const auto x = download<float>(d->x.p, size_t(T * H)), w = download<float>(d->w.p, size_t(H)),
             y = download<float>(d->y.p, size_t(T * H));
  std::vector<float> ref(x.size());
  for (int64_t t = 0; t < T; ++t) {
    double ss = 0;
    for (int64_t i = 0; i < H; ++i) ss += double(x[size_t(t * H + i)]) * x[size_t(t * H + i)];
    const double r = 1.0 / std::sqrt(ss / double(H) + kEps);
    for (int64_t i = 0; i < H; ++i) ref[size_t(t * H + i)] = float(x[size_t(t * H + i)] * r * w[size_t(i)]);
  }
  if (!check_close(s, "y", y.data(), ref.data(), y.size(), 1e-5)) return;
  time_loop(s, opt, run, 8.0 * double(T * H) + 4.0 * double(H), 0);
}

// RoPE of q and k (64 + 8 heads, half-split) at positions pos[t], k and v stored in the cache.
struct RopeData {
  DevBuf qkv, qkv0, pos, row_table, tables, inv_freq, pool;
  std::vector<int32_t> h_pos;
  std::vector<float> h_freq;
};
constexpr int64_t kQkvDim = kQDim + 2 * kKvDim, kBlockSize = 16;
constexpr float kConc = 1.2f;

void bm_rope(benchmark::State& s, const Options& opt, int64_t T) {
  const int half = int(kHeadDim / 2);
  const int64_t block_elems = 2 * kKvHeads * kBlockSize * kHeadDim;
  auto d = cached<RopeData>("cuda_rope/" + std::to_string(T), [&] {
    auto p = std::make_unique<RopeData>();
    p->qkv0 = DevBuf(size_t(T * kQkvDim) * 4);
    fill_f32(p->qkv0, 0.f, 1.f, 91);
    p->qkv = DevBuf(p->qkv0.bytes);
    for (int64_t t = 0; t < T; ++t) p->h_pos.push_back(int32_t(T == 1 ? 4321 : t));
    p->pos = upload(p->h_pos);
    p->row_table = upload(std::vector<int32_t>(size_t(T), 0));
    const int64_t nblk = (p->h_pos.back() + kBlockSize) / kBlockSize;
    std::vector<int32_t> tab(static_cast<size_t>(nblk));
    std::iota(tab.begin(), tab.end(), 0);
    std::reverse(tab.begin(), tab.end());
    p->tables = upload(tab);
    for (int i = 0; i < half; ++i) p->h_freq.push_back(float(std::pow(150000.0, -double(i) / half)));
    p->inv_freq = upload(p->h_freq);
    p->pool = DevBuf(size_t(nblk * block_elems) * 4);
    return p.release();
  });
  cuda::KVView kv;
  kv.pool = d->pool.p;
  kv.block_elems = block_elems;
  kv.block_size = int(kBlockSize);
  kv.n_kv = int(kKvHeads);
  kv.head_dim = int(kHeadDim);
  // Rotating in place: each launch rotates the already rotated q again (same cost); the check
  // runs on one launch from the original values.
  auto run = [&](int) {
    cuda::rope_kv_store(d->qkv.as<float>(), int(kQkvDim), int(T), d->pos.as<int32_t>(), d->row_table.as<int32_t>(),
                        d->tables.as<int32_t>(), int(kHeads), int(kKvHeads), half, d->inv_freq.as<float>(), kConc, kv, 0);
  };
  GB_CHECK(cudaMemcpy(d->qkv.p, d->qkv0.p, d->qkv0.bytes, cudaMemcpyDeviceToDevice));
  run(0);
  const auto x = download<float>(d->qkv0.p, size_t(T * kQkvDim)), y = download<float>(d->qkv.p, size_t(T * kQkvDim));
  const auto pool = download<float>(d->pool.p, d->pool.bytes / 4);
  const auto tab = download<int32_t>(d->tables.p, d->tables.bytes / 4);
  std::vector<float> got, ref;
  for (int64_t t : {int64_t(0), T - 1}) {
    const int32_t p = d->h_pos[size_t(t)];
    const float* row = x.data() + t * kQkvDim;
    const int64_t kbase = int64_t(tab[size_t(p / kBlockSize)]) * block_elems + (p % kBlockSize) * kHeadDim;
    for (int64_t h = 0; h < kHeads + kKvHeads; ++h)
      for (int i = 0; i < half; ++i) {
        const double a = double(float(p) * d->h_freq[size_t(i)]);  // the angle in fp32, as specified
        const double c = std::cos(a) * kConc, sn = std::sin(a) * kConc;
        const double u = row[h * kHeadDim + i], v = row[h * kHeadDim + i + half];
        ref.push_back(float(u * c - v * sn));
        ref.push_back(float(v * c + u * sn));
        if (h < kHeads) {
          got.push_back(y[size_t(t * kQkvDim + h * kHeadDim + i)]);
          got.push_back(y[size_t(t * kQkvDim + h * kHeadDim + i + half)]);
        } else {
          const int64_t g = h - kHeads;
          got.push_back(pool[size_t(kbase + g * kBlockSize * kHeadDim + i)]);
          got.push_back(pool[size_t(kbase + g * kBlockSize * kHeadDim + i + half)]);
        }
      }
    for (int64_t g = 0; g < kKvHeads; ++g)  // v stored as it is
      for (int64_t e = 0; e < kHeadDim; ++e) {
        ref.push_back(row[kQDim + kKvDim + g * kHeadDim + e]);
        got.push_back(pool[size_t(kbase + (kKvHeads + g) * kBlockSize * kHeadDim + e)]);
      }
  }
  if (!check_close(s, "qkv", got.data(), ref.data(), got.size(), 1e-5)) return;
  time_loop(s, opt, run, 4.0 * double(T) * double(2 * (kQDim + kKvDim) + 2 * kKvDim), 0);
}

// Router: logits = t W^T + b over E experts, top 4, softmax over them.
struct RouterData {
  DevBuf t, w, b, idx, rw, logits, arrivals;
};

void bm_router(benchmark::State& s, const Options& opt, int64_t T, int64_t E) {
  const int64_t H = kHidden, k = kTopK;
  auto d = cached<RouterData>("cuda_router/" + std::to_string(T) + "/" + std::to_string(E), [&] {
    auto p = std::make_unique<RouterData>();
    p->t = DevBuf(size_t(T * H) * 4);
    fill_f32(p->t, 0.f, 1.f, 101);
    p->w = DevBuf(size_t(E * H) * 2);
    fill_bf16(p->w, 0.05f, 102);
    p->b = DevBuf(size_t(E) * 4);
    fill_f32(p->b, 0.f, 0.1f, 103);
    p->idx = DevBuf(size_t(T * k) * 4);
    p->rw = DevBuf(size_t(T * k) * 4);
    const int rows = cuda::router_split_rows();
    p->logits = DevBuf(size_t(rows * E) * 4);
    p->arrivals = DevBuf(size_t(rows) * 4);
    p->arrivals.zero();
    return p.release();
  });
  const cuda::RouterScratch scr{d->logits.as<float>(), d->arrivals.as<int32_t>(), cuda::router_split_rows()};
  auto run = [&](int) {
    cuda::router(d->t.as<float>(), int(T), int(H), d->w.as<uint16_t>(), d->b.as<float>(), int(E), int(k),
                 d->idx.as<int32_t>(), d->rw.as<float>(), 0, &scr);
  };
  run(0);
  const auto t = download<float>(d->t.p, size_t(T * H)), b = download<float>(d->b.p, size_t(E));
  const auto w = download<uint16_t>(d->w.p, size_t(E * H));
  const auto idx = download<int32_t>(d->idx.p, size_t(T * k));
  const auto rw = download<float>(d->rw.p, size_t(T * k));
  std::vector<float> got, ref;
  int checked = 0;
  for (int64_t r : {int64_t(0), T / 2, T - 1}) {
    std::vector<double> lg(static_cast<size_t>(E));
    for (int64_t e = 0; e < E; ++e) {
      double acc = b[size_t(e)];
      for (int64_t i = 0; i < H; ++i) acc += double(t[size_t(r * H + i)]) * bf16(w[size_t(e * H + i)]);
      lg[size_t(e)] = acc;
    }
    std::vector<int> order(static_cast<size_t>(E));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int c) { return lg[size_t(a)] > lg[size_t(c)]; });
    // A near tie at the cut (fp32 vs float64 may order it either way) leaves this row unchecked.
    if (lg[size_t(order[size_t(k - 1)])] - lg[size_t(order[size_t(k)])] < 1e-4) continue;
    double den = 0;
    for (int64_t j = 0; j < k; ++j) den += std::exp(lg[size_t(order[size_t(j)])] - lg[size_t(order[0])]);
    for (int64_t j = 0; j < k; ++j) {
      if (idx[size_t(r * k + j)] != order[size_t(j)]) {
        s.SkipWithError(("validation failed: router row " + std::to_string(r) + " slot " + std::to_string(j) +
                         " chose expert " + std::to_string(idx[size_t(r * k + j)]) + ", reference " +
                         std::to_string(order[size_t(j)]))
                            .c_str());
        return;
      }
      ref.push_back(float(std::exp(lg[size_t(order[size_t(j)])] - lg[size_t(order[0])]) / den));
      got.push_back(rw[size_t(r * k + j)]);
    }
    ++checked;
  }
  if (checked == 0) {
    s.SkipWithError("validation: every checked row had a near tie at the top-4 cut");
    return;
  }
  if (!check_close(s, "weights", got.data(), ref.data(), got.size(), 1e-4)) return;
  time_loop(s, opt, run, 2.0 * double(E * H) + 4.0 * double(T * H + E + 2 * T * k), 2.0 * double(T * E * H));
}

// Sampling over the vocabulary: R rows, all greedy or all top-k 50 / top-p 0.9 / temperature 0.7.
struct SampleData {
  DevBuf logits, params, out, sv, si, cv, ci, cn, pm, pn, rm, rn, arr;
  cuda::SampleScratch scr;
};
constexpr int kSplits = 64;

void bm_sample(benchmark::State& s, const Options& opt, int64_t R, bool greedy) {
  const int64_t V = kVocab;
  auto d = cached<SampleData>("cuda_sample/" + std::to_string(R) + (greedy ? "g" : "s"), [&] {
    auto p = std::make_unique<SampleData>();
    p->logits = DevBuf(size_t(R * V) * 4);
    fill_f32(p->logits, 0.f, 3.f, 111);
    std::vector<cuda::SampleParams> prm;
    Rng r(112);
    for (int64_t i = 0; i < R; ++i)
      prm.push_back(greedy ? cuda::SampleParams{0.f, 0, 1.f, 0.f, 0.f, 0}
                           : cuda::SampleParams{0.7f, 50, 0.9f, 0.f, r.uniform(), 0});
    p->params = upload(prm);
    p->out = DevBuf(size_t(R) * 4);
    const size_t big = size_t(R * V) * 4, rows = size_t(R);
    p->sv = DevBuf(big), p->si = DevBuf(big), p->cv = DevBuf(big), p->ci = DevBuf(big);
    p->cn = DevBuf(rows * 4), p->pm = DevBuf(rows * kSplits * 4), p->pn = DevBuf(rows * kSplits * 4);
    p->rm = DevBuf(rows * 4), p->rn = DevBuf(rows * 4), p->arr = DevBuf(rows * 4);
    p->arr.zero();
    auto& c = p->scr;
    c.stage_val = p->sv.as<float>(), c.stage_id = p->si.as<int32_t>(), c.cand_val = p->cv.as<float>();
    c.cand_id = p->ci.as<int32_t>(), c.cand_n = p->cn.as<int32_t>(), c.part_max = p->pm.as<float>();
    c.part_n = p->pn.as<uint32_t>(), c.row_max = p->rm.as<float>(), c.row_nv = p->rn.as<uint32_t>();
    c.arrivals = p->arr.as<int32_t>(), c.rows = int(R), c.splits = kSplits;
    return p.release();
  });
  auto run = [&](int) {
    cuda::sample_rows(d->logits.as<float>(), int(R), V, d->params.as<cuda::SampleParams>(), d->out.as<int32_t>(), 0,
                      &d->scr);
  };
  run(0);
  const auto lg = download<float>(d->logits.p, size_t(R * V));
  const auto out = download<int32_t>(d->out.p, size_t(R));
  for (int64_t r = 0; r < R; ++r) {
    const float* row = lg.data() + r * V;
    std::vector<int32_t> ids(static_cast<size_t>(V));
    std::iota(ids.begin(), ids.end(), 0);
    const size_t keep = greedy ? 1 : 50;  // greedy: the argmax (lowest id on ties); else one of the top 50
    std::partial_sort(ids.begin(), ids.begin() + long(keep), ids.end(),
                      [&](int32_t a, int32_t b) { return row[a] > row[b] || (row[a] == row[b] && a < b); });
    if (std::find(ids.begin(), ids.begin() + long(keep), out[size_t(r)]) == ids.begin() + long(keep)) {
      s.SkipWithError(("validation failed: row " + std::to_string(r) + " sampled id " + std::to_string(out[size_t(r)]) +
                       (greedy ? ", the argmax is " + std::to_string(ids[0]) : std::string(", not among the top 50")))
                          .c_str());
      return;
    }
  }
  time_loop(s, opt, run, 4.0 * double(R * V), 0);
}

}  // namespace

void register_ops(const Options& opt) {
  const std::vector<int64_t> rows = opt.smoke ? std::vector<int64_t>{1, 3} : std::vector<int64_t>{1, 2048};
  for (int64_t T : rows)
    add_cuda(opt, "cuda_rmsnorm/T:" + std::to_string(T), [=](benchmark::State& s) { bm_rmsnorm(s, opt, T); });
  for (int64_t T : rows)
    add_cuda(opt, "cuda_rope_kv_store/T:" + std::to_string(T), [=](benchmark::State& s) { bm_rope(s, opt, T); });
  for (const auto& m : kModels)
    for (int64_t T : rows)
      add_cuda(opt, std::string("cuda_router_topk/") + m.name + "/E:" + std::to_string(m.experts) + "/T:" + std::to_string(T),
               [=](benchmark::State& s) { bm_router(s, opt, T, m.experts); });
  for (int64_t R : opt.smoke ? std::vector<int64_t>{1} : std::vector<int64_t>{1, 16})
    for (bool greedy : {true, false})
      add_cuda(opt, std::string("cuda_sample/") + (greedy ? "greedy" : "top_k50_top_p0.9_t0.7") + "/V:" +
                        std::to_string(kVocab) + "/R:" + std::to_string(R),
               [=](benchmark::State& s) { bm_sample(s, opt, R, greedy); });
}

}  // namespace gptoss::bench::gpu
