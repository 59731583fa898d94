// cuda-emu: the asynchronous global -> shared copies of <cuda_pipeline.h> (cp.async, sm_80+).
// A copy is only recorded when issued; it lands when __pipeline_wait_prior retires its group,
// so a thread that reads the destination before waiting sees the old bytes, as it may on the
// device. Sizes, alignment and the source's extent are checked as the hardware requires.
#pragma once

#include "cuda_runtime.h"

namespace gptoss_emu {
void pipeline_copy(void* dst_shared, const void* src_global, size_t size, size_t zfill);
void pipeline_commit();
void pipeline_wait_prior(size_t prior);
}  // namespace gptoss_emu

inline void __pipeline_memcpy_async(void* dst_shared, const void* src_global, size_t size_and_align, size_t zfill = 0) {
  gptoss_emu::pipeline_copy(dst_shared, src_global, size_and_align, zfill);
}
inline void __pipeline_commit() { gptoss_emu::pipeline_commit(); }
inline void __pipeline_wait_prior(size_t prior) { gptoss_emu::pipeline_wait_prior(prior); }
