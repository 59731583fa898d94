#include "kv_cache.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <unordered_set>

#include "common.h"
#include "model.h"
#include "prefix_cache.h"

namespace gptoss {

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---------------------------------------------------------------------------------------------
// Pools

int32_t BlockPool::allocate() {
  int32_t b;
  if (!free_.empty()) {
    b = free_.back();
    free_.pop_back();
  } else if (int64_t(refs_.size()) < max_blocks_) {
    b = int32_t(refs_.size());
    on_new_block(b);
    refs_.push_back(0);
  } else if (keeper_ != nullptr && (b = keeper_->evict()) >= 0) {
    --kept_;  // a cached block given up for this one
  } else {
    throw OutOfMemory("KV cache is full: " + std::to_string(max_blocks_) + " blocks of " +
                      std::to_string(block_bytes_ / 1024) + " KiB in use; free sequences or raise kv_cache_bytes");
  }
  refs_[size_t(b)] = 1;
  ++used_;
  return b;
}

void BlockPool::retain(int32_t b) {
  if (refs_[size_t(b)]++ == 0) {  // a kept block comes back into use
    --kept_;
    ++used_;
    if (keeper_ != nullptr) keeper_->revived(b);
  }
}

void BlockPool::release(int32_t b) {
  if (b < 0) return;
  if (--refs_[size_t(b)] == 0) {
    --used_;
    if (keeper_ != nullptr && keeper_->keep(b)) ++kept_;
    else free_.push_back(b);
  }
}

void BlockPool::discard(int32_t b) {
  --kept_;
  free_.push_back(b);
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
  if (opt_.prefix_cache && full_.max_blocks() > 0) cache_ = std::make_unique<PrefixCache>(full_.shared(), opt_.block_size);
}

SequenceTable::~SequenceTable() {
  cache_.reset();  // kept blocks go back to the pool, which outlives this table
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

int64_t SequenceTable::create_from_cache(const int32_t* tokens, int64_t n, int64_t* reused) {
  for (int64_t i = 0; i < n; ++i)
    if (tokens[i] < 0 || tokens[i] >= vocab_)
      throw InvalidArgument("token id " + std::to_string(tokens[i]) + " at index " + std::to_string(i) +
                            " is out of range [0, " + std::to_string(vocab_) + ")");
  *reused = 0;
  query_tokens_ += n;
  if (!cache_ || n <= 1) return create();
  const int64_t B = opt_.block_size;
  PrefixCache::Match m = cache_->match(tokens, n);
  SequenceState s;
  s.win_table = m.win;  // to test what the window layers would hold; replaced below
  // Continue where the last token still has to be computed, and the window layers hold the
  // keys the next query needs (a finished sequence has released most of its window blocks).
  int64_t len = std::min(m.len, n - 1);
  while (len > 0 && !window_holds(s, len)) len = (len - 1) / B * B;
  if (len == 0) return create();
  const int64_t nb = ceil_div(len, B);
  s.win_table.assign(size_t(nb), -1);
  for (int64_t bi = 0; bi < nb; ++bi) {
    full_.retain(m.full[size_t(bi)]);
    s.full_table.push_back(m.full[size_t(bi)]);
  }
  if (win_.max_blocks() > 0)
    for (int64_t p = std::max<int64_t>(0, len - window_ + 1) / B * B; p < len; p += B) {
      const int64_t bi = p / B;
      win_.retain(m.win[size_t(bi)]);
      s.win_table[size_t(bi)] = m.win[size_t(bi)];
    }
  s.chain.assign(m.chain.begin(), m.chain.begin() + std::min<int64_t>(int64_t(m.chain.size()), len / B));
  s.len = len;
  s.tokens.assign(tokens, tokens + len);
  *reused = len;
  hit_tokens_ += len;
  const int64_t id = next_++;
  seqs_.emplace(id, std::move(s));
  return id;
}

bool SequenceTable::window_holds(const SequenceState& s, int64_t n) const {
  // The next query (position n) needs keys n-window+1 .. n-1 in the window layers.
  if (win_.max_blocks() == 0) return true;
  const int64_t B = opt_.block_size;
  for (int64_t p = std::max<int64_t>(0, n - window_ + 1); p < n; p = (p / B + 1) * B) {
    const int64_t bi = p / B;
    if (bi >= int64_t(s.win_table.size()) || s.win_table[size_t(bi)] < 0) return false;
  }
  return true;
}

PrefixCacheStats SequenceTable::prefix_cache_stats() const {
  PrefixCacheStats st;
  st.kept_blocks = full_.capacity().kept();
  st.registered_blocks = cache_ ? cache_->entries() : 0;
  st.query_tokens = query_tokens_;
  st.hit_tokens = hit_tokens_;
  return st;
}

void SequenceTable::clear_prefix_cache() {
  if (cache_) cache_->clear();
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
  // Last blocks first: the prefix cache then gives up a prefix's tail before its head.
  for (auto b = s.full_table.rbegin(); b != s.full_table.rend(); ++b) full_.release(*b);
  for (auto b = s.win_table.rbegin(); b != s.win_table.rend(); ++b) win_.release(*b);
  seqs_.erase(seq);
}

bool SequenceTable::truncate(int64_t seq, int64_t n) {
  SequenceState& s = at(seq);
  GPTOSS_CHECK_ARG(n >= 0 && n <= s.len, "truncate: n must be in [0, length]");
  const int64_t B = opt_.block_size;
  if (!window_holds(s, n)) return false;
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
  if (int64_t(s.chain.size()) > n / B) s.chain.resize(size_t(n / B));
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
    // Shared blocks, and blocks the prefix cache holds (their contents must stay as they are).
    if (b >= 0 && (pool.refcount(b) > 1 || (cache_ && cache_->registered(b)))) {
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
  const int64_t before = s.len;
  s.tokens.insert(s.tokens.end(), ch.tokens, ch.tokens + ch.n);
  s.len += ch.n;
  if (cache_) cache_->register_full_blocks(s, before / opt_.block_size);  // before window blocks go
  release_window(s);
}

void SequenceTable::release_window(SequenceState& s) {
  const int64_t B = opt_.block_size;
  const int64_t keep_from = s.len - window_ - opt_.window_retain + 1;
  if (keep_from < B) return;
  // The released blocks are always a prefix of the table: find where it ends by walking back from
  // the last block wholly before keep_from (O(newly released), not O(length)), then release the
  // rest oldest first, as the prefix cache's least-recently-used order expects.
  const int64_t end = std::min<int64_t>(keep_from / B, int64_t(s.win_table.size()));
  int64_t first = end;
  while (first > 0 && s.win_table[size_t(first - 1)] >= 0) --first;
  for (int64_t bi = first; bi < end; ++bi) {
    win_.release(s.win_table[size_t(bi)]);
    s.win_table[size_t(bi)] = -1;
  }
}

void SequenceTable::set_max_chunk_tokens(int64_t n) {
  GPTOSS_CHECK_ARG(n > 0 && n <= chunk_cap_,
                   "max_chunk_tokens must be in [1, " + std::to_string(chunk_cap_) + "] (the engine's buffers)");
  opt_.max_chunk_tokens = n;
}

}  // namespace gptoss
