// CudaRunner: a step. SequenceTable validates and chunks it; each chunk becomes a plan
// (tokens, positions, block tables, attention groups, logit rows, sampling parameters) serialised
// into `meta` for the kernels, then runs eagerly or as a graph, and its outputs come back.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "engine_impl.cuh"

namespace gptoss::cuda {

void CudaRunner::Impl::forward_chunk(const StepPlan& plan, const StepOutputs& out) {
  const ModelConfig& c = cfg;
  const int64_t T = plan.rows();
  const int rpg = attn_rows_per_group(int(c.n_heads), int(c.n_kv));
  const StepOutput mode = out.kind;

  // ---- metadata (host): per-row table offsets and the attention groups of the plan's runs;
  // all full-attention tables, then all window tables, in one array.
  const int32_t nf = int32_t(plan.full_tables.size());
  std::vector<int32_t> row_full(static_cast<size_t>(T)), row_win(static_cast<size_t>(T));
  std::vector<AttnGroup> gf, gw;
  int max_span_full = 1, max_span_win = 1;
  for (const PlanRun& run : plan.runs) {
    for (int32_t i = 0; i < run.n; ++i) {
      row_full[size_t(run.first_row + i)] = run.full_off;
      row_win[size_t(run.first_row + i)] = nf + run.win_off;
    }
    for (int32_t i = 0; i < run.n; i += rpg) {
      const int32_t nr = std::min<int32_t>(rpg, run.n - i);
      const int32_t p0 = run.pos0 + i;
      gf.push_back(AttnGroup{run.first_row + i, nr, p0, run.full_off});
      gw.push_back(AttnGroup{run.first_row + i, nr, p0, nf + run.win_off});
      const int32_t last = p0 + nr - 1;
      max_span_full = std::max(max_span_full, last + 1);
      max_span_win = std::max(max_span_win, last - std::max<int32_t>(0, p0 - int32_t(c.window) + 1) + 1);
    }
  }
  const int64_t n_tab = std::max<int64_t>(1, int64_t(plan.full_tables.size() + plan.win_tables.size()));

  Shape p;
  p.T = int(T);
  p.ng = int(gf.size());
  p.R = int(plan.out_rows.size());
  p.mode = mode;
  p.lpn = mode == StepOutput::Sample ? out.logprobs : -1;
  p.lpl = p.lpn >= 0 ? out.logprob_vocab_limit : 0;
  p.pe = 0;
  const int64_t r0 = plan.out_row0;  // the step's output row of this chunk's first output
  int pe_n = 0;                      // real penalty entries (p.pe: the room for them)
  if (mode == StepOutput::Sample && out.penalties && p.R > 0) {
    pe_n = out.penalties->off[size_t(r0 + p.R)] - out.penalties->off[size_t(r0)];
    if (pe_n > 0) {
      p.pe = 64;
      while (p.pe < pe_n) p.pe *= 2;
    }
  }
  p.nsf = plan_splits(p, max_span_full);
  p.nsw = plan_splits(p, max_span_win);
  const int64_t total = o_tab(p) + n_tab;

  // The previous chunk's copy from staging (and its kernels reading meta) must be done before
  // either buffer is reallocated or overwritten, also after a chunk that threw midway.
  CUDA_CHECK(cudaStreamSynchronize(stream));
  ensure_meta(total);
  auto put = [&](int64_t off, const void* src, size_t bytes) {
    if (bytes) std::memcpy(staging + off, src, bytes);
  };
  put(0, plan.tokens.data(), size_t(T) * 4);
  put(o_pos(p), plan.positions.data(), size_t(T) * 4);
  put(o_rf(p), row_full.data(), size_t(T) * 4);
  put(o_rw(p), row_win.data(), size_t(T) * 4);
  put(o_gf(p), gf.data(), gf.size() * sizeof(AttnGroup));
  put(o_gw(p), gw.data(), gw.size() * sizeof(AttnGroup));
  put(o_lr(p), plan.out_rows.data(), plan.out_rows.size() * 4);
  if (mode == StepOutput::Sample && p.R > 0) put(o_sp(p), out.params + r0, size_t(p.R) * sizeof(SampleParams));
  if (p.pe > 0) {  // this chunk's rows of the penalty CSR, rebased to 0
    const Penalties& pen = *out.penalties;
    const int32_t e0 = pen.off[size_t(r0)];
    for (int r = 0; r <= p.R; ++r) staging[o_pen(p) + r] = pen.off[size_t(r0 + r)] - e0;
    put(o_pen(p) + p.R + 1, pen.id.data() + e0, size_t(pe_n) * 4);
    put(o_pen(p) + p.R + 1 + p.pe, pen.val.data() + 3 * size_t(e0), size_t(pe_n) * 12);
    ensure_pen_saved(p.pe);
  }
  put(o_tab(p), plan.full_tables.data(), plan.full_tables.size() * 4);
  put(o_tab(p) + nf, plan.win_tables.data(), plan.win_tables.size() * 4);
  if (plan.full_tables.empty() && plan.win_tables.empty()) staging[o_tab(p)] = 0;
  CUDA_CHECK(cudaMemcpyAsync(meta, staging, size_t(total) * 4, cudaMemcpyHostToDevice, stream));

  prof_on = false;
  prof_pending = profiling;
  prof_labels.clear();
  if (profiling && T <= kGraphMaxT) {
    run_profiled(p);
  } else if (plan.decode && opt.graphs && T <= kGraphMaxT) {
    run_graph(p);
  } else {
    prof_on = profiling;
    mark("start");
    enqueue_forward(p);
  }

  // ---- logits (or greedy tokens) of the rows that asked for them, consecutive in the output
  const int64_t V = c.vocab;
  if (p.R > kLogitRows) {  // more output rows than the logits buffer: the head in pieces (eager only)
    for (int h0 = 0; h0 < p.R; h0 += kLogitRows) {
      const int n = std::min(kLogitRows, p.R - h0);
      enqueue_head(p, h0, n);
      if (mode == StepOutput::Logits)
        CUDA_CHECK(cudaMemcpyAsync(out.logits + (r0 + h0) * V, logits, size_t(n) * size_t(V) * 4,
                                   cudaMemcpyDeviceToHost, stream));
    }
  }
  prof_on = false;
  if (p.R > 0) {
    if (mode == StepOutput::Logits) {
      if (p.R <= kLogitRows)
        CUDA_CHECK(cudaMemcpyAsync(out.logits + r0 * V, logits, size_t(p.R) * size_t(V) * 4, cudaMemcpyDeviceToHost,
                                   stream));
    } else
      CUDA_CHECK(cudaMemcpyAsync(out.tokens + r0, argmax_out, size_t(p.R) * 4, cudaMemcpyDeviceToHost, stream));
    if (p.lpn >= 0) {
      const size_t nn = size_t(p.lpn);
      CUDA_CHECK(cudaMemcpyAsync(out.chosen_lp + r0, lp_chosen, size_t(p.R) * 4, cudaMemcpyDeviceToHost, stream));
      if (nn) {
        CUDA_CHECK(cudaMemcpyAsync(out.top_ids + size_t(r0) * nn, lp_ids, size_t(p.R) * nn * 4,
                                   cudaMemcpyDeviceToHost, stream));
        CUDA_CHECK(cudaMemcpyAsync(out.top_lp + size_t(r0) * nn, lp_top, size_t(p.R) * nn * 4,
                                   cudaMemcpyDeviceToHost, stream));
      }
    }
  }
  CUDA_CHECK(cudaStreamSynchronize(stream));
  collect_profile();
}

int CudaRunner::Impl::plan_splits(const Shape& p, int max_span) const {
  AttnArgs a;
  a.T = p.T;
  a.n_groups = p.ng;
  a.kv.n_kv = int(cfg.n_kv);
  attn_plan(a, max_span, part_cap, sm_count);
  return a.n_splits;
}

}  // namespace gptoss::cuda
