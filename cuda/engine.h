// The gpt-oss model on a CUDA device: the same API and semantics as gptoss::Engine (model.h):
// sequences in a paged KV cache with copy-on-write forks, truncation, ragged batched steps
// that validate everything before touching any state. Weights are uploaded once as stored
// (bf16 matrices, packed MXFP4 experts; small vectors as fp32) or generated on the device
// (synthetic models); the KV cache lives in device memory (fp32 by default, bf16 optional).
//
// Plain C++ header (no CUDA types): included by the pybind11 module compiled by the host
// compiler. Errors are the gptoss exception types of csrc/common.h; CUDA failures that are not
// out-of-memory are std::runtime_error.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "model.h"

namespace gptoss::cuda {

// Number of usable CUDA devices; 0 when there is no driver or no device (never throws).
int device_count() noexcept;
// "name (sm_XY, N GiB)" of a device, or "" if unavailable.
std::string device_description(int device);

struct CudaEngineOptions {
  int64_t block_size = 16;
  int64_t kv_cache_bytes = 0;     // cap on the KV cache; 0 = most of the free device memory
  int64_t window_retain = 256;
  int64_t max_chunk_tokens = 512;
  bool prefix_cache = true;       // keep full KV blocks for later sequences (csrc/prefix_cache.h)
  int device = 0;
  bool kv_bf16 = false;           // KV cache in bf16 (half the memory) instead of fp32
  bool graphs = true;             // replay decode steps from captured CUDA graphs
  bool tc_split = true;           // tensor-core GEMMs with hi/lo activations (fp32-level); false: bf16
  int gemm_tiles = 0;             // tensor-core block tile (GemmTiles): 0 = chosen per launch
  bool pdl = false;               // programmatic dependent launch between kernels (sm_90+)
  bool pdl_prefetch = true;       // with pdl: weight-streaming kernels prefetch into L2 before waiting
  bool fuse_qkv_rope = true;      // decode steps: QKV projection, RoPE and KV store in one kernel
  // Steps of up to this many tokens run the experts on the GEMV path; -1: while the pairs average
  // at most 8 per expert (8 E / k tokens, at least 8; gpt-oss-20b 64, 120b 256).
  int moe_gemv_tokens = -1;
};

// Every public method is safe to call from several threads (one lock serialises them).
class CudaEngine {
 public:
  // Weights from a checkpoint (or in-memory arrays), uploaded to the device once.
  CudaEngine(ModelConfig cfg, std::unique_ptr<TensorSource> src, const std::string& layout, CudaEngineOptions opt);
  // Random weights generated directly on the device (no host copy), with the magnitudes of
  // python/gptoss/synthetic.py; deterministic in `seed` (but not equal to the host generator).
  CudaEngine(ModelConfig cfg, uint64_t seed, CudaEngineOptions opt);
  ~CudaEngine();
  CudaEngine(const CudaEngine&) = delete;
  CudaEngine& operator=(const CudaEngine&) = delete;

  const ModelConfig& config() const;
  int64_t new_sequence();
  int64_t new_sequence_from_cache(const std::vector<int32_t>& tokens, int64_t* reused);
  PrefixCacheStats prefix_cache_stats() const;
  void clear_prefix_cache();
  int64_t fork(int64_t seq);
  void free_sequence(int64_t seq);
  bool truncate(int64_t seq, int64_t n);
  int64_t length(int64_t seq) const;
  std::vector<int32_t> tokens(int64_t seq) const;
  bool has_sequence(int64_t seq) const;
  int64_t num_sequences() const;

  // Same contract as Engine::step: logits rows into host memory `out`.
  // `interrupted`, if given, is polled between the chunks of a long step (Ctrl-C; it may throw).
  void step(const std::vector<StepItem>& items, float* out, const std::function<bool()>& interrupted = nullptr);
  int64_t logits_rows(const std::vector<StepItem>& items) const;
  // Greedy decoding: the argmax token after each item's last token (computed on the device,
  // only the token ids are copied back). all_logits is ignored.
  void step_argmax(const std::vector<StepItem>& items, int32_t* out,
                   const std::function<bool()>& interrupted = nullptr);
  // Sampling on the device (cuda/sampling.cu): one token per item drawn with params[item]; only
  // the token ids are copied back. The sequences keep the step even if a row has nothing to
  // sample (every logit masked: InvalidArgument after the step).
  struct SampleParams {
    float temperature;  // 0 = greedy
    int top_k;          // <= 0: off
    float top_p;        // 1: off
    float min_p;        // 0: off
    float u;            // the uniform number in [0, 1) of the draw
    int vocab_limit;    // <= 0: the whole vocabulary
  };
  // logprobs >= 0 (at most 20): also the log-probabilities of the raw logits (sampling.py's
  // Sampler._with_logprobs): chosen_lp[item], and the `logprobs` most likely ids and theirs in
  // top_ids / top_lp[item * logprobs + j]; every item must then have the same vocab_limit.
  // penalties (sampling.py steps 1-3, applied before the draw; the logprobs see the raw logits):
  // item i's entries are [off[i], off[i+1]) of id (distinct within an item) and val (3 per
  // entry: the repetition penalty or 1, the presence + frequency amount to subtract, the bias).
  // Steps with penalties replay graphs too (one per power-of-two room for the entries).
  struct Penalties {
    std::vector<int32_t> off, id;
    std::vector<float> val;
  };
  void step_sample(const std::vector<StepItem>& items, const std::vector<SampleParams>& params, int32_t* out,
                   const std::function<bool()>& interrupted = nullptr, int logprobs = -1,
                   float* chosen_lp = nullptr, int32_t* top_ids = nullptr, float* top_lp = nullptr,
                   const Penalties* penalties = nullptr);

  std::vector<int64_t> kv_stats() const;
  // Device memory in bytes: weights, kv_cache, workspace, used (total - free, whole device),
  // total; and the KV element size.
  std::map<std::string, double> memory_info() const;
  // Device bytes this model would take, without a device: weights, workspace (activations,
  // logits, ...), KV cache per token of capacity (the pools of both layer kinds grow in step) and
  // the most a sequence's window layers hold (window + window_retain + a chunk).
  static std::map<std::string, double> memory_plan(ModelConfig cfg, CudaEngineOptions opt);
  std::string device_name() const;
  // CUDA graphs: {captured, launches, cached}; turning them off drops the cached ones.
  std::vector<int64_t> graph_stats() const;
  void set_graphs(bool enabled);
  // Tokens per forward chunk from now on, at most the constructed max_chunk_tokens (benchmarks).
  void set_max_chunk_tokens(int64_t n);
  // Tensor-core GEMMs (prefill, batches over 8) and prefill attention on bf16 operands (one MMA
  // instead of two or three, ~3e-3 relative error) or, by default, hi/lo operands (fp32-level);
  // drops the cached graphs.
  void set_tc_split(bool split);
  // Forces one tensor-core tile shape (1: 64x64, 2: 64x128, 3: 128x128, 4: 32x128) or 0: auto
  // (benchmarks).
  void set_gemm_tiles(int tiles);
  // Programmatic dependent launch (each kernel launched while its predecessor finishes; sm_90+
  // only). Returns whether it is now in use.
  bool set_pdl(bool on, bool prefetch = true);
  // Decode steps of up to 2 rows: the QKV projection with RoPE and the KV store in one kernel
  // (on by default), or the two kernels of longer steps (to compare).
  void set_fuse_qkv_rope(bool on);
  // Steps of up to n tokens run the experts on the decode GEMV (8 pairs of an expert per
  // weight read), longer ones on the tensor-core GEMM (32-128 pairs per read).
  void set_moe_gemv_tokens(int n);
  int moe_gemv_tokens() const;
  // Whether this GPU can run the experts' decode GEMV (its tensor cores take fp16 subnormal
  // inputs); where not, set_moe_gemv_tokens keeps 0 and every step uses the tensor-core GEMM.
  bool moe_gemv_available() const;
  // Profiling (benchmarks): an event after each kernel group of every step (steps of up to 256
  // rows as freshly captured graphs, longer ones eagerly); profile() gives (kernel kind, device
  // ms summed, intervals) over the steps since set_profile(true), and ("steps", 0, count).
  // Turning it on or off resets it.
  void set_profile(bool on);
  std::vector<std::tuple<std::string, double, int64_t>> profile() const;
  void synchronize();
  // The arrival counters of the "last block merges" kernels (attention splits, router, mlp2
  // combine, argmax and sampling slices) after the stream drains: (how many, how many non-zero).
  // Every launch leaves them at zero; a counter left non-zero would break the next step.
  std::pair<int64_t, int64_t> arrival_counters();

  struct Impl;

 private:
  std::unique_ptr<Impl> p_;
};

}  // namespace gptoss::cuda
