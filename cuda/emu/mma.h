// cuda-emu: nvcuda::wmma on the host (see cuda_runtime.h). Operand fragments hold the whole
// tile in every lane; an accumulator holds M*N/32 elements per lane (lane l: tile elements
// l, l+32, ...), as many as on the device though not the hardware's assignment, so each lane
// multiplies only its share and element-wise use of `x` stays correct. Products accumulate in
// fp32; pointers must be 32-byte aligned and leading dimensions multiples of 16 bytes.
#pragma once

#include <type_traits>

#include "cuda_bf16.h"
#include "cuda_runtime.h"

namespace gptoss_emu {
void wmma_misuse(const char* what);
template <typename T>
inline float wmma_to_float(T v) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return __bfloat162float(v);
  else return float(v);
}
template <typename T>
inline T wmma_from_float(float v) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return __float2bfloat16_rn(v);
  else return T(v);
}
template <typename T>
inline void wmma_check(const void* p, unsigned ld) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) wmma_misuse("wmma pointer not 32-byte aligned");
  if ((size_t(ld) * sizeof(T)) % 16 != 0) wmma_misuse("wmma leading dimension not a multiple of 16 bytes");
}
}  // namespace gptoss_emu

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static constexpr int rows = std::is_same_v<Use, matrix_b> ? K : M;
  static constexpr int cols = std::is_same_v<Use, matrix_a> ? K : N;
  static constexpr int num_elements = std::is_same_v<Use, accumulator> ? rows * cols / 32 : rows * cols;
  using element_type = T;
  T x[num_elements];
};

template <typename Use, int M, int N, int K, typename T, typename L>
inline void fill_fragment(fragment<Use, M, N, K, T, L>& f, T v) {
  for (int i = 0; i < f.num_elements; ++i) f.x[i] = v;
}

// matrix_a / matrix_b with the layout in the type: element (r, c) of the tile.
template <typename Use, int M, int N, int K, typename T, typename L, typename P>
inline void load_matrix_sync(fragment<Use, M, N, K, T, L>& f, const P* p, unsigned ld) {
  static_assert(std::is_same_v<L, row_major> || std::is_same_v<L, col_major>, "operand fragment needs a layout");
  gptoss_emu::wmma_check<P>(p, ld);
  using F = fragment<Use, M, N, K, T, L>;
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c)
      f.x[r * F::cols + c] = std::is_same_v<L, row_major> ? p[size_t(r) * ld + c] : p[r + size_t(c) * ld];
}

// The accumulator's element e in this lane is tile element (e * 32 + lane) = (row, col).
template <int M, int N, int K, typename T>
inline void load_matrix_sync(fragment<accumulator, M, N, K, T>& f, const T* p, unsigned ld, layout_t l) {
  gptoss_emu::wmma_check<T>(p, ld);
  const int lane = gptoss_emu::lane_id();
  for (int e = 0; e < f.num_elements; ++e) {
    const int r = (e * 32 + lane) / N, c = (e * 32 + lane) % N;
    f.x[e] = l == mem_row_major ? p[size_t(r) * ld + c] : p[r + size_t(c) * ld];
  }
}

template <int M, int N, int K, typename T>
inline void store_matrix_sync(T* p, const fragment<accumulator, M, N, K, T>& f, unsigned ld, layout_t l) {
  gptoss_emu::wmma_check<T>(p, ld);
  const int lane = gptoss_emu::lane_id();
  for (int e = 0; e < f.num_elements; ++e) {
    const int r = (e * 32 + lane) / N, c = (e * 32 + lane) % N;
    (l == mem_row_major ? p[size_t(r) * ld + c] : p[r + size_t(c) * ld]) = f.x[e];
  }
}

template <int M, int N, int K, typename TA, typename LA, typename TB, typename LB, typename TC>
inline void mma_sync(fragment<accumulator, M, N, K, TC>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
                     const fragment<matrix_b, M, N, K, TB, LB>& b, const fragment<accumulator, M, N, K, TC>& c) {
  const int lane = gptoss_emu::lane_id();
  for (int e = 0; e < d.num_elements; ++e) {
    const int i = (e * 32 + lane) / N, j = (e * 32 + lane) % N;
    float s = gptoss_emu::wmma_to_float(c.x[e]);
    for (int k = 0; k < K; ++k)
      s += gptoss_emu::wmma_to_float(a.x[i * K + k]) * gptoss_emu::wmma_to_float(b.x[k * N + j]);
    d.x[e] = gptoss_emu::wmma_from_float<TC>(s);
  }
}

}  // namespace wmma
}  // namespace nvcuda
