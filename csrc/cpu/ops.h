// The small CPU kernels of the forward pass: embedding, RMSNorm, YaRN RoPE, router top-k +
// softmax, SwiGLU. (Attention is in attention.h, the matrix products in matmul.h.)
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

// For each row of logits [T, E]: the k largest (ties go to the lower expert id), in descending
// order, and the softmax over those k values.
void router_topk_softmax(const float* logits, int64_t T, int64_t E, int64_t k, int32_t* idx, float* w);

// Interleaved SwiGLU: h [T, 2I] (gate = even columns, linear = odd columns) -> out [T, I]:
// g = min(gate, limit); l = clamp(lin, -limit, limit); out = g * sigmoid(alpha g) * (l + 1).
void swiglu(const float* h, int64_t T, int64_t I, float alpha, float limit, float* out);

}  // namespace gptoss::cpu
