// End-to-end benchmark of the C++ engine (csrc/engine_core.h on the CPU runner) on a checkpoint directory, without
// Python: prefill, batch-1 decode and batched decode, in tokens/s and as a fraction of the
// machine's limits (batch-1 decode: bytes of active weights + KV cache per token against the
// read bandwidth; prefill: FLOPs against the FMA peak), the same models as bench/bench_cpu.py
// uses, so the two can be compared to tell engine time from binding time.
//
//   gptoss_bench_e2e --gptoss_checkpoint=DIR [--gptoss_prompt=512] [--gptoss_context=64]
//                    [--gptoss_batch=1,8] [--gptoss_threads=N] [--gptoss_logits_out=FILE]
//                    [--gptoss_prefill_iters=3] [--gptoss_decode_iters=32]
//                    [--gptoss_precision=fp32|bf16] [--gptoss_smoke] [Google Benchmark flags]
//
// Before timing, the engine's logits are checked for consistency: the last row of an
// all-logits prefill of 8 tokens must match 7 tokens of prefill followed by one decode step
// (different kernel paths: GEMM vs GEMV, prefill vs decode attention). --gptoss_logits_out
// writes that prefill's 8 token ids (int32) and then its logits (float32, row-major [8, vocab])
// for an outside comparison (tests/test_cpp_bench.py compares them with gptoss.Model).
#include <cmath>
#include <cstdio>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "bench_util.h"
#include "checkpoint_dir.h"
#include "common.h"
#include "cpu_runner.h"

namespace gptoss::bench {
namespace {

struct Setup {
  std::unique_ptr<EngineCore> engine;
  int64_t file_bytes = 0;
  std::string invalid;  // why the consistency check failed ("" = passed)
};
Setup g;

std::vector<int32_t> tokens_for(int64_t n, int64_t vocab, uint64_t seed) {
  Rng r(seed);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = int32_t(r.next() % uint64_t(vocab));
  return t;
}

// Bytes one batch-1 decode step reads at `context` (bench_cpu.py's decode_bytes).
double decode_bytes(const ModelConfig& c, int64_t context) {
  const double H = double(c.hidden), I = double(c.inter), E = double(c.n_experts), k = double(c.top_k);
  const double Q = double(c.q_dim()), KV = double(c.kv_dim());
  const double attn = 2 * (H * (Q + 2 * KV) + (Q + 2 * KV)) + 2 * (Q * H + H) + 2 * double(c.n_heads);
  const double norms = 2 * 2 * H, router = 2 * (E * H + E);
  const double mlp1 = 2 * I * H / 32 * 17 + 2 * 2 * I, mlp2 = H * I / 32 * 17 + 2 * H;
  const double per_layer = attn + norms + router + k * (mlp1 + mlp2);
  double kv = 0;
  for (int64_t l = 0; l < c.n_layers; ++l)
    kv += 2.0 * double(c.sliding[size_t(l)] ? std::min(context, c.window) : context) * KV * 4;
  return double(c.n_layers) * per_layer + kv + 2 * H * double(c.vocab) + 2 * H;
}

// FLOPs of a prefill of n tokens, logits for the last one only (bench_cpu.py's prefill_flops).
double prefill_flops(const ModelConfig& c, int64_t n) {
  const double H = double(c.hidden), I = double(c.inter), k = double(c.top_k);
  const double Q = double(c.q_dim()), KV = double(c.kv_dim());
  const double dense = H * (Q + 2 * KV) + Q * H + double(c.n_experts) * H + k * (2 * I * H + H * I);
  double f = 2.0 * dense * double(n) * double(c.n_layers);
  for (int64_t l = 0; l < c.n_layers; ++l) {
    double keys = 0;
    for (int64_t i = 0; i < n; ++i) keys += double(c.sliding[size_t(l)] ? std::min(i + 1, c.window) : i + 1);
    f += 2.0 * 2 * double(c.n_heads) * double(c.head_dim) * keys;
  }
  return f + 2.0 * H * double(c.vocab);
}

// The consistency check described at the top; returns "" or what failed.
std::string check_engine(EngineCore& e, const std::string& logits_out) {
  const int64_t V = e.config().vocab, n = 8;
  const std::vector<int32_t> t = tokens_for(n, V, 1);
  std::vector<float> all(size_t(n * V)), last(static_cast<size_t>(V));
  const int64_t a = e.new_sequence();
  e.step({{a, t.data(), n, true}}, all.data());
  e.free_sequence(a);
  const int64_t b = e.new_sequence();
  e.step({{b, t.data(), n - 1, false}}, last.data());
  e.step({{b, t.data() + n - 1, 1, false}}, last.data());
  e.free_sequence(b);
  if (!logits_out.empty()) {
    FILE* f = std::fopen(logits_out.c_str(), "wb");
    const bool ok = f && std::fwrite(t.data(), sizeof(int32_t), t.size(), f) == t.size() &&
                    std::fwrite(all.data(), sizeof(float), all.size(), f) == all.size();
    if (f) std::fclose(f);
    if (!ok) return "cannot write " + logits_out;
  }
  double ss = 0, worst = 0;
  const float* ref = all.data() + (n - 1) * V;
  for (int64_t i = 0; i < V; ++i) {
    if (!std::isfinite(ref[i]) || !std::isfinite(last[size_t(i)])) return "non-finite logits";
    ss += double(ref[i]) * ref[i];
    worst = std::max(worst, std::fabs(double(ref[i]) - last[size_t(i)]));
  }
  const double rms = std::sqrt(ss / double(V));
  if (!(rms > 0) || worst > 1e-3 * rms + 1e-5) {
    std::ostringstream m;
    m << "decode logits differ from prefill logits by " << worst << " (rms " << rms << ")";
    return m.str();
  }
  return "";
}

void BM_prefill(benchmark::State& s, int64_t n) {
  if (!g.invalid.empty()) return s.SkipWithError(("validation failed: " + g.invalid).c_str());
  EngineCore& e = *g.engine;
  const std::vector<int32_t> t = tokens_for(n, e.config().vocab, 2);
  std::vector<float> logits(size_t(e.config().vocab));
  for (auto _ : s) {
    const int64_t seq = e.new_sequence();
    e.step({{seq, t.data(), n, false}}, logits.data());
    e.free_sequence(seq);
  }
  s.counters["tokens/s"] = benchmark::Counter(double(n), benchmark::Counter::kIsIterationInvariantRate);
  count_flops(s, prefill_flops(e.config(), n));
}

// `batch` sequences of `context` tokens each advance by one token per iteration; each is then
// rewound to `context`, so every step runs at the same context length.
void BM_decode(benchmark::State& s, int64_t batch, int64_t context) {
  if (!g.invalid.empty()) return s.SkipWithError(("validation failed: " + g.invalid).c_str());
  EngineCore& e = *g.engine;
  const int64_t V = e.config().vocab;
  std::vector<int64_t> seqs;
  std::vector<std::vector<int32_t>> next;
  std::vector<float> logits(size_t(batch * V));
  for (int64_t b = 0; b < batch; ++b) {
    seqs.push_back(e.new_sequence());
    const std::vector<int32_t> p = tokens_for(context, V, 10 + uint64_t(b));
    e.step({{seqs.back(), p.data(), context, false}}, logits.data());
    next.push_back(tokens_for(1, V, 100 + uint64_t(b)));
  }
  std::vector<StepItem> items;
  for (int64_t b = 0; b < batch; ++b) items.push_back({seqs[size_t(b)], next[size_t(b)].data(), 1, false});
  for (auto _ : s) {
    e.step(items, logits.data());
    s.PauseTiming();
    for (int64_t q : seqs) e.truncate(q, context);
    s.ResumeTiming();
  }
  for (int64_t q : seqs) e.free_sequence(q);
  s.counters["tokens/s"] = benchmark::Counter(double(batch), benchmark::Counter::kIsIterationInvariantRate);
  if (batch == 1) count_bytes(s, decode_bytes(e.config(), context + 1));
}

std::vector<int64_t> int_list(const std::string& s) {
  std::vector<int64_t> r;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) r.push_back(std::stoll(item));
  return r;
}

}  // namespace
}  // namespace gptoss::bench

int main(int argc, char** argv) {
  using namespace gptoss;
  using namespace gptoss::bench;
  const Options opt = parse_options(&argc, argv);
  const std::string dir = take_flag(&argc, argv, "gptoss_checkpoint", "");
  const int64_t prompt = std::stoll(take_flag(&argc, argv, "gptoss_prompt", opt.smoke ? "16" : "512"));
  const int64_t context = std::stoll(take_flag(&argc, argv, "gptoss_context", opt.smoke ? "16" : "64"));
  const std::vector<int64_t> batches = int_list(take_flag(&argc, argv, "gptoss_batch", opt.smoke ? "1,2" : "1,8"));
  const int threads = std::stoi(take_flag(&argc, argv, "gptoss_threads", "0"));
  const std::string logits_out = take_flag(&argc, argv, "gptoss_logits_out", "");
  const int64_t prefill_iters = std::stoll(take_flag(&argc, argv, "gptoss_prefill_iters", "3"));
  const int64_t decode_iters = std::stoll(take_flag(&argc, argv, "gptoss_decode_iters", "32"));
  const std::string precision = take_flag(&argc, argv, "gptoss_precision", "fp32");
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  if (dir.empty()) {
    std::fprintf(stderr, "usage: %s --gptoss_checkpoint=DIR [--gptoss_prompt=N] [--gptoss_context=N] "
                 "[--gptoss_batch=1,8] [--gptoss_threads=N] [--gptoss_logits_out=FILE] [--gptoss_prefill_iters=3] "
                 "[--gptoss_decode_iters=32] [--gptoss_precision=fp32|bf16] [--gptoss_smoke] "
                 "[benchmark flags]\n", argv[0]);
    return 2;
  }
  try {
    CheckpointDir ck = open_checkpoint_dir(dir, std::max<int64_t>(4096, prompt + context + 64));
    EngineOptions eo;
    eo.threads = threads;
    eo.kv.prefix_cache = false;  // every prefill is computed, none is served from the cache
    if (precision != "fp32" && precision != "bf16") throw std::invalid_argument("--gptoss_precision: fp32 or bf16");
    eo.precision = precision == "bf16" ? cpu::Precision::Bf16 : cpu::Precision::Fp32;
    g.file_bytes = ck.file_bytes;
    g.engine = make_cpu_engine(std::move(ck.config), std::move(ck.tensors), "hf", eo);
    g.invalid = check_engine(*g.engine, logits_out);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", dir.c_str(), e.what());
    return 1;
  }
  if (!g.invalid.empty()) std::fprintf(stderr, "validation failed: %s\n", g.invalid.c_str());
  const ModelConfig& c = g.engine->config();
  benchmark::AddCustomContext("checkpoint", dir);
  benchmark::AddCustomContext("precision", g.engine->runner().precision());
  benchmark::AddCustomContext("checkpoint_GB", std::to_string(double(g.file_bytes) / 1e9));
  benchmark::AddCustomContext("layers_experts_vocab", std::to_string(c.n_layers) + "/" + std::to_string(c.n_experts) +
                                                          "/" + std::to_string(c.vocab));
  // Fixed iteration counts: a step of a full-size model takes 0.1-20 s, and the decode
  // benchmark's set-up (prefilling every sequence) would be repeated by each sizing run.
  add(opt, "e2e_prefill/T:" + std::to_string(prompt), BM_prefill, prompt)->Iterations(opt.smoke ? 1 : prefill_iters);
  for (int64_t b : batches)
    add(opt, "e2e_decode/batch:" + std::to_string(b) + "/ctx:" + std::to_string(context), BM_decode, b, context)
        ->Iterations(opt.smoke ? 1 : decode_iters);
  measure_limits(opt);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return g.invalid.empty() ? 0 : 1;
}
