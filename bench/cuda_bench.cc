// The CUDA kernel benchmarks (Google Benchmark): every kernel family of a gpt-oss layer at the
// real gpt-oss-20b / gpt-oss-120b shapes, through the launchers of cuda/kernels.cuh. See
// README.md ("Benchmarks in C++").
//
//   gptoss_bench_cuda [--gptoss_smoke] [Google Benchmark flags, e.g. --benchmark_filter=gemv
//                      --benchmark_format=json]
//
// Without a GPU it says so and exits with status 2. The device-to-device copy bandwidth is
// measured first and recorded in the output's context (device_copy_GBps); counter bw_frac is
// the fraction of it that a benchmark reaches. Times are cudaEvent time (manual time).
// gptoss_bench_cuda_emu is the same program on the CPU emulator (cuda/emu/): its timings mean
// nothing; CI runs it with --gptoss_smoke for the validations.
#include <cstdio>

#include "cuda_bench_util.h"

namespace gptoss::bench::gpu {
void register_matmul(const Options& opt);
void register_attention(const Options& opt);
void register_ops(const Options& opt);
}  // namespace gptoss::bench::gpu

int main(int argc, char** argv) {
  using namespace gptoss::bench;
  const Options opt = parse_options(&argc, argv);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  std::string why;
  if (!gpu::present(&why)) {
    std::fprintf(stderr, "%s: no CUDA device (%s); nothing to benchmark\n", argv[0], why.c_str());
    return 2;
  }
  try {
    gpu::measure_device(opt);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: measuring the device failed: %s\n", argv[0], e.what());
    return 1;
  }
  gpu::register_ops(opt);
  gpu::register_matmul(opt);
  gpu::register_attention(opt);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
