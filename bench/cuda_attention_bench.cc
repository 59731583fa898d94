#include "cuda_bench_util.h"
namespace gptoss::bench::gpu {
void register_attention(const Options&) {}
}
