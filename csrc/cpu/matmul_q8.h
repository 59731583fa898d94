// Opt-in int8 copies of bf16 matrices for faster batch-1 decode (see matmul_q8.cc).
#pragma once

#include <cstdint>
#include <vector>

namespace gptoss::cpu {

// W [N, K] as int8 (row-major) with one fp32 scale per 32 consecutive weights of a row:
// w[n, k] ~= q[n, k] * scales[n, k / 32].
struct Q8Matrix {
  int64_t N = 0, K = 0;
  std::vector<int8_t> q;
  std::vector<float> scales;
};

// Symmetric per-32 quantization of a bf16 matrix (row stride ldw); K must be a multiple of 32.
Q8Matrix quantize_q8(const uint16_t* W, int64_t N, int64_t K, int64_t ldw);

// Y[T, N] = X[T, K] . W^T (no bias) for W given as q [N, K] int8 and scales [N, K/32].
// Multi-threaded over N; AVX-512 (else the scalar oracle).
void matmul_q8(const float* X, int64_t T, int64_t ldx, const int8_t* q, const float* scales, int64_t N, int64_t K,
               float* Y, int64_t ldy);
void matmul_q8_ref(const float* X, int64_t T, int64_t ldx, const int8_t* q, const float* scales, int64_t N,
                   int64_t K, float* Y, int64_t ldy);
inline void matmul_q8(const float* X, int64_t T, int64_t ldx, const Q8Matrix& W, float* Y, int64_t ldy) {
  matmul_q8(X, T, ldx, W.q.data(), W.scales.data(), W.N, W.K, Y, ldy);
}

// Whether matmul_q8 has a fast path on this CPU (the engine only uses int8 weights if so).
bool q8_available();

}  // namespace gptoss::cpu
