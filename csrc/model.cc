// The forward pass on the CPU (spec section 2) and the sequence / KV-cache bookkeeping.
#include "model.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <unordered_set>

#include "common.h"
#include "cpu/matmul.h"
#include "cpu/ops.h"

namespace gptoss {

namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

Engine::Engine(ModelConfig cfg, std::unique_ptr<TensorSource> src, const std::string& layout, EngineOptions opt)
    : cfg_(std::move(cfg)), opt_(opt), src_(std::move(src)) {
  cfg_.validate();
  GPTOSS_CHECK_ARG(opt_.block_size > 0 && opt_.block_size <= 4096, "block_size must be in [1, 4096]");
  GPTOSS_CHECK_ARG(opt_.max_chunk_tokens > 0, "max_chunk_tokens must be positive");
  GPTOSS_CHECK_ARG(opt_.window_retain >= 0, "window_retain must be >= 0");
  GPTOSS_CHECK_ARG(opt_.kv_cache_bytes > 0, "kv_cache_bytes must be positive");
  w_ = bind_weights(cfg_, *src_, layout);
  if (opt_.threads > 0) omp_set_num_threads(opt_.threads);

  full_layers_.assign(cfg_.n_layers, -1);
  win_layers_.assign(cfg_.n_layers, -1);
  int64_t nf = 0, nw = 0;
  for (int64_t l = 0; l < cfg_.n_layers; ++l) {
    if (cfg_.sliding[l]) win_layers_[l] = nw++;
    else full_layers_[l] = nf++;
  }
  const int64_t per_layer = 2 * cfg_.n_kv * opt_.block_size * cfg_.head_dim;  // floats: K and V
  const int64_t fb = std::max<int64_t>(1, nf) * per_layer, wb = std::max<int64_t>(1, nw) * per_layer;
  // Split the byte budget between the pools in proportion to their block sizes.
  const int64_t blocks = std::max<int64_t>(2, opt_.kv_cache_bytes / (4 * (fb + wb)));
  full_pool_ = std::make_unique<BlockPool>(fb, nf ? blocks : 0);
  win_pool_ = std::make_unique<BlockPool>(wb, nw ? blocks : 0);
}

Engine::~Engine() {
  for (auto& kv : seqs_) {
    for (int32_t b : kv.second.full_table) full_pool_->release(b);
    for (int32_t b : kv.second.win_table) win_pool_->release(b);
  }
}

// ---------------------------------------------------------------------------------------------
// Sequences

int64_t Engine::new_sequence() {
  int64_t id = next_seq_++;
  seqs_.emplace(id, SequenceState{});
  return id;
}

static SequenceState& find_seq(std::unordered_map<int64_t, SequenceState>& m, int64_t id) {
  auto it = m.find(id);
  if (it == m.end()) throw InvalidArgument("unknown or freed sequence " + std::to_string(id));
  return it->second;
}

int64_t Engine::fork(int64_t seq) {
  SequenceState copy = find_seq(seqs_, seq);
  for (int32_t b : copy.full_table) if (b >= 0) full_pool_->retain(b);
  for (int32_t b : copy.win_table) if (b >= 0) win_pool_->retain(b);
  int64_t id = next_seq_++;
  seqs_.emplace(id, std::move(copy));
  return id;
}

void Engine::free_sequence(int64_t seq) {
  SequenceState& s = find_seq(seqs_, seq);
  for (int32_t b : s.full_table) full_pool_->release(b);
  for (int32_t b : s.win_table) win_pool_->release(b);
  seqs_.erase(seq);
}

int64_t Engine::length(int64_t seq) const {
  return find_seq(const_cast<std::unordered_map<int64_t, SequenceState>&>(seqs_), seq).len;
}

const std::vector<int32_t>& Engine::tokens(int64_t seq) const {
  return find_seq(const_cast<std::unordered_map<int64_t, SequenceState>&>(seqs_), seq).tokens;
}

bool Engine::truncate(int64_t seq, int64_t n) {
  SequenceState& s = find_seq(seqs_, seq);
  GPTOSS_CHECK_ARG(n >= 0 && n <= s.len, "truncate: n must be in [0, length]");
  const int64_t B = opt_.block_size;
  // The next query (position n) needs keys n-window+1 .. n-1 in the window layers.
  for (int64_t p = std::max<int64_t>(0, n - cfg_.window + 1); p < n; p += 1) {
    int64_t bi = p / B;
    if (bi >= int64_t(s.win_table.size()) || s.win_table[bi] < 0) return false;
  }
  const int64_t keep = ceil_div(n, B);
  while (int64_t(s.full_table.size()) > keep) { full_pool_->release(s.full_table.back()); s.full_table.pop_back(); }
  while (int64_t(s.win_table.size()) > keep) { win_pool_->release(s.win_table.back()); s.win_table.pop_back(); }
  s.len = n;
  s.tokens.resize(size_t(n));
  return true;
}

std::vector<int64_t> Engine::kv_stats() const {
  return {full_pool_->used(), full_pool_->allocated(), full_pool_->max_blocks(),
          win_pool_->used(), win_pool_->allocated(), win_pool_->max_blocks()};
}

// Blocks [first, last] of `table` will be written: copy any that are shared.
void Engine::make_writable(BlockPool& pool, std::vector<int32_t>& table, int64_t first, int64_t last) {
  for (int64_t bi = first; bi <= last && bi < int64_t(table.size()); ++bi) {
    int32_t b = table[bi];
    if (b >= 0 && pool.refcount(b) > 1) {
      int32_t nb = pool.allocate();
      std::memcpy(pool.data(nb), pool.data(b), size_t(pool.block_floats()) * sizeof(float));
      pool.release(b);
      table[bi] = nb;
    }
  }
}

void Engine::reserve(SequenceState& s, int64_t new_len) {
  const int64_t B = opt_.block_size;
  const int64_t first = s.len / B, last = (new_len - 1) / B;
  for (auto* pt : {&s.full_table, &s.win_table}) {
    BlockPool& pool = (pt == &s.full_table) ? *full_pool_ : *win_pool_;
    if (pool.max_blocks() == 0) continue;  // no layers of this kind
    make_writable(pool, *pt, first, last);
    while (int64_t(pt->size()) <= last) pt->push_back(pool.allocate());
    for (int64_t bi = first; bi <= last; ++bi)
      if ((*pt)[bi] < 0) (*pt)[bi] = pool.allocate();  // cannot happen for fresh positions; safety
  }
}

void Engine::release_window(SequenceState& s) {
  const int64_t B = opt_.block_size;
  const int64_t keep_from = s.len - cfg_.window - opt_.window_retain + 1;
  for (int64_t bi = 0; bi < int64_t(s.win_table.size()); ++bi) {
    if ((bi + 1) * B - 1 >= keep_from) break;
    if (s.win_table[bi] >= 0) {
      win_pool_->release(s.win_table[bi]);
      s.win_table[bi] = -1;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Batched step

int64_t Engine::logits_rows(const std::vector<StepItem>& items) const {
  int64_t r = 0;
  for (const auto& it : items) r += it.all_logits ? it.n : 1;
  return r;
}

void Engine::step(const std::vector<StepItem>& items, float* out) {
  // Validate everything first: a rejected call changes nothing.
  std::unordered_set<int64_t> seen;
  int64_t need_full = 0, need_win = 0;
  const int64_t B = opt_.block_size;
  for (const auto& it : items) {
    auto sit = seqs_.find(it.seq);
    if (sit == seqs_.end()) throw InvalidArgument("unknown or freed sequence " + std::to_string(it.seq));
    if (!seen.insert(it.seq).second)
      throw InvalidArgument("sequence " + std::to_string(it.seq) + " appears twice in one batch");
    if (it.n <= 0) throw InvalidArgument("empty token list for sequence " + std::to_string(it.seq));
    for (int64_t i = 0; i < it.n; ++i)
      if (it.tokens[i] < 0 || it.tokens[i] >= cfg_.vocab)
        throw InvalidArgument("token id " + std::to_string(it.tokens[i]) + " at index " + std::to_string(i) +
                              " is out of range [0, " + std::to_string(cfg_.vocab) + ")");
    const SequenceState& s = sit->second;
    if (s.len + it.n > cfg_.max_context)
      throw ContextOverflow("sequence " + std::to_string(it.seq) + " would hold " + std::to_string(s.len + it.n) +
                            " tokens, more than the context limit of " + std::to_string(cfg_.max_context));
    const int64_t nb = ceil_div(s.len + it.n, B) - s.len / B + 1;  // new blocks + one copy-on-write
    need_full += nb;
    need_win += std::min(nb, ceil_div(cfg_.window + opt_.window_retain + opt_.max_chunk_tokens, B) + 2);
  }
  auto check_pool = [](const BlockPool& p, int64_t need, const char* what) {
    if (p.max_blocks() > 0 && p.used() + need > p.max_blocks())
      throw OutOfMemory(std::string("KV cache too small for this step (") + what + " pool: " +
                        std::to_string(p.used()) + " of " + std::to_string(p.max_blocks()) +
                        " blocks in use, up to " + std::to_string(need) +
                        " more needed); free sequences or raise kv_cache_bytes");
  };
  check_pool(*full_pool_, need_full, "full-attention");
  check_pool(*win_pool_, need_win, "sliding-window");

  // Cut the token stream into chunks of at most max_chunk_tokens; an item may span chunks.
  std::vector<Chunk> group;
  int64_t in_group = 0;
  float* o = out;
  for (const auto& it : items) {
    int64_t done = 0;
    while (done < it.n) {
      const int64_t take = std::min(it.n - done, opt_.max_chunk_tokens - in_group);
      const bool last = done + take == it.n;
      Chunk c{it.seq, it.tokens + done, take, it.all_logits, last, o};
      group.push_back(c);
      if (it.all_logits) o += take * cfg_.vocab;
      else if (last) o += cfg_.vocab;
      done += take;
      in_group += take;
      if (in_group == opt_.max_chunk_tokens) {
        forward_chunk(group);
        group.clear();
        in_group = 0;
      }
    }
  }
  if (!group.empty()) forward_chunk(group);
}

}  // namespace gptoss
