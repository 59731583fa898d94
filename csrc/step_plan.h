// What a batched step asks for, and the plan of one forward chunk that a runner executes.
// Plain C++ (no backend types): the CPU runner reads the plan directly, the CUDA runner
// serialises it into its device metadata. Design: csrc/engine_core.md.
#pragma once

#include <cstdint>
#include <vector>

namespace gptoss {

// One entry of a batched step: run `n` tokens of sequence `seq`, return the output of the last
// token only, or of every token (logits only).
struct StepItem {
  int64_t seq;
  const int32_t* tokens;
  int64_t n;
  bool all_logits;
};

// What a step returns per output row.
enum class StepOutput : int32_t {
  Logits = 0,  // the raw logits (vocab floats)
  Argmax = 1,  // the greedy next token
  Sample = 2,  // a token drawn with the row's SampleParams
};

// One row's sampling parameters (python/gptoss/sampling.py steps 4-8 with the draw given).
// Copied as it is into device memory: 4-byte fields only.
struct SampleParams {
  float temperature;  // 0 = greedy
  int32_t top_k;      // <= 0: off
  float top_p;        // 1: off
  float min_p;        // 0: off
  float u;            // the uniform number in [0, 1) of the draw
  int32_t vocab_limit;  // <= 0: the whole vocabulary
};
static_assert(sizeof(SampleParams) == 24, "SampleParams is copied as six 4-byte words");

// Sampling penalties (sampling.py steps 1-3, applied before the draw) as a CSR over the step's
// items: item i's entries are [off[i], off[i+1]) of id (distinct within an item) and val (3 per
// entry: the repetition penalty or 1, the presence + frequency amount to subtract, the bias).
struct Penalties {
  std::vector<int32_t> off, id;
  std::vector<float> val;
};

// The most top log-probabilities a step returns per row (the OpenAI API's limit).
constexpr int32_t kMaxTopLogprobs = 20;

// Where a step's results go (host memory). Rows are numbered in item order: n rows for an
// all_logits item, else one (Argmax and Sample steps: one per item, all_logits is ignored).
struct StepOutputs {
  StepOutput kind = StepOutput::Logits;
  float* logits = nullptr;                 // Logits: [rows, vocab]
  int32_t* tokens = nullptr;               // Argmax, Sample: [items]
  const SampleParams* params = nullptr;    // Sample: [items]
  const Penalties* penalties = nullptr;    // Sample, optional (null or no entries: none)
  // Sample: log-probabilities of the raw logits, `logprobs` < 0: none; else chosen_lp[item] and
  // the `logprobs` most likely ids and theirs in top_ids / top_lp[item * logprobs + j], over the
  // first logprob_vocab_limit ids (<= 0: all).
  int32_t logprobs = -1, logprob_vocab_limit = 0;
  float* chosen_lp = nullptr;
  int32_t* top_ids = nullptr;
  float* top_lp = nullptr;
};

// One sequence's run of tokens inside a forward chunk.
struct PlanRun {
  int64_t seq;
  int32_t first_row;  // its first row in the chunk
  int32_t n;          // its tokens: rows first_row .. first_row + n - 1, positions pos0 ..
  int32_t pos0;
  int32_t full_off, win_off;  // its block tables: StepPlan::full_tables / win_tables from here
  bool all_logits;    // every row gives an output
  bool last_of_item;  // the run ends its item: its last row gives an output
};

// One forward chunk: a ragged batch of runs from distinct sequences, their KV blocks already
// reserved for the new positions. A runner computes every layer for its rows, stores their K/V
// at (table, position) and writes the outputs of `out_rows`; the core then commits the tokens.
struct StepPlan {
  std::vector<PlanRun> runs;
  std::vector<int32_t> tokens;     // [T] the rows' token ids
  std::vector<int32_t> positions;  // [T] their positions
  std::vector<int32_t> full_tables, win_tables;  // the runs' block tables, one after another
  std::vector<int32_t> out_rows;   // chunk rows with an output, in output order
  int64_t out_row0 = 0;            // the step's output row of out_rows[0] (the rows are consecutive)
  bool decode = false;             // one token per run, each with an output (a decode step)
  int64_t rows() const { return int64_t(tokens.size()); }
};

}  // namespace gptoss
