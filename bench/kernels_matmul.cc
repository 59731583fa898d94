// Matrix products at the gpt-oss shapes (csrc/cpu/matmul.h): bf16 GEMV (decode) and GEMM
// (prefill), and the MXFP4 experts: decode reads only the top-4 experts of a token, prefill
// groups the tokens by expert (as cpu_forward.cc does) so each expert's weights are read once.
// Decode figures are bytes/s against the measured read bandwidth, prefill FLOP/s against the
// measured FMA peak. Each benchmark checks its output against the scalar reference first.
#include <algorithm>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "bench_util.h"
#include "cpu/matmul.h"
#include "cpu/ops.h"

namespace gptoss::bench {
namespace {

using cpu::matmul_bf16;
using cpu::matmul_bf16_ref;
using cpu::matmul_mxfp4;
using cpu::matmul_mxfp4_ref;

struct DenseShape {
  std::string name;
  int64_t N, K;
};

// Output rows the references compute: the first and last 32 (a full reference of the 201088-row
// unembedding would take longer than the benchmark).
std::vector<int64_t> check_rows(int64_t N) {
  std::vector<int64_t> r;
  for (int64_t i = 0; i < std::min<int64_t>(N, 32); ++i) r.push_back(i);
  for (int64_t i = std::max<int64_t>(32, N - 32); i < N; ++i) r.push_back(i);
  return r;
}

struct Bf16Data {
  std::vector<Buffer<uint16_t>> w;  // cold copies of W [N, K]
  Buffer<uint16_t> bias;
  Buffer<float> x, y;
};

// Y = X W^T + b for T rows, checked against matmul_bf16_ref on rows {0, T-1} x check_rows(N).
bool check_bf16(benchmark::State& s, const Bf16Data& d, int64_t T, int64_t N, int64_t K) {
  matmul_bf16(d.x.data(), T, K, K, d.w[0].data(), N, K, d.bias.data(), d.y.data(), N);
  std::vector<float> got, ref;
  for (int64_t t : {int64_t(0), T - 1})
    for (int64_t n : check_rows(N)) {
      float r;
      matmul_bf16_ref(d.x.data() + t * K, 1, K, K, d.w[0].data() + n * K, 1, K, d.bias.data() + n, &r, 1);
      ref.push_back(r);
      got.push_back(d.y[size_t(t * N + n)]);
    }
  return check_close(s, "y", got.data(), ref.data(), got.size());
}

void BM_bf16(benchmark::State& s, const Options& opt, DenseShape sh, int64_t T) {
  const int64_t N = sh.N, K = sh.K;
  const size_t wbytes = size_t(N * K) * 2;
  const int copies = T == 1 ? cold_copies(wbytes, opt) : 1;
  auto d = cached<Bf16Data>("bf16/" + sh.name + "/" + std::to_string(T), [&] {
    auto p = new Bf16Data;
    for (int c = 0; c < copies; ++c) {
      p->w.emplace_back(size_t(N * K));
      fill_bf16(p->w.back().data(), size_t(N * K), 11 + c, 0.05f);
    }
    p->bias = Buffer<uint16_t>(size_t(N));
    fill_bf16(p->bias.data(), size_t(N), 3, 0.1f);
    p->x = Buffer<float>(size_t(T * K));
    fill_normal(p->x.data(), size_t(T * K), 5);
    p->y = Buffer<float>(size_t(T * N));
    return p;
  });
  if (!check_bf16(s, *d, T, N, K)) return;
  size_t i = 0;
  for (auto _ : s) {
    matmul_bf16(d->x.data(), T, K, K, d->w[i++ % d->w.size()].data(), N, K, d->bias.data(), d->y.data(), N);
    benchmark::DoNotOptimize(d->y.data());
    benchmark::ClobberMemory();
  }
  count_bytes(s, double(wbytes + 2 * N + 4 * T * (K + N)));
  count_flops(s, 2.0 * T * N * K);
}

// One layer's experts: mlp1 [E][2I, H] and mlp2 [E][H, I], MXFP4 blocks and scales.
struct Experts {
  int64_t E;
  Buffer<uint8_t> b1, s1, b2, s2;
  explicit Experts(int64_t e) : E(e) {
    b1 = Buffer<uint8_t>(size_t(E * 2 * kInter * kHidden / 2));
    s1 = Buffer<uint8_t>(size_t(E * 2 * kInter * kHidden / 32));
    b2 = Buffer<uint8_t>(size_t(E * kHidden * kInter / 2));
    s2 = Buffer<uint8_t>(size_t(E * kHidden * kInter / 32));
    fill_mxfp4(b1.data(), s1.data(), size_t(E * 2 * kInter), kHidden, 21);
    fill_mxfp4(b2.data(), s2.data(), size_t(E * kHidden), kInter, 31);
  }
  const uint8_t* blocks1(int64_t e) const { return b1.data() + e * 2 * kInter * kHidden / 2; }
  const uint8_t* scales1(int64_t e) const { return s1.data() + e * 2 * kInter * kHidden / 32; }
  const uint8_t* blocks2(int64_t e) const { return b2.data() + e * kHidden * kInter / 2; }
  const uint8_t* scales2(int64_t e) const { return s2.data() + e * kHidden * kInter / 32; }
  static constexpr double bytes_per_expert() { return (2.0 * kInter * kHidden + kHidden * kInter) / 32 * 17; }
};

// mlp1 -> SwiGLU -> mlp2 for m gathered rows on expert e (biases are added by the caller in
// cpu_forward.cc, so they are not part of the kernel).
void expert_mlp(const Experts& x, int64_t e, const float* in, int64_t m, float* h1, float* act, float* out) {
  matmul_mxfp4(in, m, kHidden, kHidden, x.blocks1(e), x.scales1(e), 2 * kInter, nullptr, h1, 2 * kInter);
  cpu::swiglu(h1, m, kInter, 1.702f, 7.0f, act);
  matmul_mxfp4(act, m, kInter, kInter, x.blocks2(e), x.scales2(e), kHidden, nullptr, out, kHidden);
}

// Checks both products of expert e for row `row` of `in` against the reference.
bool check_expert(benchmark::State& s, const Experts& x, int64_t e, const float* in, int64_t m, int64_t row) {
  std::vector<float> h1(size_t(m * 2 * kInter)), act(size_t(m * kInter)), out(size_t(m * kHidden));
  expert_mlp(x, e, in, m, h1.data(), act.data(), out.data());
  std::vector<float> r1(size_t(2 * kInter)), r2(static_cast<size_t>(kHidden));
  matmul_mxfp4_ref(in + row * kHidden, 1, kHidden, kHidden, x.blocks1(e), x.scales1(e), 2 * kInter, nullptr,
                   r1.data(), 2 * kInter);
  if (!check_close(s, "mlp1", h1.data() + row * 2 * kInter, r1.data(), r1.size())) return false;
  matmul_mxfp4_ref(act.data() + row * kInter, 1, kInter, kInter, x.blocks2(e), x.scales2(e), kHidden, nullptr,
                   r2.data(), kHidden);
  return check_close(s, "mlp2", out.data() + row * kHidden, r2.data(), r2.size());
}

// Routing of T tokens to top-4 distinct experts, uniformly at random (a trained router spreads
// load roughly evenly over a batch); fixed seed.
std::vector<int32_t> random_routing(int64_t T, int64_t E, uint64_t seed) {
  Rng r(seed);
  std::vector<int32_t> idx(size_t(T * kTopK));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t k = 0; k < kTopK; ++k) {
      int32_t e;
      bool dup;
      do {
        e = int32_t(r.next() % uint64_t(E));
        dup = false;
        for (int64_t j = 0; j < k; ++j) dup |= idx[size_t(t * kTopK + j)] == e;
      } while (dup);
      idx[size_t(t * kTopK + k)] = e;
    }
  return idx;
}

struct MoeData {
  Experts x;
  int64_t T;
  std::vector<int32_t> route;         // [T, 4] expert ids (decode: one row per step, cycled)
  std::vector<int64_t> offsets;       // prefill: rows of each expert in `order`
  std::vector<int32_t> order;         // prefill: token of each (expert, row)
  Buffer<float> in, gathered, h1, act, out;
  MoeData(int64_t E, int64_t T_, int64_t steps) : x(E), T(T_) {
    route = random_routing(std::max(T, steps), E, 77);
    in = Buffer<float>(size_t(T * kHidden));
    fill_normal(in.data(), size_t(T * kHidden), 9);
    const int64_t rows = T * kTopK;
    gathered = Buffer<float>(size_t(rows * kHidden));
    h1 = Buffer<float>(size_t(rows * 2 * kInter));
    act = Buffer<float>(size_t(rows * kInter));
    out = Buffer<float>(size_t(rows * kHidden));
    offsets.assign(size_t(E + 1), 0);
    for (int64_t i = 0; i < rows; ++i) offsets[size_t(route[size_t(i)] + 1)]++;
    std::partial_sum(offsets.begin(), offsets.end(), offsets.begin());
    order.resize(static_cast<size_t>(rows));
    std::vector<int64_t> fill(offsets.begin(), offsets.end() - 1);
    for (int64_t i = 0; i < rows; ++i) order[size_t(fill[size_t(route[size_t(i)])]++)] = int32_t(i / kTopK);
  }
};

// Decode: one token, its 4 experts (a different draw each iteration, from a pool of E experts
// of one layer: the weights come from DRAM, as in decoding).
void BM_moe_decode(benchmark::State& s, const Options& opt, ModelShape m) {
  const int64_t E = opt.smoke ? kTopK : m.experts, steps = 256;
  auto d = cached<MoeData>(std::string("moe_decode/") + m.name + std::to_string(E),
                           [&] { return new MoeData(E, 1, steps); });
  if (!check_expert(s, d->x, d->route[0], d->in.data(), 1, 0)) return;
  int64_t step = 0;
  for (auto _ : s) {
    const int32_t* sel = d->route.data() + (step++ % steps) * kTopK;
    for (int64_t k = 0; k < kTopK; ++k)
      expert_mlp(d->x, sel[k], d->in.data(), 1, d->h1.data(), d->act.data(), d->out.data() + k * kHidden);
    benchmark::ClobberMemory();
  }
  count_bytes(s, kTopK * Experts::bytes_per_expert());
  count_flops(s, 2.0 * kTopK * 3 * kInter * kHidden);
}

// Prefill: T tokens grouped by expert; every expert with rows runs one GEMM pair on them.
void BM_moe_prefill(benchmark::State& s, const Options& opt, ModelShape m, int64_t T) {
  const int64_t E = opt.smoke ? kTopK : m.experts;
  auto d = cached<MoeData>(std::string("moe_prefill/") + m.name + std::to_string(E) + "/" + std::to_string(T),
                           [&] { return new MoeData(E, T, 0); });
  auto run = [&](int64_t only) {  // only >= 0: just that expert (for the check)
    for (int64_t e = 0; e < E; ++e) {
      const int64_t lo = d->offsets[size_t(e)], rows = d->offsets[size_t(e + 1)] - lo;
      if (rows == 0 || (only >= 0 && e != only)) continue;
      float* g = d->gathered.data() + lo * kHidden;
      for (int64_t j = 0; j < rows; ++j)
        std::memcpy(g + j * kHidden, d->in.data() + d->order[size_t(lo + j)] * kHidden, kHidden * sizeof(float));
      expert_mlp(d->x, e, g, rows, d->h1.data(), d->act.data(), d->out.data() + lo * kHidden);
    }
  };
  {  // check the busiest expert's last row
    int64_t busiest = 0;
    for (int64_t e = 1; e < E; ++e)
      if (d->offsets[size_t(e + 1)] - d->offsets[size_t(e)] > d->offsets[size_t(busiest + 1)] - d->offsets[size_t(busiest)])
        busiest = e;
    run(busiest);
    const int64_t lo = d->offsets[size_t(busiest)], rows = d->offsets[size_t(busiest + 1)] - lo;
    if (!check_expert(s, d->x, busiest, d->gathered.data() + lo * kHidden, rows, rows - 1)) return;
  }
  for (auto _ : s) {
    run(-1);
    benchmark::ClobberMemory();
  }
  count_flops(s, 2.0 * T * kTopK * 3 * kInter * kHidden);
  s.counters["tokens/s"] = benchmark::Counter(double(T), benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace

void register_matmul(const Options& opt) {
  // Decode (T = 1): every dense matrix of a layer and the unembedding, smallest first.
  std::vector<DenseShape> gemv = {{"attn.kv", kKvDim, kHidden},       {"router.20b", 32, kHidden},
                                  {"router.120b", 128, kHidden},       {"attn.q", kQDim, kHidden},
                                  {"attn.out", kHidden, kQDim},        {"unembed", kVocab, kHidden}};
  std::vector<DenseShape> gemm = {{"attn.q", kQDim, kHidden}, {"attn.out", kHidden, kQDim}};
  std::vector<int64_t> prefill_T = {512, 2048};
  if (opt.smoke) {
    gemv.resize(1);
    gemm.resize(1);
    prefill_T = {16};
  }
  for (const auto& sh : gemv)
    add(opt, "gemv_bf16/" + sh.name, BM_bf16, opt, sh, int64_t(1));
  for (const auto& sh : gemm)
    for (int64_t T : prefill_T)
      add(opt, "gemm_bf16/" + sh.name + "/T:" + std::to_string(T), BM_bf16, opt, sh, T);
  for (const ModelShape& m : kModels) {
    if (opt.smoke && &m != &kModels[0]) break;
    add(opt, std::string("moe_decode_mxfp4/") + m.name, BM_moe_decode, opt, m);
    for (int64_t T : prefill_T)
      add(opt, std::string("moe_prefill_mxfp4/") + m.name + "/T:" + std::to_string(T),
                                   BM_moe_prefill, opt, m, T);
  }
}

}  // namespace gptoss::bench
