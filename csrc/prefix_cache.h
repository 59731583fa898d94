// The prefix cache: KV blocks of earlier and running sequences, found again by their tokens, so
// that requests sharing a prefix (a system prompt, a conversation's earlier turns, n samples of
// one prompt) do not recompute it. Design notes: prefix_cache.md.
//
// A full-attention block is registered once all its positions are written. Its entry names the
// entry of the block before it (its parent), so a chain of entries stands for one whole prefix
// and a hit, checked token for token along the chain, is exact whatever the hash does. The
// window-layer block of the same positions is attached to the full block's entry. Registered
// blocks are never written again (SequenceTable copies them first). When no sequence references
// a registered block the pool keeps it (BlockKeeper) until it needs room: least recently used
// first.
#pragma once

#include <cstdint>
#include <list>
#include <unordered_map>
#include <vector>

#include "kv_cache.h"

namespace gptoss {

class PrefixCache final : public BlockKeeper {
 public:
  // pool: the shared pool both groups of layers draw from; the cache becomes its keeper.
  PrefixCache(BlockPool& pool, int64_t block_size);
  ~PrefixCache() override;
  PrefixCache(const PrefixCache&) = delete;
  PrefixCache& operator=(const PrefixCache&) = delete;

  // Whether b holds a registered block (which must not be written in place).
  bool registered(int32_t b) const { return by_block_.count(b) != 0; }
  int64_t entries() const { return int64_t(entries_.size()); }

  // Positions [0, s.len) of s are written: registers its blocks that are full and not yet known.
  // first_block: the first block index that may have become full since the last call.
  // Records in s.chain the entry of each of its full blocks.
  void register_full_blocks(SequenceState& s, int64_t first_block);

  // The blocks of the longest cached prefix of tokens[0, n): `len` tokens (a whole number of
  // blocks, and then possibly part of one more), full[i] / win[i] the blocks covering positions
  // [i * B, (i + 1) * B) (win[i] -1 where absent), chain[i] the entries of the whole blocks.
  // The caller decides how much of it to use.
  struct Match {
    int64_t len = 0;
    std::vector<int32_t> full, win;
    std::vector<uint64_t> chain;
  };
  Match match(const int32_t* tokens, int64_t n) const;

  // Frees every kept block (and forgets its entry).
  void clear();

  // BlockKeeper
  bool keep(int32_t b) override;
  void revived(int32_t b) override;
  int32_t evict() override;

 private:
  struct Entry {
    uint64_t parent = 0;      // serial of the previous block's entry; 0 for the first block
    int32_t block = -1;       // full-attention block
    int32_t win = -1;         // window-layer block of the same positions, or -1
    std::vector<int32_t> tokens;
  };
  uint64_t key(uint64_t parent, const int32_t* tokens) const;
  uint64_t child(uint64_t parent, const int32_t* tokens) const;  // serial, 0 if none
  void forget(uint64_t serial);            // drops an entry (its blocks are no longer registered)
  void drop_kept(int32_t b);               // b leaves the LRU list

  BlockPool& pool_;
  int64_t B_;
  uint64_t next_serial_ = 1;
  std::unordered_map<uint64_t, Entry> entries_;               // serial -> entry
  std::unordered_multimap<uint64_t, uint64_t> by_key_;        // key(parent, tokens) -> serial
  std::unordered_multimap<uint64_t, uint64_t> children_;      // parent serial -> serial
  std::unordered_map<int32_t, uint64_t> by_block_;            // full or window block -> serial
  std::list<int32_t> lru_;                                    // kept blocks, oldest first
  std::unordered_map<int32_t, std::list<int32_t>::iterator> lru_pos_;
};

}  // namespace gptoss
