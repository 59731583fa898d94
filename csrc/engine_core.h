// The engine core, the same for every backend: the lock, the sequences and their KV block
// tables (SequenceTable, with the prefix cache), and the step loop that validates a batch, cuts
// it into chunks, turns each chunk into a StepPlan and hands it to the backend's Runner.
// Design: engine_core.md.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "kv_cache.h"
#include "model.h"
#include "runner.h"
#include "step_plan.h"

namespace gptoss {

// Every public method is safe to call from several threads: one lock serialises them (a step
// holds it for its whole duration).
class EngineCore {
 public:
  // The runner's pool stores the blocks; kv.max_chunk_tokens must not exceed what the runner's
  // buffers were sized for.
  EngineCore(ModelConfig cfg, KVOptions kv, std::unique_ptr<Runner> runner);
  ~EngineCore();
  EngineCore(const EngineCore&) = delete;
  EngineCore& operator=(const EngineCore&) = delete;

  const ModelConfig& config() const { return cfg_; }
  const char* backend() const { return runner_->backend(); }
  bool supports(StepOutput kind) const { return runner_->supports(kind); }

  int64_t new_sequence();
  // A new sequence holding the longest cached prefix of `tokens` (at most all but the last);
  // *reused: how many tokens it holds already (see SequenceTable::create_from_cache).
  int64_t new_sequence_from_cache(const std::vector<int32_t>& tokens, int64_t* reused);
  PrefixCacheStats prefix_cache_stats() const;
  void clear_prefix_cache();
  int64_t fork(int64_t seq);
  void free_sequence(int64_t seq);
  // Rewinds `seq` to its first n tokens; false (nothing changed) when the window layers no
  // longer hold what position n needs.
  bool truncate(int64_t seq, int64_t n);
  int64_t length(int64_t seq) const;
  std::vector<int32_t> tokens(int64_t seq) const;
  bool has_sequence(int64_t seq) const;
  int64_t num_sequences() const;
  // KV cache blocks: [used, allocated, cap] of the full pool, then of the window pool.
  std::vector<int64_t> kv_stats() const;
  // Tokens per forward chunk from now on, at most the constructed max_chunk_tokens.
  void set_max_chunk_tokens(int64_t n);

  // Advances every item's sequence by its tokens and writes the outputs `out` asks for (see
  // StepOutputs). Validates everything before touching any state, so a bad call changes nothing.
  //
  // `interrupted`, if given, is polled between chunks (long prompts run as several chunks);
  // when it returns true or throws, the step stops there: every sequence keeps the tokens
  // already processed (its length and tokens() say how far it got) and the exception, or
  // Interrupted, propagates. A Sample step whose row has nothing to sample (every logit masked)
  // keeps the step and then throws InvalidArgument.
  void step(const std::vector<StepItem>& items, const StepOutputs& out,
            const std::function<bool()>& interrupted = nullptr);
  // The logits of every output row (logits_rows(items) x vocab floats).
  void step(const std::vector<StepItem>& items, float* logits) {
    StepOutputs out;
    out.logits = logits;
    step(items, out);
  }
  static int64_t logits_rows(const std::vector<StepItem>& items) { return SequenceTable::logits_rows(items); }

  // The runner, under the engine lock: for reconfiguring it between steps.
  template <class F>
  decltype(auto) with_runner(F&& f) {
    std::lock_guard<std::mutex> g(mu_);
    runner_->enter();
    return f(*runner_);
  }
  // The runner without the lock: only for what never changes (its type, constant facts).
  const Runner& runner() const { return *runner_; }

 private:
  void check_outputs(const std::vector<StepItem>& items, const StepOutputs& out) const;
  void plan_chunk(const std::vector<Chunk>& chunks);

  ModelConfig cfg_;
  std::unique_ptr<Runner> runner_;                 // owns the blocks' storage: destroyed last
  std::unique_ptr<PoolView> full_pool_, win_pool_;
  std::unique_ptr<SequenceTable> seqs_;            // after the pools: destroyed first
  StepPlan plan_;                                  // the current chunk's, its buffers reused
  mutable std::mutex mu_;
};

}  // namespace gptoss
