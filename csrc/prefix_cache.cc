#include "prefix_cache.h"

#include <algorithm>

namespace gptoss {

PrefixCache::PrefixCache(BlockPool& pool, int64_t block_size) : pool_(pool), B_(block_size) { pool_.set_keeper(this); }

PrefixCache::~PrefixCache() {
  pool_.set_keeper(nullptr);
  for (int32_t b : lru_) pool_.discard(b);
}

uint64_t PrefixCache::key(uint64_t parent, const int32_t* t) const {
  uint64_t h = parent * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull;
  for (int64_t i = 0; i < B_; ++i) {
    h ^= uint64_t(uint32_t(t[i])) + 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2);
    h *= 0xBF58476D1CE4E5B9ull;
  }
  return h ^ (h >> 31);
}

uint64_t PrefixCache::child(uint64_t parent, const int32_t* t) const {
  auto range = by_key_.equal_range(key(parent, t));
  for (auto it = range.first; it != range.second; ++it) {
    const Entry& e = entries_.at(it->second);
    if (e.parent == parent && std::equal(e.tokens.begin(), e.tokens.end(), t)) return it->second;
  }
  return 0;
}

void PrefixCache::register_full_blocks(SequenceState& s, int64_t first_block) {
  const int64_t full = s.len / B_;
  if (int64_t(s.chain.size()) < full) s.chain.resize(size_t(full), 0);
  for (int64_t bi = std::max<int64_t>(0, first_block); bi < full; ++bi) {
    uint64_t serial = s.chain[size_t(bi)];
    if (serial == 0 || !entries_.count(serial)) {
      const uint64_t parent = bi == 0 ? 0 : s.chain[size_t(bi) - 1];
      if (bi > 0 && (parent == 0 || !entries_.count(parent))) continue;  // the chain is broken here
      const int32_t* t = s.tokens.data() + bi * B_;
      serial = child(parent, t);  // the same prefix may be cached already, in another block
      if (serial == 0) {
        const int32_t b = s.full_table[size_t(bi)];
        if (b < 0 || by_block_.count(b)) continue;
        serial = next_serial_++;
        Entry e;
        e.parent = parent;
        e.block = b;
        e.tokens.assign(t, t + B_);
        entries_.emplace(serial, std::move(e));
        by_key_.emplace(key(parent, t), serial);
        children_.emplace(parent, serial);
        by_block_[b] = serial;
      }
      s.chain[size_t(bi)] = serial;
    }
    Entry& e = entries_.at(serial);
    const int32_t wb = bi < int64_t(s.win_table.size()) ? s.win_table[size_t(bi)] : -1;
    if (e.win < 0 && wb >= 0 && !by_block_.count(wb)) {
      e.win = wb;
      by_block_[wb] = serial;
    }
  }
}

PrefixCache::Match PrefixCache::match(const int32_t* tokens, int64_t n) const {
  Match m;
  uint64_t prev = 0;
  while (m.len + B_ <= n) {
    const uint64_t found = child(prev, tokens + m.len);
    if (!found) break;
    const Entry& e = entries_.at(found);
    m.full.push_back(e.block);
    m.win.push_back(e.win);
    m.chain.push_back(found);
    m.len += B_;
    prev = found;
  }
  // Part of one more block: the cached continuation sharing the most leading tokens.
  const int64_t rest = std::min(B_, n - m.len);
  int64_t best = 0;
  const Entry* part = nullptr;
  auto range = children_.equal_range(prev);
  for (auto it = range.first; it != range.second && rest > 0; ++it) {
    const Entry& e = entries_.at(it->second);
    int64_t c = 0;
    while (c < rest && e.tokens[size_t(c)] == tokens[m.len + c]) ++c;
    if (c > best) best = c, part = &e;
  }
  if (part != nullptr) {
    m.full.push_back(part->block);
    m.win.push_back(part->win);
    m.len += best;
  }
  return m;
}

bool PrefixCache::keep(int32_t b) {
  if (!by_block_.count(b)) return false;
  lru_.push_back(b);
  lru_pos_[b] = std::prev(lru_.end());
  return true;
}

void PrefixCache::drop_kept(int32_t b) {
  auto it = lru_pos_.find(b);
  if (it == lru_pos_.end()) return;
  lru_.erase(it->second);
  lru_pos_.erase(it);
}

void PrefixCache::revived(int32_t b) { drop_kept(b); }

int32_t PrefixCache::evict() {
  if (lru_.empty()) return -1;
  const int32_t b = lru_.front();
  drop_kept(b);
  const uint64_t serial = by_block_.at(b);
  Entry& e = entries_.at(serial);
  if (e.block == b) {
    forget(serial);  // and every entry chained after it: they can no longer be reached
  } else {
    e.win = -1;  // only the window-layer part goes
    by_block_.erase(b);
  }
  return b;
}

void PrefixCache::forget(uint64_t root) {
  std::vector<uint64_t> todo{root};
  while (!todo.empty()) {
    const uint64_t s = todo.back();
    todo.pop_back();
    auto eit = entries_.find(s);
    if (eit == entries_.end()) continue;
    const Entry& e = eit->second;
    for (auto r = children_.equal_range(s); r.first != r.second; ++r.first) todo.push_back(r.first->second);
    children_.erase(s);
    for (auto r = children_.equal_range(e.parent); r.first != r.second; ++r.first)
      if (r.first->second == s) {
        children_.erase(r.first);
        break;
      }
    for (auto r = by_key_.equal_range(key(e.parent, e.tokens.data())); r.first != r.second; ++r.first)
      if (r.first->second == s) {
        by_key_.erase(r.first);
        break;
      }
    for (int32_t blk : {e.block, e.win}) {
      if (blk < 0) continue;
      by_block_.erase(blk);
      if (lru_pos_.count(blk)) {  // kept: nobody holds it, so it is free now
        drop_kept(blk);
        pool_.discard(blk);
      }
    }
    entries_.erase(eit);
  }
}

void PrefixCache::clear() {
  while (!lru_.empty()) {
    const int32_t b = evict();
    pool_.discard(b);
  }
}

}  // namespace gptoss
