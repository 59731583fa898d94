// The gpt-oss model on the CPU: configuration, weights (views into the checkpoint), and the
// Engine that owns the paged KV cache and runs batched forward steps over many sequences.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "cpu/matmul.h"
#include "cpu/matmul_q8.h"
#include "kv_cache.h"
#include "safetensors.h"

namespace gptoss {

struct ModelConfig {
  int64_t n_layers = 0, n_experts = 0, top_k = 0, vocab = 0, hidden = 0, inter = 0;
  int64_t head_dim = 0, n_heads = 0, n_kv = 0, window = 0, max_context = 0;
  float swiglu_limit = 7.0f, swiglu_alpha = 1.702f, rms_eps = 1e-5f, attn_scale = 0.125f;
  std::vector<uint8_t> sliding;   // per layer: 1 = sliding window, 0 = full attention
  std::vector<float> inv_freq;    // head_dim/2 YaRN frequencies
  float rope_conc = 1.0f;         // YaRN concentration (applied to cos and sin)

  int64_t q_dim() const { return n_heads * head_dim; }
  int64_t kv_dim() const { return n_kv * head_dim; }
  void validate_dims() const;  // the sizes only
  void validate() const;       // everything
};

struct LayerWeights {
  std::vector<float> attn_norm, q_b, k_b, v_b, sinks, o_b, mlp_norm, router_b, mlp1_b, mlp2_b;
  const uint16_t *q_w = nullptr, *k_w = nullptr, *v_w = nullptr, *o_w = nullptr, *router_w = nullptr;
  const uint8_t *mlp1_blocks = nullptr, *mlp1_scales = nullptr, *mlp2_blocks = nullptr, *mlp2_scales = nullptr;
};

struct Weights {
  const uint16_t* embed = nullptr;
  const uint16_t* unembed = nullptr;
  std::vector<float> final_norm;
  std::vector<LayerWeights> layers;
};

// Where tensors come from: mapped safetensors files, or caller-owned memory (kept alive by
// `keepalive`, e.g. numpy arrays of an in-memory synthetic model).
struct TensorSource {
  std::vector<std::unique_ptr<SafetensorsFile>> files;
  std::vector<TensorInfo> memory;
  std::shared_ptr<void> keepalive;
};

// Builds the weight views for `layout` ("hf" or "original"), checking that every tensor is
// present with the right shape and dtype; errors name the tensor and its file.
// Every tensor of the source must be used: one the config has no place for is an error too.
Weights bind_weights(const ModelConfig& cfg, const TensorSource& src, const std::string& layout);
// The same checks without reading any tensor data (inv_freq and the float parameters of `cfg`
// are not used), so that a config can be checked against the headers before anything is sized
// from it.
void check_weights(const ModelConfig& cfg, const TensorSource& src, const std::string& layout);

struct EngineOptions {
  KVOptions kv;                                // block size, window retention, chunk size
  int64_t kv_cache_bytes = int64_t(4) << 30;  // cap for the KV pools together
  int threads = 0;                            // 0 = all cores
  // Opt-in approximation: int8 copies (per-32 scales) of the attention and unembedding matrices,
  // used for steps of at most int8_max_tokens tokens (decode), where reading the weights is the
  // cost. Prefill keeps the exact bf16 weights. Needs AVX-512; ignored otherwise.
  bool int8_decode = false;
  int64_t int8_max_tokens = 8;
  // The attention, expert and unembedding products of steps of more than a few tokens (prefill,
  // batched decode): exact fp32, or bf16 dot products (cpu::Precision; Bf16 is kept only where
  // the CPU has AVX512_BF16). The router always runs in fp32: its top-k choice is discrete.
  cpu::Precision precision = cpu::Precision::Fp32;
};

// One entry of a batched step: run `n` tokens of sequence `seq`, return logits for the last
// token only, or for every token.
struct StepItem {
  int64_t seq;
  const int32_t* tokens;
  int64_t n;
  bool all_logits;
};

class Engine {
 public:
  Engine(ModelConfig cfg, std::unique_ptr<TensorSource> src, const std::string& layout, EngineOptions opt);

  const ModelConfig& config() const { return cfg_; }

  // Every public method is safe to call from several threads: one lock serialises them (a step
  // holds it for its whole duration).
  int64_t new_sequence() { std::lock_guard<std::mutex> g(mu_); return seqs_->create(); }
  // A new sequence holding the longest cached prefix of `tokens` (at most all but the last);
  // *reused: how many tokens it holds already (see SequenceTable::create_from_cache).
  int64_t new_sequence_from_cache(const std::vector<int32_t>& tokens, int64_t* reused) {
    std::lock_guard<std::mutex> g(mu_);
    return seqs_->create_from_cache(tokens.data(), int64_t(tokens.size()), reused);
  }
  PrefixCacheStats prefix_cache_stats() const { std::lock_guard<std::mutex> g(mu_); return seqs_->prefix_cache_stats(); }
  void clear_prefix_cache() { std::lock_guard<std::mutex> g(mu_); seqs_->clear_prefix_cache(); }
  int64_t fork(int64_t seq) { std::lock_guard<std::mutex> g(mu_); return seqs_->fork(seq); }
  void free_sequence(int64_t seq) { std::lock_guard<std::mutex> g(mu_); seqs_->free(seq); }
  // Rewinds `seq` to its first n tokens; false (nothing changed) when the window layers no
  // longer hold what position n needs.
  bool truncate(int64_t seq, int64_t n) { std::lock_guard<std::mutex> g(mu_); return seqs_->truncate(seq, n); }
  int64_t length(int64_t seq) const { std::lock_guard<std::mutex> g(mu_); return seqs_->at(seq).len; }
  std::vector<int32_t> tokens(int64_t seq) const { std::lock_guard<std::mutex> g(mu_); return seqs_->at(seq).tokens; }
  bool has_sequence(int64_t seq) const { std::lock_guard<std::mutex> g(mu_); return seqs_->contains(seq); }
  int64_t num_sequences() const { std::lock_guard<std::mutex> g(mu_); return seqs_->size(); }

  // Advances every item's sequence by its tokens; writes logits into `out`, in item order:
  // 1 row per item (or n rows when all_logits), each of `vocab` floats. Validates everything
  // before touching any state, so a bad item changes nothing.
  //
  // `interrupted`, if given, is polled between chunks (long prompts run as several chunks);
  // when it returns true or throws, the step stops there: every sequence keeps the tokens
  // already processed (its length and tokens() say how far it got) and the exception, or
  // Interrupted, propagates.
  void step(const std::vector<StepItem>& items, float* out,
            const std::function<bool()>& interrupted = nullptr);
  int64_t logits_rows(const std::vector<StepItem>& items) const { return SequenceTable::logits_rows(items); }

  // KV cache blocks: [used, allocated, cap] of the full pool, then of the window pool.
  std::vector<int64_t> kv_stats() const { std::lock_guard<std::mutex> g(mu_); return seqs_->stats(); }
  bool int8_decode() const { return !q8_layers_.empty(); }
  cpu::Precision precision() const { return opt_.precision; }

 private:
  void forward_chunk(const std::vector<Chunk>& chunks, float* out);

  ModelConfig cfg_;
  EngineOptions opt_;
  std::unique_ptr<TensorSource> src_;
  Weights w_;
  std::vector<int64_t> full_layers_, win_layers_;  // layer -> index inside its pool's group
  struct LayerQ8 { cpu::Q8Matrix q, k, v, o; };
  std::vector<LayerQ8> q8_layers_;                 // int8_decode only
  cpu::Q8Matrix q8_unembed_;
  std::unique_ptr<HostBlockPool> kv_pool_;         // both groups of layers draw blocks from it
  std::unique_ptr<PoolView> full_pool_, win_pool_;
  std::unique_ptr<SequenceTable> seqs_;            // declared after the pools: destroyed first
  std::vector<float> buf_;                         // activations of the current chunk, reused
  mutable std::mutex mu_;
};

}  // namespace gptoss
