// Paged KV cache bookkeeping, shared by the CPU and CUDA engines.
//
// Fixed-size blocks for the full-attention layers and for the sliding-window layers: a block
// holds the K and V of one group of layers for `block_size` consecutive positions. Both groups
// draw their blocks from one shared pool (two PoolViews; for gpt-oss, whose layers alternate,
// the blocks are the same size), so the window layers, which keep only the last few hundred
// positions of a sequence, leave the rest of the budget to long contexts. Window layers release
// blocks once they fall out of the window (plus a retention margin, so a sequence can be
// rewound a little, e.g. to reuse a chat prefix). Blocks are reference counted: forking a
// sequence shares its prefix, and a shared block is copied before it is written
// (copy-on-write).
//
// BlockPool manages block ids and reference counts; where a block's bytes live (host memory,
// device memory) is the backend's business (HostBlockPool here, the CUDA engine's own pool).
// SequenceTable holds the sequences and their block tables, validates a step before anything
// changes, and cuts a batched step into chunks. Its prefix cache (prefix_cache.h) keeps the
// blocks of finished prefixes for later sequences.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace gptoss {

struct ModelConfig;
struct StepItem;
class PrefixCache;

// Keeps the contents of blocks that no sequence references any more, for reuse (the prefix
// cache): such blocks stay allocated, and the pool takes them back only when it needs room.
class BlockKeeper {
 public:
  virtual ~BlockKeeper() = default;
  // The last reference to b went: true keeps it (reclaimable), false lets the pool free it.
  virtual bool keep(int32_t b) = 0;
  // A kept block is referenced again.
  virtual void revived(int32_t b) = 0;
  // The pool is out of free blocks: forget one kept block and return it (-1: none).
  virtual int32_t evict() = 0;
};

class BlockPool {
 public:
  // max_blocks: cap (OutOfMemory past it; 0 = this pool is unused); block_bytes: for messages.
  BlockPool(int64_t max_blocks, int64_t block_bytes) : max_blocks_(max_blocks), block_bytes_(block_bytes) {}
  virtual ~BlockPool() = default;
  BlockPool(const BlockPool&) = delete;
  BlockPool& operator=(const BlockPool&) = delete;

  // Refcount 1; takes a kept block back when no block is free and the cap is reached, and
  // throws OutOfMemory when there is none either.
  virtual int32_t allocate();
  virtual void retain(int32_t b);  // also revives a kept block (refcount 0)
  virtual void release(int32_t b);
  virtual int32_t refcount(int32_t b) const { return refs_[size_t(b)]; }
  virtual int64_t used() const { return used_; }  // referenced blocks (kept ones excluded)
  virtual int64_t allocated() const { return int64_t(refs_.size()); }
  int64_t kept() const { return kept_; }
  int64_t max_blocks() const { return max_blocks_; }
  int64_t block_bytes() const { return block_bytes_; }
  // The pool whose capacity this one spends: itself, or the shared pool behind a PoolView.
  virtual const BlockPool& capacity() const { return *this; }
  virtual BlockPool& shared() { return *this; }
  // Copy the contents of block src into block dst (copy-on-write).
  virtual void copy_block(int32_t src, int32_t dst) = 0;
  // The keeper of unreferenced blocks (nullptr: they are freed at once).
  void set_keeper(BlockKeeper* k) { keeper_ = k; }
  // A kept block is no longer kept (its keeper forgot it): free it.
  void discard(int32_t b);

 protected:
  // Called once for every new block id, before it is handed out: provide its storage here.
  virtual void on_new_block(int32_t b) {}

 private:
  int64_t max_blocks_, block_bytes_;
  int64_t used_ = 0, kept_ = 0;
  std::vector<int32_t> refs_, free_;
  BlockKeeper* keeper_ = nullptr;
};

// Blocks in host memory, each allocated (64-byte aligned) the first time its id is used.
class HostBlockPool final : public BlockPool {
 public:
  HostBlockPool(int64_t block_floats, int64_t max_blocks);
  ~HostBlockPool() override;
  float* data(int32_t b) const { return ptrs_[size_t(b)]; }
  float* const* block_ptrs() const { return ptrs_.data(); }
  void copy_block(int32_t src, int32_t dst) override;

 protected:
  void on_new_block(int32_t b) override;

 private:
  int64_t block_floats_;
  std::vector<float*> ptrs_;
};

// One group of layers' share of a shared pool: ids, reference counts, capacity and storage are
// the shared pool's; used() counts the blocks this group holds. in_use false: the model has no
// layers of this group (max_blocks() 0, as for an unused pool).
class PoolView final : public BlockPool {
 public:
  PoolView(BlockPool& shared, bool in_use)
      : BlockPool(in_use ? shared.max_blocks() : 0, shared.block_bytes()), shared_(shared) {}
  int32_t allocate() override {
    const int32_t b = shared_.allocate();
    ++mine_;
    return b;
  }
  void retain(int32_t b) override {
    if (shared_.refcount(b) == 0) ++mine_;  // a kept block revived
    shared_.retain(b);
  }
  void release(int32_t b) override {
    if (b < 0) return;
    if (shared_.refcount(b) == 1) --mine_;
    shared_.release(b);
  }
  int32_t refcount(int32_t b) const override { return shared_.refcount(b); }
  int64_t used() const override { return mine_; }
  int64_t allocated() const override { return shared_.allocated(); }
  const BlockPool& capacity() const override { return shared_; }
  BlockPool& shared() override { return shared_; }
  void copy_block(int32_t src, int32_t dst) override { shared_.copy_block(src, dst); }

 private:
  BlockPool& shared_;
  int64_t mine_ = 0;
};

struct SequenceState {
  int64_t len = 0;                 // tokens in the cache
  std::vector<int32_t> tokens;     // the tokens themselves (for prefix reuse)
  std::vector<int32_t> full_table; // block ids in the full-attention pool
  std::vector<int32_t> win_table;  // block ids in the window pool (-1 = released)
  std::vector<uint64_t> chain;     // prefix-cache entry of each full block (0 = none)
};

struct KVOptions {
  int64_t block_size = 16;
  int64_t window_retain = 256;     // extra window positions kept for rewinding
  int64_t max_chunk_tokens = 512;  // tokens per forward chunk (bounds activation memory)
  bool prefix_cache = true;        // keep full blocks for later sequences (prefix_cache.h)
};

// Prefix-cache counters: cached (kept, unreferenced) blocks, and tokens asked for / found by
// create_from_cache.
struct PrefixCacheStats {
  int64_t kept_blocks = 0, registered_blocks = 0, query_tokens = 0, hit_tokens = 0;
};

// A run of one item's tokens inside a forward chunk. Logits rows of a step are numbered in item
// order (n rows for an all_logits item, else one for its last token); out_row is the first row
// this run writes, if it writes any.
struct Chunk {
  int64_t seq;
  const int32_t* tokens;
  int64_t n;
  bool all_logits;
  bool last_of_item;
  int64_t item;
  int64_t out_row;
};

class SequenceTable {
 public:
  SequenceTable(const ModelConfig& cfg, KVOptions opt, BlockPool& full, BlockPool& win);
  ~SequenceTable();

  int64_t create();
  // A new sequence holding the longest cached prefix of tokens[0, n) that it can continue
  // from (at most n - 1 tokens, so the last token is always computed); *reused: its length.
  int64_t create_from_cache(const int32_t* tokens, int64_t n, int64_t* reused);
  int64_t fork(int64_t seq);
  void free(int64_t seq);
  // Rewinds to the first n tokens; false (nothing changed) when the window layers no longer
  // hold what position n needs.
  bool truncate(int64_t seq, int64_t n);
  SequenceState& at(int64_t seq);
  const SequenceState& at(int64_t seq) const;
  bool contains(int64_t seq) const { return seqs_.count(seq) != 0; }
  int64_t size() const { return int64_t(seqs_.size()); }

  // Everything a step could trip on (unknown or repeated sequences, empty runs, token ids,
  // context overflow, KV cache capacity), checked before any state changes.
  void validate(const std::vector<StepItem>& items) const;
  static int64_t logits_rows(const std::vector<StepItem>& items);
  // Calls run(group) for consecutive groups of at most max_chunk_tokens tokens; an item may
  // span groups, a sequence appears at most once per group.
  void for_each_chunk(const std::vector<StepItem>& items,
                      const std::function<void(const std::vector<Chunk>&)>& run) const;
  // Blocks for positions [len, new_len) of a sequence, copying shared ones first.
  void reserve(SequenceState& s, int64_t new_len);
  // Appends a chunk's tokens after its forward pass and releases window blocks now out of reach.
  void commit(const Chunk& ch);
  // [used, allocated, cap] of the full-attention blocks, then of the window blocks (used: the
  // group's own blocks; allocated and cap: those of the pool it draws on).
  std::vector<int64_t> stats() const;
  // Smaller chunks from now on (the engine's buffers were sized for the larger one).
  void set_max_chunk_tokens(int64_t n);
  PrefixCacheStats prefix_cache_stats() const;
  // Forgets every cached block that no sequence holds (they return to the free list).
  void clear_prefix_cache();

 private:
  void make_writable(BlockPool& pool, std::vector<int32_t>& table, int64_t first, int64_t last);
  void release_window(SequenceState& s);
  bool window_holds(const SequenceState& s, int64_t n) const;

  int64_t window_, max_context_, vocab_;
  KVOptions opt_;
  int64_t chunk_cap_ = 0;  // max_chunk_tokens at construction
  BlockPool& full_;
  BlockPool& win_;
  std::unordered_map<int64_t, SequenceState> seqs_;
  int64_t next_ = 1;
  std::unique_ptr<PrefixCache> cache_;  // null when off or without full-attention layers
  int64_t query_tokens_ = 0, hit_tokens_ = 0;
};

}  // namespace gptoss
