// The CPU runner: weights, int8 copies, the host KV pool (the forward pass is cpu_forward.cc).
#include "cpu_runner.h"

#include <omp.h>

#include <algorithm>

#include "common.h"

namespace gptoss {

CpuRunner::CpuRunner(const ModelConfig& cfg, std::unique_ptr<TensorSource> src, const std::string& layout,
                     EngineOptions opt)
    : cfg_(cfg), opt_(opt), src_(std::move(src)) {
  cfg_.validate();
  GPTOSS_CHECK_ARG(opt_.kv_cache_bytes > 0, "kv_cache_bytes must be positive");
  GPTOSS_CHECK_ARG(opt_.kv.block_size > 0 && opt_.kv.block_size <= 4096, "block_size must be in [1, 4096]");
  w_ = bind_weights(cfg_, *src_, layout);
  if (opt_.threads > 0) omp_set_num_threads(opt_.threads);
  if (!cpu::bf16_dot_available()) opt_.precision = cpu::Precision::Fp32;

  if (opt_.int8_decode && cpu::q8_available() && cfg_.hidden % 32 == 0 && cfg_.q_dim() % 32 == 0) {
    const int64_t H = cfg_.hidden, Q = cfg_.q_dim(), KV = cfg_.kv_dim();
    for (const LayerWeights& L : w_.layers)
      q8_layers_.push_back({cpu::quantize_q8(L.q_w, Q, H, H), cpu::quantize_q8(L.k_w, KV, H, H),
                            cpu::quantize_q8(L.v_w, KV, H, H), cpu::quantize_q8(L.o_w, H, Q, Q)});
    q8_unembed_ = cpu::quantize_q8(w_.unembed, cfg_.vocab, H, H);
  }

  full_layers_.assign(size_t(cfg_.n_layers), -1);
  win_layers_.assign(size_t(cfg_.n_layers), -1);
  int64_t nf = 0, nw = 0;
  for (int64_t l = 0; l < cfg_.n_layers; ++l) {
    if (cfg_.sliding[size_t(l)]) win_layers_[size_t(l)] = nw++;
    else full_layers_[size_t(l)] = nf++;
  }
  const int64_t per_layer = 2 * cfg_.n_kv * opt_.kv.block_size * cfg_.head_dim;  // floats: K and V
  // One pool for both groups, its blocks sized for the larger group (a window block of gpt-oss's
  // alternating layers is exactly a full one): a long sequence's full-attention blocks can take
  // nearly all of the budget, its window blocks being released as they fall out of reach.
  const int64_t block = std::max<int64_t>(1, std::max(nf, nw)) * per_layer;
  const int64_t blocks = std::max<int64_t>(2, opt_.kv_cache_bytes / (4 * block));
  kv_pool_ = std::make_unique<HostBlockPool>(block, blocks);
}

std::unique_ptr<EngineCore> make_cpu_engine(ModelConfig cfg, std::unique_ptr<TensorSource> src,
                                            const std::string& layout, EngineOptions opt) {
  auto runner = std::make_unique<CpuRunner>(cfg, std::move(src), layout, opt);
  return std::make_unique<EngineCore>(std::move(cfg), opt.kv, std::move(runner));
}

}  // namespace gptoss
