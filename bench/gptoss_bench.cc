// The CPU kernel benchmarks (Google Benchmark): every kernel family of a gpt-oss layer at the
// real gpt-oss-20b / gpt-oss-120b shapes, and the engine core's own work per step. See README.md ("Benchmarks in C++").
//
//   gptoss_bench [--gptoss_smoke] [Google Benchmark flags, e.g. --benchmark_filter=gemv
//                 --benchmark_format=json]
//
// --gptoss_smoke: the smallest size of each family, one iteration each (CI). The machine's read
// bandwidth and FMA peak are measured first and recorded in the output's context; counters
// bw_frac and peak_frac are the fractions of those that a benchmark reaches.
#include "bench_util.h"

namespace gptoss::bench {
void register_matmul(const Options& opt);
void register_attention(const Options& opt);
void register_ops(const Options& opt);
void register_engine_core(const Options& opt);
}  // namespace gptoss::bench

int main(int argc, char** argv) {
  using namespace gptoss::bench;
  const Options opt = parse_options(&argc, argv);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  register_ops(opt);
  register_matmul(opt);
  register_attention(opt);
  register_engine_core(opt);
  measure_limits(opt);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
