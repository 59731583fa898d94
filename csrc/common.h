// Shared helpers for the C++ runtime: errors, bf16 conversion, small utilities.
#pragma once

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

namespace gptoss {

// Errors the Python layer maps to exceptions. Every failure the user can cause ends up as one
// of these, never as a crash.
struct CheckpointError : std::runtime_error { using std::runtime_error::runtime_error; };  // -> gptoss.CheckpointError
struct InvalidArgument : std::invalid_argument { using std::invalid_argument::invalid_argument; };  // -> ValueError
struct ContextOverflow : std::out_of_range { using std::out_of_range::out_of_range; };  // -> gptoss.ContextOverflowError
struct OutOfMemory : std::runtime_error { using std::runtime_error::runtime_error; };  // -> MemoryError
struct Interrupted : std::runtime_error { using std::runtime_error::runtime_error; };  // -> KeyboardInterrupt

#define GPTOSS_CHECK_ARG(cond, msg)                                  \
  do {                                                               \
    if (!(cond)) throw ::gptoss::InvalidArgument(std::string(msg));  \
  } while (0)

static inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round to nearest even, as torch does (used by the synthetic generator and tests only).
static inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

// y[t, :] += b for T rows of N contiguous floats.
static inline void add_bias_rows(float* y, int64_t T, int64_t N, const float* b) {
  for (int64_t t = 0; t < T; ++t)
    for (int64_t n = 0; n < N; ++n) y[t * N + n] += b[n];
}

}  // namespace gptoss
