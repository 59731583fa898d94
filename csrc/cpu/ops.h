// The small CPU kernels of the forward pass: embedding, RMSNorm, YaRN RoPE, attention with
// sinks and sliding window over the paged KV cache, router top-k + softmax, SwiGLU.
// All activations are fp32. Each has a numpy twin in tests/test_ops.py.
#pragma once

#include <cstdint>

namespace gptoss::cpu {

// x[t, :] = E[tokens[t], :] (bf16 table, row stride H).
void embedding(const int32_t* tokens, int64_t T, const uint16_t* E, int64_t H, float* x);

// y = x / sqrt(mean(x^2) + eps) * w, row by row. y may alias x.
void rmsnorm(const float* x, int64_t T, int64_t H, const float* w, float eps, float* y);

// cos/sin tables for each token position: cs[t, 0:half] = cos, cs[t, half:2half] = sin, both
// already multiplied by the YaRN concentration. The angle is computed in fp32 (pos * inv_freq)
// like the reference.
void rope_table(const int64_t* pos, int64_t T, const float* inv_freq, int64_t half, float conc, float* cs);

// Half-split (NeoX) rotation of n_heads heads of size 2*half in each row of x (row stride ld).
void rope_apply(float* x, int64_t T, int64_t ld, int64_t n_heads, int64_t half, const float* cs);

// One layer of one sequence's paged cache, as attention reads it. A block holds, for this
// layer, K then V, each laid out [n_kv][block_size][head_dim].
struct KVLayerView {
  float* const* block_ptrs;  // the pool's block base pointers, by block id
  const int32_t* table;      // this sequence's block ids, by position / block_size
  int64_t layer_offset;      // floats from a block's base to this layer's K
  int64_t block_size;
};

// Store k/v rows ([T, n_kv*head_dim], row strides ldk/ldv) at positions pos[t] of view[t].
void kv_store(const float* k, int64_t ldk, const float* v, int64_t ldv, int64_t T, const int64_t* pos,
              const KVLayerView* views, int64_t n_kv, int64_t head_dim);

// Attention for T query rows (q: [T, n_heads*head_dim], row stride ldq). Query t at position
// pos[t] attends keys j in (pos - window, pos] of views[t] (window <= 0: all j <= pos), plus the
// per-head sink logit. out: [T, n_heads*head_dim].
void attention(const float* q, int64_t ldq, int64_t T, const int64_t* pos, const KVLayerView* views,
               int64_t n_heads, int64_t n_kv, int64_t head_dim, float scale, const float* sinks,
               int64_t window, float* out);

// For each row of logits [T, E]: the k largest (ties go to the lower expert id), in descending
// order, and the softmax over those k values.
void router_topk_softmax(const float* logits, int64_t T, int64_t E, int64_t k, int32_t* idx, float* w);

// Interleaved SwiGLU: h [T, 2I] (gate = even columns, linear = odd columns) -> out [T, I]:
// g = min(gate, limit); l = clamp(lin, -limit, limit); out = g * sigmoid(alpha g) * (l + 1).
void swiglu(const float* h, int64_t T, int64_t I, float alpha, float limit, float* out);

}  // namespace gptoss::cpu
