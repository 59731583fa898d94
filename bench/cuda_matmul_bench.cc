// CUDA matrix products at the gpt-oss shapes (cuda/kernels.cuh): the bf16 dense layers as
// GEMV (decode, 1 and 8 rows) and GEMM (prefill), and the MXFP4 experts: decode on the GEMV
// path over one token's 4 selected experts (direct pairs, as the engine runs one token),
// prefill on the tensor-core path with the tokens grouped by expert (moe_route, timed too).
// Each checks its output against a float64 host reference before it is timed.
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

constexpr float kAlpha = 1.702f, kLimit = 7.0f;

// First and last 32 of n (a full reference of a 201088-row product would outlast the benchmark).
std::vector<int64_t> check_rows(int64_t n) {
  std::vector<int64_t> r;
  for (int64_t i = 0; i < std::min<int64_t>(n, 32); ++i) r.push_back(i);
  for (int64_t i = std::max<int64_t>(32, n - 32); i < n; ++i) r.push_back(i);
  return r;
}

struct DenseShape {
  const char* name;
  int64_t N, K;
};

struct DenseData {
  std::vector<DevBuf> w;  // cold copies of W [N, K] bf16
  DevBuf bias, x, y;
};

// Rows {0, M-1} x check_rows(N) of Y = X W^T + b against float64.
bool check_dense(benchmark::State& s, const DenseData& d, int64_t M, int64_t N, int64_t K) {
  const auto x = download<float>(d.x.p, size_t(M * K));
  const auto y = download<float>(d.y.p, size_t(M * N));
  const auto b = download<float>(d.bias.p, size_t(N));
  std::vector<float> got, ref;
  for (int64_t n : check_rows(N)) {
    const auto w = download<uint16_t>(d.w[0].as<uint16_t>() + n * K, size_t(K));
    for (int64_t m : {int64_t(0), M - 1}) {
      double acc = b[size_t(n)];
      for (int64_t k = 0; k < K; ++k) acc += double(x[size_t(m * K + k)]) * double(bf16(w[size_t(k)]));
      ref.push_back(float(acc));
      got.push_back(y[size_t(m * N + n)]);
    }
  }
  return check_close(s, "y", got.data(), ref.data(), got.size(), 1e-3);
}

void bm_dense(benchmark::State& s, const Options& opt, DenseShape sh, int64_t M) {
  const int64_t N = sh.N, K = sh.K;
  const size_t wbytes = size_t(N * K) * 2;
  const int copies = M <= 8 ? cold_sets(wbytes, opt) : 1;
  auto d = cached<DenseData>(std::string("cuda_dense/") + sh.name + std::to_string(N) + "/" + std::to_string(M), [&] {
    auto p = std::make_unique<DenseData>();
    for (int c = 0; c < copies; ++c) {
      p->w.emplace_back(wbytes);
      fill_bf16(p->w.back(), 0.05f, 11 + c);
    }
    p->bias = DevBuf(size_t(N) * 4);
    fill_f32(p->bias, 0.f, 0.1f, 3);
    p->x = DevBuf(size_t(M * K) * 4);
    fill_f32(p->x, 0.f, 1.f, 5);
    p->y = DevBuf(size_t(M * N) * 4);
    return p.release();
  });
  auto run = [&](int i) {
    cuda::dense(d->x.as<float>(), int(K), nullptr, int(M), int(K), d->w[size_t(i) % d->w.size()].as<uint16_t>(),
                int(K), int(N), d->bias.as<float>(), d->y.as<float>(), int(N), cuda::EPI_STORE, 0);
  };
  run(0);
  if (!check_dense(s, *d, M, N, K)) return;
  time_loop(s, opt, run, double(wbytes) + 4.0 * double(N + M * (K + N)), 2.0 * double(M * N * K));
}

// One layer's experts in the checkpoint layout, MXFP4 blocks + E8M0 scales, fp32 biases.
struct ExpertShape {
  int64_t H, I, E, k;
};
struct Experts {
  ExpertShape sh;
  DevBuf b1, s1, bias1, b2, s2, bias2;
  explicit Experts(ExpertShape x) : sh(x) {
    const int64_t H = x.H, I = x.I, E = x.E;
    b1 = DevBuf(size_t(E * 2 * I * H / 2));
    s1 = DevBuf(size_t(E * 2 * I * H / 32));
    bias1 = DevBuf(size_t(E * 2 * I) * 4);
    b2 = DevBuf(size_t(E * H * I / 2));
    s2 = DevBuf(size_t(E * H * I / 32));
    bias2 = DevBuf(size_t(E * H) * 4);
    fill_bytes(b1, 21);
    fill_scales(s1, 122, 22);
    fill_f32(bias1, 0.f, 0.1f, 23);
    fill_bytes(b2, 31);
    fill_scales(s2, 122, 32);
    fill_f32(bias2, 0.f, 0.1f, 33);
  }
  cuda::MxWeights w1() const {
    return {b1.as<uint8_t>(), s1.as<uint8_t>(), bias1.as<float>(), int(2 * sh.I), int(sh.H), int(sh.E)};
  }
  cuda::MxWeights w2() const {
    return {b2.as<uint8_t>(), s2.as<uint8_t>(), bias2.as<float>(), int(sh.H), int(sh.I), int(sh.E)};
  }
  // Bytes of one expert's weights: blocks, scales and biases of mlp1 and mlp2.
  double bytes_per_expert() const {
    return double(3 * sh.I * sh.H) * 17.0 / 32.0 + 4.0 * double(2 * sh.I + sh.H);
  }
  // rw * (W2[e] swiglu(W1[e] x + b1[e]) + b2[e]) in float64, for one token row x.
  std::vector<float> reference(int64_t e, const float* x, float rw) const {
    const int64_t H = sh.H, I = sh.I;
    const auto hb1 = download<uint8_t>(b1.as<uint8_t>() + e * 2 * I * H / 2, size_t(2 * I * H / 2));
    const auto hs1 = download<uint8_t>(s1.as<uint8_t>() + e * 2 * I * H / 32, size_t(2 * I * H / 32));
    const auto hbias1 = download<float>(bias1.as<float>() + e * 2 * I, size_t(2 * I));
    const auto hb2 = download<uint8_t>(b2.as<uint8_t>() + e * H * I / 2, size_t(H * I / 2));
    const auto hs2 = download<uint8_t>(s2.as<uint8_t>() + e * H * I / 32, size_t(H * I / 32));
    const auto hbias2 = download<float>(bias2.as<float>() + e * H, size_t(H));
    std::vector<double> h(size_t(2 * I)), act(static_cast<size_t>(I));
    for (int64_t n = 0; n < 2 * I; ++n) {
      double acc = hbias1[size_t(n)];
      for (int64_t k = 0; k < H; ++k)
        acc += double(x[k]) * mxfp4_value(hb1.data() + n * H / 2, hs1.data() + n * H / 32, k);
      h[size_t(n)] = acc;
    }
    for (int64_t i = 0; i < I; ++i) {  // interleaved: gate = h[2i], linear = h[2i + 1]
      const double g = std::min(h[size_t(2 * i)], double(kLimit));
      const double l = std::clamp(h[size_t(2 * i + 1)], -double(kLimit), double(kLimit));
      act[size_t(i)] = g / (1.0 + std::exp(-double(kAlpha) * g)) * (l + 1.0);
    }
    std::vector<float> y(static_cast<size_t>(H));
    for (int64_t n = 0; n < H; ++n) {
      double acc = hbias2[size_t(n)];
      for (int64_t k = 0; k < I; ++k) acc += act[size_t(k)] * mxfp4_value(hb2.data() + n * I / 2, hs2.data() + n * I / 32, k);
      y[size_t(n)] = float(rw * acc);
    }
    return y;
  }
};

// The grouping buffers of P pairs over E experts.
struct Tiles {
  DevBuf sorted, te, ts, tc, nt;
  cuda::MoeTiles mt;
  Tiles(int P, int E, bool tensor_cores) {
    const size_t n = size_t(cuda::moe_max_tiles(P, E, cuda::moe_gemv_tile())) * 4;
    sorted = DevBuf(size_t(P) * 4);
    te = DevBuf(n);
    ts = DevBuf(n);
    tc = DevBuf(n);
    nt = DevBuf(4);
    mt.sorted = sorted.as<int32_t>();
    mt.tile_e = te.as<int32_t>();
    mt.tile_start = ts.as<int32_t>();
    mt.tile_count = tc.as<int32_t>();
    mt.n_tiles = nt.as<int32_t>();
    cuda::moe_plan(mt, tensor_cores, P, E);
  }
};

struct MoeData {
  std::unique_ptr<Experts> ex;
  DevBuf x, idx, rw, act, y;
  std::vector<int32_t> h_idx;
  std::vector<float> h_rw;
  int sets = 1;  // decode: idx holds `sets` choices of k experts, consecutive ones disjoint
};

// k distinct experts per row; with `avoid`, none of the previous row's (decode: consecutive
// steps share no expert, so none is still in L2).
std::vector<int32_t> choose_experts(int rows, int64_t E, int64_t k, bool avoid, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::vector<int32_t> out;
  std::vector<int32_t> ids(static_cast<size_t>(E));
  for (int r = 0; r < rows; ++r) {
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), g);
    int taken = 0;
    for (int32_t e : ids) {
      if (taken == k) break;
      if (avoid && r > 0 && std::find(out.end() - taken - k, out.end() - taken, e) != out.end() - taken) continue;
      out.push_back(e);
      ++taken;
    }
  }
  return out;
}

std::unique_ptr<MoeData> make_moe(ExpertShape sh, int T, int sets, uint64_t seed) {
  auto d = std::make_unique<MoeData>();
  d->ex = std::make_unique<Experts>(sh);
  const int P = T * int(sh.k);
  d->sets = sets;
  d->x = DevBuf(size_t(T * sh.H) * 4);
  fill_f32(d->x, 0.f, 1.f, seed);
  d->h_idx = choose_experts(std::max(T, sets), sh.E, sh.k, sets > 1, seed + 1);
  d->idx = upload(d->h_idx);
  Rng r(seed + 2);
  for (int p = 0; p < P; ++p) d->h_rw.push_back(0.1f + r.uniform());
  d->rw = upload(d->h_rw);
  d->act = DevBuf(size_t(P * sh.I) * 4);
  d->y = DevBuf(size_t(P * sh.H) * 4);
  return d;
}

// Pairs `pairs` of y [P, H] (pair id t*k + j) against the float64 reference.
bool check_moe(benchmark::State& s, const MoeData& d, int T, const std::vector<int>& pairs) {
  const auto& sh = d.ex->sh;
  const auto x = download<float>(d.x.p, size_t(T * sh.H));
  const auto y = download<float>(d.y.p, size_t(T * sh.k * sh.H));
  for (int p : pairs) {
    const int t = p / int(sh.k);
    const auto ref = d.ex->reference(d.h_idx[size_t(p)], x.data() + t * sh.H, d.h_rw[size_t(p)]);
    if (!check_close(s, "y", y.data() + size_t(p) * size_t(sh.H), ref.data(), ref.size(), 3e-3)) return false;
  }
  return true;
}

void bm_moe_decode(benchmark::State& s, const Options& opt, ExpertShape sh, const std::string& key) {
  const int sets = 64;
  auto d = cached<MoeData>("cuda_moe_decode/" + key, [&] { return make_moe(sh, 1, sets, 41).release(); });
  const int P = int(sh.k);
  Tiles tiles(P, int(sh.E), false);
  tiles.mt.direct = P;  // one token: its k experts as k tiles, no grouping (as the engine runs it)
  tiles.mt.max_tiles = P;
  auto run = [&](int i) {
    cuda::MoeTiles mt = tiles.mt;
    mt.idx = d->idx.as<int32_t>() + (i % d->sets) * P;
    cuda::moe_mlp1(d->x.as<float>(), int(sh.H), P, mt, d->ex->w1(), kAlpha, kLimit, d->act.as<float>(), false, 0);
    cuda::moe_mlp2(d->act.as<float>(), mt, d->ex->w2(), d->rw.as<float>(), d->y.as<float>(), false, 0);
  };
  run(0);
  std::vector<int> all(static_cast<size_t>(P));
  std::iota(all.begin(), all.end(), 0);
  if (!check_moe(s, *d, 1, all)) return;
  time_loop(s, opt, run, double(P) * d->ex->bytes_per_expert() + 4.0 * double(sh.H * (1 + P) + sh.I * P),
            2.0 * double(P) * double(3 * sh.I * sh.H));
}

void bm_moe_prefill(benchmark::State& s, const Options& opt, ExpertShape sh, int T, const std::string& key) {
  auto d = cached<MoeData>("cuda_moe_prefill/" + key, [&] { return make_moe(sh, T, 1, 51).release(); });
  const int P = T * int(sh.k);
  Tiles tiles(P, int(sh.E), true);
  auto run = [&](int) {
    cuda::moe_route(d->idx.as<int32_t>(), P, int(sh.E), tiles.mt, 0);
    cuda::moe_mlp1(d->x.as<float>(), int(sh.H), int(sh.k), tiles.mt, d->ex->w1(), kAlpha, kLimit,
                   d->act.as<float>(), true, 0);
    cuda::moe_mlp2(d->act.as<float>(), tiles.mt, d->ex->w2(), d->rw.as<float>(), d->y.as<float>(), true, 0);
  };
  run(0);
  if (!check_moe(s, *d, T, {0, P / 2 + 1, P - 1})) return;
  const double used = double(sh.E) * (1.0 - std::pow(1.0 - double(sh.k) / double(sh.E), double(T)));
  time_loop(s, opt, run, used * d->ex->bytes_per_expert(), 2.0 * double(P) * double(3 * sh.I * sh.H));
}

}  // namespace

void register_matmul(const Options& opt) {
  // Smoke: the real K (the kernels' inner loops) with few outputs, so the emulator finishes.
  const std::vector<DenseShape> shapes =
      opt.smoke ? std::vector<DenseShape>{{"qkv", 160, kHidden}, {"attn_out", 96, kQDim}}
                : std::vector<DenseShape>{{"qkv", kQDim + 2 * kKvDim, kHidden},
                                          {"attn_out", kHidden, kQDim},
                                          {"unembedding", kVocab, kHidden}};
  for (const auto& sh : shapes) {
    const std::string tail = std::string(sh.name) + "/N:" + std::to_string(sh.N) + "/K:" + std::to_string(sh.K);
    for (int64_t M : {1, 8})
      add_cuda(opt, "cuda_gemv_bf16/" + tail + "/M:" + std::to_string(M), [=](benchmark::State& s) { bm_dense(s, opt, sh, M); });
    if (std::string(sh.name) == "unembedding") continue;  // prefill unembeds only the last row
    for (int64_t M : opt.smoke ? std::vector<int64_t>{40} : std::vector<int64_t>{512, 2048})
      add_cuda(opt, "cuda_gemm_bf16/" + tail + "/M:" + std::to_string(M), [=](benchmark::State& s) { bm_dense(s, opt, sh, M); });
  }
  for (const auto& m : kModels) {
    // Smoke: the real hidden size with a narrow intermediate size and 8 experts.
    const ExpertShape sh = opt.smoke ? ExpertShape{kHidden, 64, 8, kTopK} : ExpertShape{kHidden, kInter, m.experts, kTopK};
    const std::string key = std::string(m.name) + "/E:" + std::to_string(sh.E) + "/I:" + std::to_string(sh.I);
    add_cuda(opt, "cuda_moe_decode_mxfp4/" + key, [=](benchmark::State& s) { bm_moe_decode(s, opt, sh, key); });
    for (int T : opt.smoke ? std::vector<int>{12} : std::vector<int>{512, 2048}) {
      const std::string k2 = key + "/T:" + std::to_string(T);
      add_cuda(opt, "cuda_moe_prefill_mxfp4/" + k2, [=](benchmark::State& s) { bm_moe_prefill(s, opt, sh, T, k2); });
    }
    if (opt.smoke) break;  // both models share the smoke shape
  }
}

}  // namespace gptoss::bench::gpu
