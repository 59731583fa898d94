#include "kv_cache.h"

#include <cstdlib>
#include <string>

#include "common.h"

namespace gptoss {

BlockPool::BlockPool(int64_t block_floats, int64_t max_blocks)
    : block_floats_(block_floats), max_blocks_(max_blocks) {}

BlockPool::~BlockPool() {
  for (float* p : ptrs_) std::free(p);
}

int32_t BlockPool::allocate() {
  int32_t b;
  if (!free_.empty()) {
    b = free_.back();
    free_.pop_back();
  } else {
    if (int64_t(ptrs_.size()) >= max_blocks_)
      throw OutOfMemory("KV cache is full: " + std::to_string(max_blocks_) + " blocks of " +
                        std::to_string(block_floats_ * 4 / 1024) +
                        " KiB in use; free sequences or raise kv_cache_bytes");
    size_t bytes = size_t(block_floats_) * sizeof(float);
    bytes = (bytes + 63) / 64 * 64;
    float* p = static_cast<float*>(std::aligned_alloc(64, bytes));
    if (!p) throw OutOfMemory("cannot allocate a KV cache block of " + std::to_string(bytes) + " bytes");
    ptrs_.push_back(p);
    refs_.push_back(0);
    b = int32_t(ptrs_.size() - 1);
  }
  refs_[b] = 1;
  ++used_;
  return b;
}

void BlockPool::release(int32_t b) {
  if (b < 0) return;
  if (--refs_[b] == 0) {
    free_.push_back(b);
    --used_;
  }
}

}  // namespace gptoss
