// The gpt-oss model on a CUDA device: the CUDA runner of the engine core. Weights are uploaded
// once as stored (bf16 matrices, packed MXFP4 experts; small vectors as fp32) or generated on
// the device (synthetic models); the KV cache lives in device memory (fp32 by default, bf16
// optional).
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

#include "engine_core.h"
#include "model.h"
#include "runner.h"

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

  KVOptions kv() const { return KVOptions{block_size, window_retain, max_chunk_tokens, prefix_cache}; }
};

// The CUDA runner of the engine core (csrc/engine_core.h): weights, workspace and KV blocks in
// device memory; a forward chunk is its StepPlan serialised into device metadata, then kernel
// launches on one stream (or a captured graph replayed). The core's lock serialises every call.
class CudaRunner final : public DeviceRunner {
 public:
  // Weights from a checkpoint (or in-memory arrays), uploaded to the device once.
  CudaRunner(const ModelConfig& cfg, std::unique_ptr<TensorSource> src, const std::string& layout,
             CudaEngineOptions opt);
  // Random weights generated directly on the device (no host copy), with the magnitudes of
  // python/gptoss/synthetic.py; deterministic in `seed` (but not equal to the host generator).
  CudaRunner(const ModelConfig& cfg, uint64_t seed, CudaEngineOptions opt);
  ~CudaRunner() override;
  CudaRunner(const CudaRunner&) = delete;
  CudaRunner& operator=(const CudaRunner&) = delete;

  const char* backend() const override;  // "cuda", or "cuda_emu" for the emulator's build
  const char* precision() const override;
  BlockPool& kv_pool() override;
  bool supports(StepOutput) const override { return true; }
  void enter() override;
  // Greedy tokens and sampling run on the device (cuda/sampling.cu): only the token ids (and
  // log-probabilities) are copied back. Steps with penalties replay graphs too (one per
  // power-of-two room for the entries).
  void forward(const StepPlan& plan, const StepOutputs& out) override;

  std::string device_name() const override;
  std::map<std::string, double> memory_info() const override;
  GraphStats graph_stats() const override;
  void set_graphs(bool enabled) override;
  void set_tc_split(bool split) override;
  void set_gemm_tiles(int tiles) override;
  bool set_pdl(bool on, bool prefetch) override;
  void set_fuse_qkv_rope(bool on) override;
  void set_moe_gemv_tokens(int n) override;
  int moe_gemv_tokens() const override;
  // Whether this GPU can run the experts' decode GEMV (its tensor cores take fp16 subnormal
  // inputs); where not, set_moe_gemv_tokens keeps 0 and every step uses the tensor-core GEMM.
  bool moe_gemv_available() const override;
  // Profiling: an event after each kernel group of every step (steps of up to 256 rows as
  // freshly captured graphs, longer ones eagerly). Turning it on or off resets it.
  void set_profile(bool on) override;
  Profile profile() const override;
  void synchronize() override;
  std::pair<int64_t, int64_t> arrival_counters() override;

  // Device bytes this model would take, without a device: weights, workspace (activations,
  // logits, ...), KV cache per token of capacity (the pools of both layer kinds grow in step) and
  // the most a sequence's window layers hold (window + window_retain + a chunk).
  static std::map<std::string, double> memory_plan(ModelConfig cfg, CudaEngineOptions opt);

  struct Impl;

 private:
  std::unique_ptr<Impl> p_;
};

// An engine on a CUDA device: from a checkpoint or arrays, or with random weights made there.
std::unique_ptr<EngineCore> make_cuda_engine(ModelConfig cfg, std::unique_ptr<TensorSource> src,
                                             const std::string& layout, CudaEngineOptions opt);
std::unique_ptr<EngineCore> make_cuda_engine(ModelConfig cfg, uint64_t seed, CudaEngineOptions opt);

}  // namespace gptoss::cuda
