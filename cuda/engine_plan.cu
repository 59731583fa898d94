// CudaEngine: a step. SequenceTable validates and chunks it; each chunk becomes a plan
// (tokens, positions, block tables, attention groups, logit rows, sampling parameters) serialised
// into `meta` for the kernels, then runs eagerly or as a graph, and its outputs come back.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "engine_impl.cuh"

namespace gptoss::cuda {

void CudaEngine::Impl::run(const std::vector<StepItem>& items_in, float* out, int32_t* out_tok, const SP* sp,
                           const std::function<bool()>& interrupted, const LogprobOut& lp) {
  std::vector<StepItem> items = items_in;
  if (out_tok)
    for (auto& it : items) it.all_logits = false;
  seqs->validate(items);
  bool first = true;
  seqs->for_each_chunk(items, [&](const std::vector<Chunk>& g) {
    if (!first && interrupted && interrupted()) throw Interrupted("step interrupted between chunks");
    first = false;
    forward_chunk(g, out, out_tok, sp, lp);
  });
}

void CudaEngine::Impl::forward_chunk(const std::vector<Chunk>& chunks, float* out, int32_t* out_tok, const SP* sp,
                                     const LogprobOut& lp) {
  const ModelConfig& c = cfg;
  int64_t T = 0;
  bool decode = true;  // one token per sequence, each giving its logits: graph-eligible
  for (const auto& ch : chunks) {
    T += ch.n;
    decode = decode && ch.n == 1 && ch.last_of_item;
  }
  for (const auto& ch : chunks) {
    SequenceState& s = seqs->at(ch.seq);
    seqs->reserve(s, s.len + ch.n);
  }
  const int rpg = attn_rows_per_group(int(c.n_heads), int(c.n_kv));

  // ---- metadata (host): tokens, positions, per-row table offsets, attention groups,
  // logit rows, block tables (all full-attention tables, then all window tables)
  std::vector<int32_t> tok, pos, row_full, row_win, lrows, tab_full, tab_win;
  std::vector<AttnGroup> gf, gw;
  int max_span_full = 1, max_span_win = 1;
  {
    int64_t r = 0;
    for (const auto& ch : chunks) {
      const SequenceState& s = seqs->at(ch.seq);
      const int32_t off_f = int32_t(tab_full.size()), off_w = int32_t(tab_win.size());
      tab_full.insert(tab_full.end(), s.full_table.begin(), s.full_table.end());
      tab_win.insert(tab_win.end(), s.win_table.begin(), s.win_table.end());
      for (int64_t i = 0; i < ch.n; ++i) {
        tok.push_back(ch.tokens[i]);
        pos.push_back(int32_t(s.len + i));
        row_full.push_back(off_f);
        row_win.push_back(off_w);
      }
      for (int64_t i = 0; i < ch.n; i += rpg) {
        const int32_t nr = int32_t(std::min<int64_t>(rpg, ch.n - i));
        const int32_t p0 = int32_t(s.len + i);
        gf.push_back(AttnGroup{int32_t(r + i), nr, p0, off_f});
        gw.push_back(AttnGroup{int32_t(r + i), nr, p0, off_w});
        const int32_t last = p0 + nr - 1;
        max_span_full = std::max(max_span_full, last + 1);
        max_span_win = std::max(max_span_win, last - std::max<int32_t>(0, p0 - int32_t(c.window) + 1) + 1);
      }
      if (ch.all_logits || ch.last_of_item) {
        if (ch.all_logits)
          for (int64_t i = 0; i < ch.n; ++i) lrows.push_back(int32_t(r + i));
        else
          lrows.push_back(int32_t(r + ch.n - 1));
      }
      r += ch.n;
    }
  }
  // Window tables follow the full ones in one array.
  const int32_t nf = int32_t(tab_full.size());
  for (auto& v : row_win) v += nf;
  for (auto& g : gw) g.table_off += nf;
  tab_full.insert(tab_full.end(), tab_win.begin(), tab_win.end());
  if (tab_full.empty()) tab_full.push_back(0);

  Shape p;
  p.T = int(T);
  p.ng = int(gf.size());
  p.R = int(lrows.size());
  p.mode = out ? LOGITS : (sp ? SAMPLE : ARGMAX);
  p.lpn = p.mode == SAMPLE ? lp.n : -1;
  p.lpl = p.lpn >= 0 ? lp.vocab_limit : 0;
  p.pe = 0;
  int pe_n = 0;  // real penalty entries (p.pe: the room for them)
  if (p.mode == SAMPLE && lp.pen && p.R > 0) {
    const Chunk* f = nullptr;
    for (const auto& ch : chunks)
      if (ch.last_of_item) {
        f = &ch;
        break;
      }
    pe_n = lp.pen->off[size_t(f->out_row + p.R)] - lp.pen->off[size_t(f->out_row)];
    if (pe_n > 0) {
      p.pe = 64;
      while (p.pe < pe_n) p.pe *= 2;
    }
  }
  p.nsf = plan_splits(p, max_span_full);
  p.nsw = plan_splits(p, max_span_win);
  const int64_t total = o_tab(p) + int64_t(tab_full.size());

  // The previous chunk's copy from staging (and its kernels reading meta) must be done before
  // either buffer is reallocated or overwritten, also after a chunk that threw midway.
  CUDA_CHECK(cudaStreamSynchronize(stream));
  ensure_meta(total);
  auto put = [&](int64_t off, const void* src, size_t bytes) {
    if (bytes) std::memcpy(staging + off, src, bytes);
  };
  put(0, tok.data(), size_t(T) * 4);
  put(o_pos(p), pos.data(), size_t(T) * 4);
  put(o_rf(p), row_full.data(), size_t(T) * 4);
  put(o_rw(p), row_win.data(), size_t(T) * 4);
  put(o_gf(p), gf.data(), gf.size() * sizeof(AttnGroup));
  put(o_gw(p), gw.data(), gw.size() * sizeof(AttnGroup));
  put(o_lr(p), lrows.data(), lrows.size() * 4);
  const Chunk* first = nullptr;  // the first chunk with an output row; rows are consecutive
  for (const auto& ch : chunks)
    if (ch.all_logits || ch.last_of_item) {
      first = &ch;
      break;
    }
  if (p.mode == SAMPLE && p.R > 0) put(o_sp(p), sp + first->out_row, size_t(p.R) * sizeof(SP));
  if (p.pe > 0) {  // this chunk's rows of the penalty CSR, rebased to 0
    const Penalties& pen = *lp.pen;
    const int32_t e0 = pen.off[size_t(first->out_row)];
    for (int r = 0; r <= p.R; ++r) staging[o_pen(p) + r] = pen.off[size_t(first->out_row + r)] - e0;
    put(o_pen(p) + p.R + 1, pen.id.data() + e0, size_t(pe_n) * 4);
    put(o_pen(p) + p.R + 1 + p.pe, pen.val.data() + 3 * size_t(e0), size_t(pe_n) * 12);
    ensure_pen_saved(p.pe);
  }
  put(o_tab(p), tab_full.data(), tab_full.size() * 4);
  CUDA_CHECK(cudaMemcpyAsync(meta, staging, size_t(total) * 4, cudaMemcpyHostToDevice, stream));

  prof_on = false;
  prof_pending = profiling;
  prof_labels.clear();
  if (profiling && T <= kGraphMaxT) {
    run_profiled(p);
  } else if (decode && opt.graphs && T <= kGraphMaxT) {
    run_graph(p);
  } else {
    prof_on = profiling;
    mark("start");
    enqueue_forward(p);
  }

  // ---- logits (or greedy tokens) of the rows that asked for them, consecutive in the output
  if (p.R > kLogitRows) {  // more output rows than the logits buffer: the head in pieces (eager only)
    for (int r0 = 0; r0 < p.R; r0 += kLogitRows) {
      const int n = std::min(kLogitRows, p.R - r0);
      enqueue_head(p, r0, n);
      if (out)
        CUDA_CHECK(cudaMemcpyAsync(out + (first->out_row + r0) * c.vocab, logits, size_t(n) * size_t(c.vocab) * 4,
                                   cudaMemcpyDeviceToHost, stream));
    }
  }
  prof_on = false;
  if (p.R > 0) {
    if (out) {
      if (p.R <= kLogitRows)
        CUDA_CHECK(cudaMemcpyAsync(out + first->out_row * c.vocab, logits, size_t(p.R) * size_t(c.vocab) * 4,
                                   cudaMemcpyDeviceToHost, stream));
    } else
      CUDA_CHECK(cudaMemcpyAsync(out_tok + first->out_row, argmax_out, size_t(p.R) * 4, cudaMemcpyDeviceToHost,
                                 stream));
    if (p.lpn >= 0) {
      const size_t r0 = size_t(first->out_row), nn = size_t(p.lpn);
      CUDA_CHECK(cudaMemcpyAsync(lp.chosen + r0, lp_chosen, size_t(p.R) * 4, cudaMemcpyDeviceToHost, stream));
      if (nn) {
        CUDA_CHECK(cudaMemcpyAsync(lp.ids + r0 * nn, lp_ids, size_t(p.R) * nn * 4, cudaMemcpyDeviceToHost, stream));
        CUDA_CHECK(cudaMemcpyAsync(lp.top + r0 * nn, lp_top, size_t(p.R) * nn * 4, cudaMemcpyDeviceToHost, stream));
      }
    }
  }
  CUDA_CHECK(cudaStreamSynchronize(stream));
  collect_profile();

  for (const auto& ch : chunks) seqs->commit(ch);
}

int CudaEngine::Impl::plan_splits(const Shape& p, int max_span) const {
  AttnArgs a;
  a.T = p.T;
  a.n_groups = p.ng;
  a.kv.n_kv = int(cfg.n_kv);
  attn_plan(a, max_span, part_cap, sm_count);
  return a.n_splits;
}

}  // namespace gptoss::cuda
