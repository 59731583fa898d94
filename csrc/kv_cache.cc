#include "kv_cache.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <unordered_set>

#include "common.h"
#include "model.h"

namespace gptoss {

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---------------------------------------------------------------------------------------------
// Pools

int32_t BlockPool::allocate() {
  int32_t b;
  if (!free_.empty()) {
    b = free_.back();
    free_.pop_back();
  } else {
    if (int64_t(refs_.size()) >= max_blocks_)
      throw OutOfMemory("KV cache is full: " + std::to_string(max_blocks_) + " blocks of " +
                        std::to_string(block_bytes_ / 1024) + " KiB in use; free sequences or raise kv_cache_bytes");
    b = int32_t(refs_.size());
    on_new_block(b);
    refs_.push_back(0);
  }
  refs_[size_t(b)] = 1;
  ++used_;
  return b;
}

void BlockPool::release(int32_t b) {
  if (b < 0) return;
  if (--refs_[size_t(b)] == 0) {
    free_.push_back(b);
    --used_;
  }
}

HostBlockPool::HostBlockPool(int64_t block_floats, int64_t max_blocks)
    : BlockPool(max_blocks, block_floats * int64_t(sizeof(float))), block_floats_(block_floats) {}

HostBlockPool::~HostBlockPool() {
  for (float* p : ptrs_) std::free(p);
}

void HostBlockPool::on_new_block(int32_t) {
  size_t bytes = (size_t(block_floats_) * sizeof(float) + 63) / 64 * 64;
  float* p = static_cast<float*>(std::aligned_alloc(64, bytes));
  if (!p) throw OutOfMemory("cannot allocate a KV cache block of " + std::to_string(bytes) + " bytes");
  ptrs_.push_back(p);
}

void HostBlockPool::copy_block(int32_t src, int32_t dst) {
  std::memcpy(data(dst), data(src), size_t(block_floats_) * sizeof(float));
}

// ---------------------------------------------------------------------------------------------
// Sequences

SequenceTable::SequenceTable(const ModelConfig& cfg, KVOptions opt, BlockPool& full, BlockPool& win)
    : window_(cfg.window), max_context_(cfg.max_context), vocab_(cfg.vocab), opt_(opt), full_(full), win_(win) {
  GPTOSS_CHECK_ARG(opt_.block_size > 0 && opt_.block_size <= 4096, "block_size must be in [1, 4096]");
  GPTOSS_CHECK_ARG(opt_.max_chunk_tokens > 0, "max_chunk_tokens must be positive");
  chunk_cap_ = opt_.max_chunk_tokens;
  GPTOSS_CHECK_ARG(opt_.window_retain >= 0, "window_retain must be >= 0");
}

SequenceTable::~SequenceTable() {
  for (auto& kv : seqs_) {
    for (int32_t b : kv.second.full_table) full_.release(b);
    for (int32_t b : kv.second.win_table) win_.release(b);
  }
}

int64_t SequenceTable::create() {
  const int64_t id = next_++;
  seqs_.emplace(id, SequenceState{});
  return id;
}

SequenceState& SequenceTable::at(int64_t seq) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) throw InvalidArgument("unknown or freed sequence " + std::to_string(seq));
  return it->second;
}

const SequenceState& SequenceTable::at(int64_t seq) const { return const_cast<SequenceTable*>(this)->at(seq); }

int64_t SequenceTable::fork(int64_t seq) {
  SequenceState copy = at(seq);
  for (int32_t b : copy.full_table)
    if (b >= 0) full_.retain(b);
  for (int32_t b : copy.win_table)
    if (b >= 0) win_.retain(b);
  const int64_t id = next_++;
  seqs_.emplace(id, std::move(copy));
  return id;
}

void SequenceTable::free(int64_t seq) {
  SequenceState& s = at(seq);
  for (int32_t b : s.full_table) full_.release(b);
  for (int32_t b : s.win_table) win_.release(b);
  seqs_.erase(seq);
}

bool SequenceTable::truncate(int64_t seq, int64_t n) {
  SequenceState& s = at(seq);
  GPTOSS_CHECK_ARG(n >= 0 && n <= s.len, "truncate: n must be in [0, length]");
  const int64_t B = opt_.block_size;
  // The next query (position n) needs keys n-window+1 .. n-1 in the window layers.
  if (win_.max_blocks() > 0)
    for (int64_t p = std::max<int64_t>(0, n - window_ + 1); p < n; ++p) {
      const int64_t bi = p / B;
      if (bi >= int64_t(s.win_table.size()) || s.win_table[size_t(bi)] < 0) return false;
    }
  const int64_t keep = ceil_div(n, B);
  while (int64_t(s.full_table.size()) > keep) {
    full_.release(s.full_table.back());
    s.full_table.pop_back();
  }
  while (int64_t(s.win_table.size()) > keep) {
    win_.release(s.win_table.back());
    s.win_table.pop_back();
  }
  s.len = n;
  s.tokens.resize(size_t(n));
  return true;
}

std::vector<int64_t> SequenceTable::stats() const {
  return {full_.used(), full_.allocated(), full_.max_blocks(), win_.used(), win_.allocated(), win_.max_blocks()};
}

void SequenceTable::validate(const std::vector<StepItem>& items) const {
  std::unordered_set<int64_t> seen;
  int64_t need_full = 0, need_win = 0;
  const int64_t B = opt_.block_size;
  for (const auto& it : items) {
    const SequenceState& s = at(it.seq);
    if (!seen.insert(it.seq).second)
      throw InvalidArgument("sequence " + std::to_string(it.seq) + " appears twice in one batch");
    if (it.n <= 0) throw InvalidArgument("empty token list for sequence " + std::to_string(it.seq));
    for (int64_t i = 0; i < it.n; ++i)
      if (it.tokens[i] < 0 || it.tokens[i] >= vocab_)
        throw InvalidArgument("token id " + std::to_string(it.tokens[i]) + " at index " + std::to_string(i) +
                              " is out of range [0, " + std::to_string(vocab_) + ")");
    if (s.len + it.n > max_context_)
      throw ContextOverflow("sequence " + std::to_string(it.seq) + " would hold " + std::to_string(s.len + it.n) +
                            " tokens, more than the context limit of " + std::to_string(max_context_));
    const int64_t nb = ceil_div(s.len + it.n, B) - s.len / B + 1;  // new blocks + one copy-on-write
    need_full += nb;
    need_win += std::min(nb, ceil_div(window_ + opt_.window_retain + opt_.max_chunk_tokens, B) + 2);
  }
  if (full_.max_blocks() == 0) need_full = 0;  // no layers of that kind
  if (win_.max_blocks() == 0) need_win = 0;
  auto check = [](const BlockPool& p, int64_t need, const char* what) {
    if (need > 0 && p.used() + need > p.max_blocks())
      throw OutOfMemory(std::string("KV cache too small for this step (") + what + ": " +
                        std::to_string(p.used()) + " of " + std::to_string(p.max_blocks()) + " blocks in use, up to " +
                        std::to_string(need) + " more needed); free sequences or raise kv_cache_bytes");
  };
  const BlockPool &fc = full_.capacity(), &wc = win_.capacity();
  if (&fc == &wc) {
    check(fc, need_full + need_win, "full-attention and sliding-window layers");
  } else {
    check(fc, need_full, "full-attention pool");
    check(wc, need_win, "sliding-window pool");
  }
}

int64_t SequenceTable::logits_rows(const std::vector<StepItem>& items) {
  int64_t r = 0;
  for (const auto& it : items) r += it.all_logits ? it.n : 1;
  return r;
}

void SequenceTable::for_each_chunk(const std::vector<StepItem>& items,
                                   const std::function<void(const std::vector<Chunk>&)>& run) const {
  std::vector<Chunk> group;
  int64_t in_group = 0, row = 0;
  for (int64_t i = 0; i < int64_t(items.size()); ++i) {
    const StepItem& it = items[size_t(i)];
    int64_t done = 0;
    while (done < it.n) {
      const int64_t take = std::min(it.n - done, opt_.max_chunk_tokens - in_group);
      const bool last = done + take == it.n;
      group.push_back(Chunk{it.seq, it.tokens + done, take, it.all_logits, last, i, row});
      if (it.all_logits) row += take;
      else if (last) row += 1;
      done += take;
      in_group += take;
      if (in_group == opt_.max_chunk_tokens) {
        run(group);
        group.clear();
        in_group = 0;
      }
    }
  }
  if (!group.empty()) run(group);
}

void SequenceTable::make_writable(BlockPool& pool, std::vector<int32_t>& table, int64_t first, int64_t last) {
  for (int64_t bi = first; bi <= last && bi < int64_t(table.size()); ++bi) {
    const int32_t b = table[size_t(bi)];
    if (b >= 0 && pool.refcount(b) > 1) {
      const int32_t nb = pool.allocate();
      pool.copy_block(b, nb);
      pool.release(b);
      table[size_t(bi)] = nb;
    }
  }
}

void SequenceTable::reserve(SequenceState& s, int64_t new_len) {
  const int64_t B = opt_.block_size;
  const int64_t first = s.len / B, last = (new_len - 1) / B;
  for (auto* tab : {&s.full_table, &s.win_table}) {
    BlockPool& pool = tab == &s.full_table ? full_ : win_;
    if (pool.max_blocks() == 0) continue;  // no layers of this kind
    make_writable(pool, *tab, first, last);
    while (int64_t(tab->size()) <= last) tab->push_back(pool.allocate());
    for (int64_t bi = first; bi <= last; ++bi)  // never expected (those blocks are recent); safety
      if ((*tab)[size_t(bi)] < 0) (*tab)[size_t(bi)] = pool.allocate();
  }
}

void SequenceTable::commit(const Chunk& ch) {
  SequenceState& s = at(ch.seq);
  s.tokens.insert(s.tokens.end(), ch.tokens, ch.tokens + ch.n);
  s.len += ch.n;
  release_window(s);
}

void SequenceTable::release_window(SequenceState& s) {
  const int64_t B = opt_.block_size;
  const int64_t keep_from = s.len - window_ - opt_.window_retain + 1;
  for (int64_t bi = 0; bi < int64_t(s.win_table.size()); ++bi) {
    if ((bi + 1) * B - 1 >= keep_from) break;
    if (s.win_table[size_t(bi)] >= 0) {
      win_.release(s.win_table[size_t(bi)]);
      s.win_table[size_t(bi)] = -1;
    }
  }
}

void SequenceTable::set_max_chunk_tokens(int64_t n) {
  GPTOSS_CHECK_ARG(n > 0 && n <= chunk_cap_,
                   "max_chunk_tokens must be in [1, " + std::to_string(chunk_cap_) + "] (the engine's buffers)");
  opt_.max_chunk_tokens = n;
}

}  // namespace gptoss
