// Attention on the CPU: GQA with per-head sinks, causal or sliding window, over the paged KV
// cache (csrc/kv_cache.h). Numpy twin: tests/numpy_reference.py::attention (tests/test_ops.py).
#pragma once

#include <cstdint>

namespace gptoss::cpu {

// One layer of one sequence's paged cache, as attention reads it. In a block, this layer's K
// is laid out [n_kv][head_dim][block_size] (for each dim, consecutive positions are contiguous,
// so the scores of 16 keys are one vector FMA per dim) and V follows as [n_kv][block_size][head_dim].
struct KVLayerView {
  float* const* block_ptrs;  // the pool's block base pointers, by block id
  const int32_t* table;      // this sequence's block ids, by position / block_size
  int64_t layer_offset;      // floats from a block's base to this layer's K
  int64_t block_size;
};

// Store k/v rows ([T, n_kv*head_dim], row strides ldk/ldv) at positions pos[t] of views[t].
void kv_store(const float* k, int64_t ldk, const float* v, int64_t ldv, int64_t T, const int64_t* pos,
              const KVLayerView* views, int64_t n_kv, int64_t head_dim);

// Attention for T query rows (q: [T, n_heads*head_dim], row stride ldq). Query t at position
// pos[t] attends keys j in (pos - window, pos] of views[t] (window <= 0: all j <= pos), plus the
// per-head sink logit, which joins the softmax and is then dropped. out: [T, n_heads*head_dim].
void attention(const float* q, int64_t ldq, int64_t T, const int64_t* pos, const KVLayerView* views,
               int64_t n_heads, int64_t n_kv, int64_t head_dim, float scale, const float* sinks,
               int64_t window, float* out);

}  // namespace gptoss::cpu
