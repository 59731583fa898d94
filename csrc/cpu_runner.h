// The CPU runner: the weights read in place from the checkpoint (or from caller-owned arrays),
// the KV blocks in host memory, and the forward pass of a chunk (cpu_forward.cc) on the
// kernels of csrc/cpu/.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "cpu/matmul.h"
#include "cpu/matmul_q8.h"
#include "engine_core.h"
#include "kv_cache.h"
#include "model.h"
#include "runner.h"

namespace gptoss {

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

class CpuRunner final : public Runner {
 public:
  CpuRunner(const ModelConfig& cfg, std::unique_ptr<TensorSource> src, const std::string& layout, EngineOptions opt);

  const char* backend() const override { return "cpu"; }
  const char* precision() const override { return opt_.precision == cpu::Precision::Bf16 ? "bf16" : "fp32"; }
  BlockPool& kv_pool() override { return *kv_pool_; }
  bool supports(StepOutput kind) const override { return kind == StepOutput::Logits; }
  void forward(const StepPlan& plan, const StepOutputs& out) override;  // cpu_forward.cc
  bool int8_decode() const { return !q8_layers_.empty(); }

 private:
  ModelConfig cfg_;
  EngineOptions opt_;
  std::unique_ptr<TensorSource> src_;
  Weights w_;
  std::vector<int64_t> full_layers_, win_layers_;  // layer -> index inside its pool's group
  struct LayerQ8 { cpu::Q8Matrix q, k, v, o; };
  std::vector<LayerQ8> q8_layers_;                 // int8_decode only
  cpu::Q8Matrix q8_unembed_;
  std::unique_ptr<HostBlockPool> kv_pool_;         // both groups of layers draw blocks from it
  std::vector<float> buf_;                         // activations of the current chunk, reused
};

// An engine on the CPU: the config is validated, the weights bound and checked.
std::unique_ptr<EngineCore> make_cpu_engine(ModelConfig cfg, std::unique_ptr<TensorSource> src,
                                            const std::string& layout, EngineOptions opt);

}  // namespace gptoss
