// The gpt-oss model: its configuration and its weights (views into the checkpoint), as the CPU
// runner (cpu_runner.h) reads them and the CUDA runner uploads them.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "safetensors.h"
#include "step_plan.h"

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

}  // namespace gptoss
