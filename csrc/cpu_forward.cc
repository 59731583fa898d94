// The CPU runner's forward pass over one chunk (a StepPlan): a ragged batch of token runs from
// distinct sequences, every layer, and the logits the plan asks for. Spec section 2; fp32
// activations.
#include <algorithm>
#include <cmath>

#include "common.h"
#include "cpu/attention.h"
#include "cpu/matmul.h"
#include "cpu/ops.h"
#include "cpu_runner.h"

namespace gptoss {

void CpuRunner::forward(const StepPlan& plan, const StepOutputs& out) {
  const ModelConfig& c = cfg_;
  const int64_t H = c.hidden, I = c.inter, E = c.n_experts, K = c.top_k;
  const int64_t Q = c.q_dim(), KV = c.kv_dim(), D = c.head_dim, half = D / 2;
  const int64_t Bs = opt_.kv.block_size;

  const int64_t T = plan.rows();
  // Per row: its position and its sequence's block tables (the plan's, blocks already reserved).
  const int32_t* tok = plan.tokens.data();
  std::vector<int64_t> pos(T);
  std::vector<const int32_t*> row_full(T), row_win(T);
  for (const PlanRun& run : plan.runs)
    for (int32_t i = 0; i < run.n; ++i) {
      const int64_t r = run.first_row + i;
      pos[r] = plan.positions[r];
      row_full[r] = plan.full_tables.data() + run.full_off;
      row_win[r] = plan.win_tables.data() + run.win_off;
    }

  // Activation buffers, carved out of one reusable allocation.
  const int64_t need = T * (H /*x*/ + H /*t*/ + Q /*q*/ + 2 * KV /*k,v*/ + Q /*att*/ + H /*tmp*/ + H /*moe*/ +
                            E /*router*/ + K /*w*/ + D /*rope*/ + K /*idx (as float slots)*/) +
                       T * (2 * I + I + H) /*expert scratch*/ + T * H /*gather*/;
  if (int64_t(buf_.size()) < need) buf_.assign(size_t(need), 0.f);
  float* p = buf_.data();
  auto take = [&](int64_t n) { float* r = p; p += n; return r; };
  float* x = take(T * H);
  float* t = take(T * H);
  float* q = take(T * Q);
  float* k = take(T * KV);
  float* v = take(T * KV);
  float* att = take(T * Q);
  float* tmp = take(T * H);
  float* moe = take(T * H);
  float* rl = take(T * E);
  float* rw = take(T * K);
  float* cs = take(T * D);
  int32_t* ridx = reinterpret_cast<int32_t*>(take(T * K));
  float* h1 = take(T * 2 * I);
  float* act = take(T * I);
  float* y = take(T * H);
  float* xg = take(T * H);

  // Dense products: the int8 copies for small steps when enabled, else the bf16 weights as stored.
  const bool q8 = !q8_layers_.empty() && T <= opt_.int8_max_tokens;
  auto dense = [&](const float* X, int64_t K_, const uint16_t* W, const cpu::Q8Matrix* Wq, int64_t N, float* Y) {
    if (q8) cpu::matmul_q8(X, T, K_, *Wq, Y, N);
    else cpu::matmul_bf16(X, T, K_, K_, W, N, K_, nullptr, Y, N, opt_.precision);
  };

  cpu::embedding(tok, T, w_.embed, H, x);
  cpu::rope_table(pos.data(), T, c.inv_freq.data(), half, c.rope_conc, cs);

  std::vector<cpu::KVLayerView> views(T);
  std::vector<int64_t> counts(E), offsets(E + 1);
  std::vector<int32_t> order(T * K);

  for (int64_t l = 0; l < c.n_layers; ++l) {
    const LayerWeights& L = w_.layers[l];
    const bool sliding = c.sliding[l];

    // ---- attention block
    cpu::rmsnorm(x, T, H, L.attn_norm.data(), c.rms_eps, t);
    const LayerQ8* LQ = q8 ? &q8_layers_[size_t(l)] : nullptr;
    dense(t, H, L.q_w, LQ ? &LQ->q : nullptr, Q, q);
    dense(t, H, L.k_w, LQ ? &LQ->k : nullptr, KV, k);
    dense(t, H, L.v_w, LQ ? &LQ->v : nullptr, KV, v);
    add_bias_rows(q, T, Q, L.q_b.data());
    add_bias_rows(k, T, KV, L.k_b.data());
    add_bias_rows(v, T, KV, L.v_b.data());
    cpu::rope_apply(q, T, Q, c.n_heads, half, cs);
    cpu::rope_apply(k, T, KV, c.n_kv, half, cs);

    const int64_t li = sliding ? win_layers_[l] : full_layers_[l];
    for (int64_t r = 0; r < T; ++r)
      views[r] = {kv_pool_->block_ptrs(), sliding ? row_win[r] : row_full[r], li * 2 * c.n_kv * Bs * D, Bs};
    cpu::kv_store(k, KV, v, KV, T, pos.data(), views.data(), c.n_kv, D);
    cpu::attention(q, Q, T, pos.data(), views.data(), c.n_heads, c.n_kv, D, c.attn_scale, L.sinks.data(),
                   sliding ? c.window : 0, att);
    dense(att, Q, L.o_w, LQ ? &LQ->o : nullptr, H, tmp);
    // The element-wise passes run on every thread for longer steps (each would otherwise leave
    // the other threads waiting).
#pragma omp parallel for if (T > 8)
    for (int64_t r = 0; r < T; ++r)
      for (int64_t i = 0; i < H; ++i) x[r * H + i] += tmp[r * H + i] + L.o_b[i];

    // ---- MoE block
    cpu::rmsnorm(x, T, H, L.mlp_norm.data(), c.rms_eps, t);
    cpu::matmul_bf16(t, T, H, H, L.router_w, E, H, nullptr, rl, E);  // fp32 always (EngineOptions)
    add_bias_rows(rl, T, E, L.router_b.data());
    cpu::router_topk_softmax(rl, T, E, K, ridx, rw);

    // Group (row, slot) pairs by expert so each selected expert's weights are read once.
    std::fill(counts.begin(), counts.end(), 0);
    for (int64_t i = 0; i < T * K; ++i) counts[ridx[i]]++;
    offsets[0] = 0;
    for (int64_t e = 0; e < E; ++e) offsets[e + 1] = offsets[e] + counts[e];
    {
      std::vector<int64_t> fill(offsets.begin(), offsets.end() - 1);
      for (int64_t i = 0; i < T * K; ++i) order[fill[ridx[i]]++] = int32_t(i);
    }
    std::fill(moe, moe + T * H, 0.f);
    const int64_t nb1 = H / 32, nb2 = I / 32;
    for (int64_t e = 0; e < E; ++e) {
      const int64_t m = counts[e];
      if (m == 0) continue;
      const int32_t* sel = order.data() + offsets[e];
      const float* xin = t;
      if (!(m == T && T == 1)) {
#pragma omp parallel for if (m > 8)
        for (int64_t j = 0; j < m; ++j) std::memcpy(xg + j * H, t + (sel[j] / K) * H, H * sizeof(float));
        xin = xg;
      }
      cpu::matmul_mxfp4(xin, m, H, H, L.mlp1_blocks + e * 2 * I * nb1 * 16, L.mlp1_scales + e * 2 * I * nb1,
                        2 * I, nullptr, h1, 2 * I, opt_.precision);
      add_bias_rows(h1, m, 2 * I, L.mlp1_b.data() + e * 2 * I);
      cpu::swiglu(h1, m, I, c.swiglu_alpha, c.swiglu_limit, act);
      cpu::matmul_mxfp4(act, m, I, I, L.mlp2_blocks + e * H * nb2 * 16, L.mlp2_scales + e * H * nb2, H,
                        nullptr, y, H, opt_.precision);
      const float* b2 = L.mlp2_b.data() + e * H;
#pragma omp parallel for if (m > 8)  // distinct rows: a token picks an expert once
      for (int64_t j = 0; j < m; ++j) {
        const int64_t r = sel[j] / K;
        const float wgt = rw[sel[j]];
        float* dst = moe + r * H;
        const float* src = y + j * H;
        for (int64_t i = 0; i < H; ++i) dst[i] += (src[i] + b2[i]) * wgt;
      }
    }
#pragma omp parallel for if (T > 8)
    for (int64_t i = 0; i < T * H; ++i) x[i] += moe[i];
  }

  // ---- logits for the rows that asked for them. Those rows are consecutive in the output.
  if (!plan.out_rows.empty()) {
    const int64_t R = int64_t(plan.out_rows.size());
    float* out0 = out.logits + plan.out_row0 * c.vocab;
    for (int64_t j = 0; j < R; ++j) std::memcpy(xg + j * H, x + int64_t(plan.out_rows[j]) * H, H * sizeof(float));
    cpu::rmsnorm(xg, R, H, w_.final_norm.data(), c.rms_eps, xg);
    if (q8) cpu::matmul_q8(xg, R, H, q8_unembed_, out0, c.vocab);
    else cpu::matmul_bf16(xg, R, H, H, w_.unembed, c.vocab, H, nullptr, out0, c.vocab, opt_.precision);
  }
}

}  // namespace gptoss
