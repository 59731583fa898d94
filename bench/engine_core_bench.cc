// The engine core's own work per step (csrc/engine_core.h): validation, chunking, the StepPlan,
// the commit, on a runner that returns at once, at the gpt-oss-20b layout (24 layers
// alternating full / window attention, 16-token blocks): decode steps of B sequences, each
// `ctx` to ctx + 64 tokens deep; per_seq is the step's time over B. A GPU decodes a step in
// about a millisecond, which this must never hold back.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "bench_util.h"
#include "engine_core.h"
#include "kv_cache.h"
#include "runner.h"

namespace gptoss::bench {
namespace {

// Checks the plans it is given and computes nothing; its blocks hold one float each.
class NullRunner final : public Runner {
 public:
  explicit NullRunner(int64_t max_blocks) : pool_(1, max_blocks) {}
  const char* backend() const override { return "null"; }
  const char* precision() const override { return "fp32"; }
  BlockPool& kv_pool() override { return pool_; }
  bool supports(StepOutput) const override { return true; }
  void forward(const StepPlan& plan, const StepOutputs& out) override {
    rows = plan.rows();
    outputs = int64_t(plan.out_rows.size());
    decode = plan.decode;
    for (size_t i = 0; i < plan.out_rows.size(); ++i) out.tokens[plan.out_row0 + int64_t(i)] = 1;
  }
  int64_t rows = 0, outputs = 0;
  bool decode = false;

 private:
  HostBlockPool pool_;
};

ModelConfig config_20b() {
  ModelConfig c;
  c.n_layers = 24;
  c.vocab = kVocab;
  c.window = kWindow;
  c.max_context = int64_t(1) << 22;  // room for every iteration's token
  c.sliding.resize(24);
  for (int64_t l = 0; l < 24; ++l) c.sliding[size_t(l)] = l % 2 == 0;
  return c;
}

constexpr int64_t kRewindEvery = 64;

void BM_core_decode_step(benchmark::State& s, int64_t B, int64_t context) {
  auto runner_owned = std::make_unique<NullRunner>(int64_t(1) << 22);
  NullRunner* runner = runner_owned.get();
  KVOptions kv;
  kv.block_size = 16;
  EngineCore core(config_20b(), kv, std::move(runner_owned));
  std::vector<int64_t> seqs;
  std::vector<int32_t> prompt(static_cast<size_t>(context), 7), one(1, 9), tokens(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) seqs.push_back(core.new_sequence());
  StepOutputs out;
  out.kind = StepOutput::Argmax;
  out.tokens = tokens.data();
  for (int64_t b = 0; b < B; ++b) core.step({{seqs[size_t(b)], prompt.data(), context, false}}, out);
  std::vector<StepItem> items;
  for (int64_t b = 0; b < B; ++b) items.push_back({seqs[size_t(b)], one.data(), 1, false});
  core.step(items, out);
  if (runner->rows != B || runner->outputs != B || !runner->decode || core.length(seqs[0]) != context + 1) {
    s.SkipWithError("the null runner saw a wrong plan");
    return;
  }
  int64_t steps = 0;
  for (auto _ : s) {
    core.step(items, out);
    benchmark::ClobberMemory();
    if (++steps % kRewindEvery == 0) {  // back to the context, so that every step sees ~2k tokens
      s.PauseTiming();
      for (int64_t seq : seqs)
        if (!core.truncate(seq, context)) s.SkipWithError("could not rewind a sequence");
      s.ResumeTiming();
    }
  }
  // Seconds per sequence (shown with an SI prefix: "1.2u" is 1.2 us).
  s.counters["per_seq"] =
      benchmark::Counter(double(B), benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
}

}  // namespace

void register_engine_core(const Options& opt) {
  const int64_t cases[][2] = {{1, 2048}, {64, 2048}, {256, 2048}, {64, 32768}};
  for (const auto& c : cases)
    add(opt, "engine_core/decode_step/B" + std::to_string(c[0]) + "/ctx" + std::to_string(c[1]),
        BM_core_decode_step, c[0], c[1]);
}

}  // namespace gptoss::bench
