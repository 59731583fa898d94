#include "engine_core.h"

#include <cmath>
#include <string>

#include "common.h"

namespace gptoss {

EngineCore::EngineCore(ModelConfig cfg, KVOptions kv, std::unique_ptr<Runner> runner)
    : cfg_(std::move(cfg)), runner_(std::move(runner)) {
  bool any_full = false, any_win = false;
  for (uint8_t s : cfg_.sliding) (s ? any_win : any_full) = true;
  BlockPool& pool = runner_->kv_pool();
  full_pool_ = std::make_unique<PoolView>(pool, any_full);
  win_pool_ = std::make_unique<PoolView>(pool, any_win);
  seqs_ = std::make_unique<SequenceTable>(cfg_, kv, *full_pool_, *win_pool_);
}

EngineCore::~EngineCore() {
  std::lock_guard<std::mutex> g(mu_);
  try {
    runner_->enter();  // a device runner's blocks go back on its own device
  } catch (...) {
  }
  seqs_.reset();
}

int64_t EngineCore::new_sequence() {
  std::lock_guard<std::mutex> g(mu_);
  return seqs_->create();
}

int64_t EngineCore::new_sequence_from_cache(const std::vector<int32_t>& tokens, int64_t* reused) {
  std::lock_guard<std::mutex> g(mu_);
  return seqs_->create_from_cache(tokens.data(), int64_t(tokens.size()), reused);
}

PrefixCacheStats EngineCore::prefix_cache_stats() const {
  std::lock_guard<std::mutex> g(mu_);
  return seqs_->prefix_cache_stats();
}

void EngineCore::clear_prefix_cache() {
  std::lock_guard<std::mutex> g(mu_);
  seqs_->clear_prefix_cache();
}

int64_t EngineCore::fork(int64_t seq) {
  std::lock_guard<std::mutex> g(mu_);
  return seqs_->fork(seq);
}

void EngineCore::free_sequence(int64_t seq) {
  std::lock_guard<std::mutex> g(mu_);
  seqs_->free(seq);
}

bool EngineCore::truncate(int64_t seq, int64_t n) {
  std::lock_guard<std::mutex> g(mu_);
  return seqs_->truncate(seq, n);
}

int64_t EngineCore::length(int64_t seq) const {
  std::lock_guard<std::mutex> g(mu_);
  return seqs_->at(seq).len;
}

std::vector<int32_t> EngineCore::tokens(int64_t seq) const {
  std::lock_guard<std::mutex> g(mu_);
  return seqs_->at(seq).tokens;
}

bool EngineCore::has_sequence(int64_t seq) const {
  std::lock_guard<std::mutex> g(mu_);
  return seqs_->contains(seq);
}

int64_t EngineCore::num_sequences() const {
  std::lock_guard<std::mutex> g(mu_);
  return seqs_->size();
}

std::vector<int64_t> EngineCore::kv_stats() const {
  std::lock_guard<std::mutex> g(mu_);
  return seqs_->stats();
}

void EngineCore::set_max_chunk_tokens(int64_t n) {
  std::lock_guard<std::mutex> g(mu_);
  seqs_->set_max_chunk_tokens(n);
}

// The arguments of the outputs asked for, checked before anything runs.
void EngineCore::check_outputs(const std::vector<StepItem>& items, const StepOutputs& out) const {
  GPTOSS_CHECK_ARG(runner_->supports(out.kind),
                   std::string("this engine's runner (") + runner_->backend() +
                       ") returns logits only: sample or take the argmax from them");
  switch (out.kind) {
    case StepOutput::Logits:
      GPTOSS_CHECK_ARG(out.logits != nullptr || items.empty(), "step: no buffer for the logits");
      return;
    case StepOutput::Argmax:
      GPTOSS_CHECK_ARG(out.tokens != nullptr || items.empty(), "step_argmax: no buffer for the tokens");
      return;
    case StepOutput::Sample:
      break;
  }
  GPTOSS_CHECK_ARG(out.tokens != nullptr || items.empty(), "step_sample: no buffer for the tokens");
  GPTOSS_CHECK_ARG(out.params != nullptr || items.empty(), "step_sample: one set of sampling parameters per item");
  if (const Penalties* q = out.penalties) {
    GPTOSS_CHECK_ARG(q->off.size() == items.size() + 1 && q->off.front() == 0 &&
                         q->off.back() == int32_t(q->id.size()) && q->val.size() == 3 * q->id.size(),
                     "penalties: off [items + 1] from 0 to len(id), val [3 * len(id)]");
    for (size_t i = 0; i + 1 < q->off.size(); ++i)
      GPTOSS_CHECK_ARG(q->off[i] <= q->off[i + 1], "penalties: off must not decrease");
    for (int32_t v : q->id)
      GPTOSS_CHECK_ARG(v >= 0 && v < cfg_.vocab,
                       "penalties: token id " + std::to_string(v) + " outside the vocabulary");
    for (size_t e = 0; e < q->id.size(); ++e)
      GPTOSS_CHECK_ARG(q->val[3 * e] > 0.f && std::isfinite(q->val[3 * e]) && std::isfinite(q->val[3 * e + 1]) &&
                           std::isfinite(q->val[3 * e + 2]),
                       "penalties: repetition penalty > 0, finite amounts");
  }
  GPTOSS_CHECK_ARG(out.logprobs >= -1 && out.logprobs <= kMaxTopLogprobs,
                   "logprobs: at most 20 top log-probabilities");
  for (size_t i = 0; i < items.size(); ++i) {
    const SampleParams& q = out.params[i];
    GPTOSS_CHECK_ARG(std::isfinite(q.temperature) && q.temperature >= 0.f, "temperature must be finite and >= 0");
    GPTOSS_CHECK_ARG(q.top_p > 0.f && q.top_p <= 1.f, "top_p must be in (0, 1]");
    GPTOSS_CHECK_ARG(q.min_p >= 0.f && q.min_p <= 1.f, "min_p must be in [0, 1]");
    GPTOSS_CHECK_ARG(q.u >= 0.f && q.u < 1.f, "u must be in [0, 1)");
  }
  if (out.logprobs >= 0) {
    GPTOSS_CHECK_ARG(out.chosen_lp && (out.logprobs == 0 || (out.top_ids && out.top_lp)),
                     "logprobs: output buffers missing");
    for (size_t i = 0; i < items.size(); ++i)
      GPTOSS_CHECK_ARG(out.params[i].vocab_limit == out.params[0].vocab_limit,
                       "logprobs: one vocab_limit for every item");
  }
}

void EngineCore::step(const std::vector<StepItem>& items_in, const StepOutputs& out_in,
                      const std::function<bool()>& interrupted) {
  check_outputs(items_in, out_in);
  StepOutputs out = out_in;
  std::vector<StepItem> items = items_in;
  if (out.kind != StepOutput::Logits) {
    for (auto& it : items) it.all_logits = false;  // one output row per item
    if (out.penalties && out.penalties->id.empty()) out.penalties = nullptr;
    if (out.logprobs >= 0) out.logprob_vocab_limit = items.empty() ? 0 : out.params[0].vocab_limit;
  }
  {
    std::lock_guard<std::mutex> g(mu_);
    runner_->enter();
    seqs_->validate(items);  // a rejected call changes nothing
    bool first = true;
    seqs_->for_each_chunk(items, [&](const std::vector<Chunk>& chunks) {
      if (!first && interrupted && interrupted()) throw Interrupted("step interrupted between chunks");
      first = false;
      plan_chunk(chunks);
      runner_->forward(plan_, out);
      for (const auto& ch : chunks) seqs_->commit(ch);
    });
  }
  if (out.kind == StepOutput::Sample)
    for (size_t i = 0; i < items.size(); ++i)
      if (out.tokens[i] < 0) throw InvalidArgument("no token can be sampled: every logit is -inf or masked");
}

// Reserves the chunk's KV blocks (copying shared ones first) and fills plan_ from its runs.
void EngineCore::plan_chunk(const std::vector<Chunk>& chunks) {
  StepPlan& p = plan_;
  p.runs.clear();
  p.tokens.clear();
  p.positions.clear();
  p.full_tables.clear();
  p.win_tables.clear();
  p.out_rows.clear();
  p.out_row0 = 0;
  p.decode = true;
  bool have_out = false;
  int32_t r = 0;
  for (const auto& ch : chunks) {
    SequenceState& s = seqs_->at(ch.seq);
    seqs_->reserve(s, s.len + ch.n);
    const int32_t n = int32_t(ch.n), pos0 = int32_t(s.len);
    p.runs.push_back(PlanRun{ch.seq, r, n, pos0, int32_t(p.full_tables.size()), int32_t(p.win_tables.size()),
                             ch.all_logits, ch.last_of_item});
    p.full_tables.insert(p.full_tables.end(), s.full_table.begin(), s.full_table.end());
    p.win_tables.insert(p.win_tables.end(), s.win_table.begin(), s.win_table.end());
    p.tokens.insert(p.tokens.end(), ch.tokens, ch.tokens + ch.n);
    for (int32_t i = 0; i < n; ++i) p.positions.push_back(pos0 + i);
    if (ch.all_logits || ch.last_of_item) {
      if (!have_out) p.out_row0 = ch.out_row;
      have_out = true;
      if (ch.all_logits)
        for (int32_t i = 0; i < n; ++i) p.out_rows.push_back(r + i);
      else
        p.out_rows.push_back(r + n - 1);
    }
    p.decode = p.decode && n == 1 && ch.last_of_item;
    r += n;
  }
}

}  // namespace gptoss
