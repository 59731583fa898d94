// Paged KV cache: pools of fixed-size blocks and a block table per sequence.
//
// There are two pools, one for the full-attention layers and one for the sliding-window layers,
// because a block holds the K and V of one group of layers for `block_size` consecutive
// positions. Window layers release blocks once they fall out of the window (plus a retention
// margin that lets a sequence be rewound a little, e.g. to reuse a chat prefix). Blocks are
// reference counted, so forking a sequence shares its prefix; a shared block is copied before
// it is written (copy-on-write).
#pragma once

#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

namespace gptoss {

class BlockPool {
 public:
  // block_floats: floats in one block; max_blocks: cap (OutOfMemory past it).
  BlockPool(int64_t block_floats, int64_t max_blocks);
  ~BlockPool();
  BlockPool(const BlockPool&) = delete;
  BlockPool& operator=(const BlockPool&) = delete;

  int32_t allocate();  // refcount 1; throws OutOfMemory when the cap is reached
  void retain(int32_t b) { ++refs_[b]; }
  void release(int32_t b);
  int32_t refcount(int32_t b) const { return refs_[b]; }
  float* data(int32_t b) const { return ptrs_[b]; }
  float* const* block_ptrs() const { return ptrs_.data(); }
  int64_t block_floats() const { return block_floats_; }
  int64_t used() const { return used_; }
  int64_t allocated() const { return int64_t(ptrs_.size()); }
  int64_t max_blocks() const { return max_blocks_; }

 private:
  int64_t block_floats_;
  int64_t max_blocks_;
  int64_t used_ = 0;
  std::vector<float*> ptrs_;
  std::vector<int32_t> refs_;
  std::vector<int32_t> free_;
};

struct SequenceState {
  int64_t len = 0;                 // tokens in the cache
  std::vector<int32_t> tokens;     // the tokens themselves (for prefix reuse)
  std::vector<int32_t> full_table; // block ids for the full-attention pool
  std::vector<int32_t> win_table;  // block ids for the window pool (-1 = released)
};

}  // namespace gptoss
