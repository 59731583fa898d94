// Opens a checkpoint directory in C++ alone (the Python package does this for gptoss.Model):
// the HF layout's config.json and its *.safetensors files, mapped. Used by the end-to-end
// benchmark so that it runs without Python. The config is read as python/gptoss/config.py
// reads it (same keys and defaults, YaRN frequencies in fp32); tests/test_cpp_bench.py checks
// that both give the same logits.
#pragma once

#include <memory>
#include <string>

#include "model.h"

namespace gptoss::bench {

struct CheckpointDir {
  ModelConfig config;
  std::unique_ptr<TensorSource> tensors;
  int64_t file_bytes = 0;  // of the safetensors files
};

// max_context 0: the config's max_position_embeddings. Throws CheckpointError naming the file.
CheckpointDir open_checkpoint_dir(const std::string& dir, int64_t max_context = 0, bool populate = false);

// YaRN inverse frequencies (head_dim / 2) and concentration, as ModelConfig.yarn() computes them.
std::vector<float> yarn_inv_freq(int64_t head_dim, float theta, float factor, float beta_fast, float beta_slow,
                                 int64_t original_context, bool truncate, float* concentration);

}  // namespace gptoss::bench
