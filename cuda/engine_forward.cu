// CudaRunner: every kernel of one forward pass over the rows `meta` describes, and of the head
// (unembedding, argmax or sampling, log-probabilities).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "engine_impl.cuh"

namespace gptoss::cuda {

void CudaRunner::Impl::enqueue_forward(const Shape& p) {
  const ModelConfig& c = cfg;
  const int64_t H = c.hidden, Q = c.q_dim(), KV = c.kv_dim(), QKV = Q + 2 * KV, D = c.head_dim;
  const int64_t K = c.top_k, B = opt.block_size;
  const int32_t* d_tok = meta;
  const int32_t* d_pos = meta + o_pos(p);
  const AttnGroup* d_gf = reinterpret_cast<const AttnGroup*>(meta + o_gf(p));
  const AttnGroup* d_gw = reinterpret_cast<const AttnGroup*>(meta + o_gw(p));
  const int32_t* d_tables = meta + o_tab(p);

  cudaStream_t st = stream;
  const int Ti = p.T, Hi = int(H);
  const bool tc = p.T > opt.moe_gemv_tokens;
  MoeTiles mt = tiles;
  moe_plan(mt, tc, int(p.T * K), int(c.n_experts), opt.gemm_tiles);
  if (p.T == 1 && !tc) {  // one token: its k experts are distinct, no grouping needed
    mt.direct = int(K);
    mt.idx = ridx;
    mt.max_tiles = int(K);
  }

  embedding(d_tok, Ti, embed, Hi, x, st);
  rmsnorm(x, Ti, Hi, layers[0].attn_norm, c.rms_eps, t, st);
  mark("embedding + norm");
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const DevLayer& L = layers[size_t(l)];
    const bool sliding = c.sliding[size_t(l)];
    const bool sp = opt.tc_split;
    const int gt = opt.gemm_tiles;
    KVView kv;
    kv.pool = kv_pool->base;
    kv.block_elems = kv_pool->block_elems;
    kv.layer_offset = (sliding ? win_layers[size_t(l)] : full_layers[size_t(l)]) * 2 * c.n_kv * B * D;
    kv.block_size = int(B);
    kv.n_kv = int(c.n_kv);
    kv.head_dim = int(D);
    kv.bf16 = opt.kv_bf16;
    const int32_t* row_table = meta + (sliding ? o_rw(p) : o_rf(p));
    if (Ti <= kQkvRopeRows && opt.fuse_qkv_rope) {  // decode: one kernel
      QkvRopeArgs qa;
      qa.X = t; qa.ldx = Hi; qa.M = Ti; qa.K = Hi; qa.W = L.qkv_w; qa.bias = L.qkv_b; qa.qkv = qkv;
      qa.ld = int(QKV); qa.pos = d_pos; qa.row_table = row_table; qa.tables = d_tables;
      qa.nq = int(c.n_heads); qa.nk = int(c.n_kv); qa.half = int(D / 2); qa.inv_freq = inv_freq;
      qa.conc = c.rope_conc; qa.kv = kv;
      qkv_rope(qa, st);
      mark("qkv");
    } else {
      dense(t, Hi, nullptr, Ti, Hi, L.qkv_w, Hi, int(QKV), L.qkv_b, qkv, int(QKV), EPI_STORE, st, 0, sp, gt);
      mark("qkv");
      rope_kv_store(qkv, int(QKV), Ti, d_pos, row_table, d_tables, int(c.n_heads), int(c.n_kv), int(D / 2),
                    inv_freq, c.rope_conc, kv, st);
      mark("rope + kv store");
    }
    AttnArgs a;
    a.q = qkv;
    a.ldq = int(QKV);
    a.T = Ti;
    a.kv = kv;
    a.tables = d_tables;
    a.groups = sliding ? d_gw : d_gf;
    a.n_groups = p.ng;
    a.n_heads = int(c.n_heads);
    a.window = sliding ? int(c.window) : 0;
    a.scale = c.attn_scale;
    a.sinks = L.sinks;
    a.part = part;
    a.out = att;
    a.ldo = int(Q);
    a.split_len = 0;
    a.n_splits = sliding ? p.nsw : p.nsf;
    a.split = sp;
    a.arrivals = attn_arrivals;
    attention(a, st);
    mark(sliding ? "attention (window)" : "attention (full)");
    dense(att, int(Q), nullptr, Ti, int(Q), L.o_w, int(Q), Hi, L.o_b, x, Hi, EPI_ADD, st, 0, sp, gt);
    mark("attention out");
    norm_router(x, Ti, Hi, L.mlp_norm, c.rms_eps, t, L.router_w, L.router_b, int(c.n_experts), int(K), ridx, rw,
                st, &router_scr);
    mark("norm + router");
    if (!mt.direct) moe_route(ridx, int(p.T * K), int(c.n_experts), mt, st);
    if (!mt.direct) mark("expert grouping");
    MxWeights w1{L.mlp1_blocks, L.mlp1_scales, L.mlp1_b, int(2 * c.inter), Hi, int(c.n_experts)};
    MxWeights w2{L.mlp2_blocks, L.mlp2_scales, L.mlp2_b, Hi, int(c.inter), int(c.n_experts)};
    moe_mlp1(t, Hi, int(K), mt, w1, c.swiglu_alpha, c.swiglu_limit, act, tc, st, sp);
    mark("experts mlp1");
    const float* next_norm = l + 1 < c.n_layers ? layers[size_t(l + 1)].attn_norm : final_norm;
    const MoeCombine comb{x, next_norm, c.rms_eps, t, moe_arrivals};
    const bool combined = moe_mlp2(act, mt, w2, rw, ypairs, tc, st, sp, Ti == 1 ? &comb : nullptr);
    mark("experts mlp2");
    if (!combined) {
      add_rmsnorm(x, ypairs, int(K), Ti, Hi, next_norm, c.rms_eps, t, st);
      mark("combine + norm");
    }
  }
  if (p.R > 0 && p.R <= kLogitRows) enqueue_head(p, 0, p.R);
}

void CudaRunner::Impl::enqueue_head(const Shape& p, int r0, int n) {
  const ModelConfig& c = cfg;
  const int Hi = int(c.hidden);
  cudaStream_t st = stream;
  dense(t, Hi, meta + o_lr(p) + r0, n, Hi, unembed, Hi, int(c.vocab), nullptr, logits, int(c.vocab), EPI_STORE, st, 0,
        opt.tc_split, opt.gemm_tiles);
  mark("unembedding");
  if (p.mode == StepOutput::Argmax) argmax_rows(logits, n, c.vocab, argmax_out + r0, st, &argmax_scr);
  if (p.mode == StepOutput::Argmax) mark("argmax");
  const int32_t* pen_off = meta + o_pen(p) + r0;  // absolute entry indices of this piece's rows
  const int32_t* pen_id = meta + o_pen(p) + p.R + 1;
  const float* pen_val = reinterpret_cast<const float*>(meta + o_pen(p) + p.R + 1 + p.pe);
  if (p.pe > 0) apply_penalties(logits, n, c.vocab, pen_off, pen_id, pen_val, pen_saved, st);
  if (p.mode == StepOutput::Sample)
    sample_rows(logits, n, c.vocab, reinterpret_cast<const SampleParams*>(meta + o_sp(p)) + r0, argmax_out + r0, st,
                &sample_scr);
  if (p.pe > 0 && p.lpn >= 0) restore_penalties(logits, n, c.vocab, pen_off, pen_id, pen_saved, st);
  if (p.mode == StepOutput::Sample && p.lpn >= 0)  // of the raw logits, for the sampled tokens
    logprobs_rows(logits, n, c.vocab, p.lpl, argmax_out + r0, p.lpn, lp_chosen + r0,
                  lp_ids + int64_t(r0) * p.lpn, lp_top + int64_t(r0) * p.lpn, st);
  if (p.mode == StepOutput::Sample) mark(p.lpn >= 0 ? "sampling + logprobs" : "sampling");
}

}  // namespace gptoss::cuda
