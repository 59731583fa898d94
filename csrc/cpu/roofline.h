// Machine limits measured in the same process as a benchmark: memory read bandwidth and fp32
// FMA peak, so that benchmark figures can be reported as a fraction of what the machine can do.
#pragma once

#include <cstdint>

namespace gptoss::cpu {

// Best GB/s for reading a `bytes`-sized buffer with all threads (a large streaming sum), over
// `reps` plain reads and `reps` reads with software prefetch (AVX-512 machines).
double measure_read_bandwidth(int64_t bytes, int reps);
// Best-of-`reps` GB/s for copying `bytes` (counted as read + write bytes).
double measure_copy_bandwidth(int64_t bytes, int reps);
// fp32 GFLOP/s of independent FMA chains on all threads at the widest SIMD width available.
double measure_peak_gflops();
// GFLOP/s (2 per multiply-add) of independent vdpbf16ps chains on all threads; 0 without
// AVX512_BF16 (cpu::bf16_dot_available()).
double measure_peak_gflops_bf16();

}  // namespace gptoss::cpu
