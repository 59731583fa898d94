// CudaRunner: the workspace (sized for max_chunk_tokens rows), the paged KV cache and the
// step metadata buffers.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "engine_impl.cuh"

namespace gptoss::cuda {

void CudaRunner::Impl::zero(void* p, size_t bytes) {
  if (!dry) CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, stream));
}

void CudaRunner::Impl::alloc_workspace() {
  const int64_t T = opt.max_chunk_tokens, H = cfg.hidden, I = cfg.inter, K = cfg.top_k, Q = cfg.q_dim();
  const int64_t QKV = Q + 2 * cfg.kv_dim(), P = T * K;
  Tmax = T;
  size_t* c = &work_bytes;
  x = alloc<float>(T * H, "activations", c);
  t = alloc<float>(T * H, "activations", c);
  qkv = alloc<float>(T * QKV, "activations", c);
  att = alloc<float>(T * Q, "activations", c);
  rw = alloc<float>(P, "routing weights", c);
  ridx = alloc<int32_t>(P, "routing ids", c);
  act = alloc<float>(P * I, "expert activations", c);
  ypairs = alloc<float>(P * H, "expert outputs", c);
  part_cap = std::max<int64_t>(T, 2048);
  part = alloc<float>(part_cap * cfg.n_heads * (cfg.head_dim + 2), "attention partials", c);
  logits = alloc<float>(std::min<int64_t>(T, kLogitRows) * cfg.vocab, "logits", c);
  argmax_out = alloc<int32_t>(T, "argmax", c);
  lp_chosen = alloc<float>(T, "logprobs", c);
  lp_top = alloc<float>(T * kMaxTopLogprobs, "logprobs", c);
  lp_ids = alloc<int32_t>(T * kMaxTopLogprobs, "logprobs", c);
  const int mt = moe_max_tiles(int(P), int(cfg.n_experts), moe_gemv_tile());  // the most tiles
  tiles.sorted = alloc<int32_t>(P, "moe tiles", c);
  tiles.tile_e = alloc<int32_t>(mt, "moe tiles", c);
  tiles.tile_start = alloc<int32_t>(mt, "moe tiles", c);
  tiles.tile_count = alloc<int32_t>(mt, "moe tiles", c);
  tiles.n_tiles = alloc<int32_t>(1, "moe tiles", c);
  attn_arrivals = alloc<int32_t>(T * cfg.n_kv, "attention arrival counts", c);
  zero(attn_arrivals, size_t(T * cfg.n_kv) * 4);
  moe_arrivals = alloc<int32_t>(1, "expert arrival count", c);
  zero(moe_arrivals, 4);
  argmax_scr.rows = int(std::min<int64_t>(T, kLogitRows));
  argmax_scr.splits = 64;
  argmax_scr.val = alloc<float>(int64_t(argmax_scr.rows) * argmax_scr.splits, "argmax scratch", c);
  argmax_scr.idx = alloc<int32_t>(int64_t(argmax_scr.rows) * argmax_scr.splits, "argmax scratch", c);
  argmax_scr.arrivals = alloc<int32_t>(argmax_scr.rows, "argmax scratch", c);
  zero(argmax_scr.arrivals, size_t(argmax_scr.rows) * 4);
  SampleScratch& ss = sample_scr;
  ss.rows = int(std::min<int64_t>(T, kSampleSplitRows));
  ss.splits = 64;
  const int64_t sv = int64_t(ss.rows) * cfg.vocab, sp = int64_t(ss.rows) * ss.splits;
  ss.stage_val = alloc<float>(sv, "sampling scratch", c);
  ss.stage_id = alloc<int32_t>(sv, "sampling scratch", c);
  ss.cand_val = alloc<float>(sv, "sampling scratch", c);
  ss.cand_id = alloc<int32_t>(sv, "sampling scratch", c);
  ss.cand_n = alloc<int32_t>(ss.rows, "sampling scratch", c);
  ss.part_max = alloc<float>(sp, "sampling scratch", c);
  ss.part_n = alloc<uint32_t>(sp, "sampling scratch", c);
  ss.row_max = alloc<float>(ss.rows, "sampling scratch", c);
  ss.row_nv = alloc<uint32_t>(ss.rows, "sampling scratch", c);
  ss.arrivals = alloc<int32_t>(ss.rows, "sampling scratch", c);
  zero(ss.arrivals, size_t(ss.rows) * 4);
  router_scr.rows = router_split_rows();
  router_scr.logits = alloc<float>(int64_t(router_scr.rows) * cfg.n_experts, "router scratch", c);
  router_scr.arrivals = alloc<int32_t>(router_scr.rows, "router scratch", c);
  zero(router_scr.arrivals, size_t(router_scr.rows) * 4);
  if (!dry) CUDA_CHECK(cudaStreamSynchronize(stream));
}

void CudaRunner::Impl::alloc_kv() {
  full_layers.assign(size_t(cfg.n_layers), -1);
  win_layers.assign(size_t(cfg.n_layers), -1);
  int64_t nf = 0, nw = 0;
  for (int64_t l = 0; l < cfg.n_layers; ++l) {
    if (cfg.sliding[size_t(l)]) win_layers[size_t(l)] = nw++;
    else full_layers[size_t(l)] = nf++;
  }
  const size_t eb = opt.kv_bf16 ? 2 : 4;
  const int64_t per_layer = 2 * cfg.n_kv * opt.block_size * cfg.head_dim;
  // One pool for both groups of layers (csrc/kv_cache.h), its blocks sized for the larger one.
  const int64_t block = std::max<int64_t>(1, std::max(nf, nw)) * per_layer;
  size_t fr = 0, tot = 0;
  CUDA_CHECK(cudaMemGetInfo(&fr, &tot));
  const size_t margin = std::max<size_t>(size_t(512) << 20, tot / 50);  // CUDA context, cuBLAS-free slack
  const size_t avail = fr > margin ? fr - margin : 0;
  size_t budget = avail;
  if (opt.kv_cache_bytes > 0) budget = std::min(budget, size_t(opt.kv_cache_bytes));
  const size_t block_bytes = eb * size_t(block);
  const int64_t blocks = std::min<int64_t>(int64_t(budget / block_bytes), INT32_MAX);  // block ids are int32
  if (blocks < 2)
    throw OutOfMemory("not enough device memory for the KV cache: 2 blocks need " + gib(2.0 * double(block_bytes)) +
                      ", " + gib(double(avail)) + " usable (" + gib(double(fr)) + " free of " + gib(double(tot)) +
                      (opt.kv_cache_bytes > 0 ? ", kv_cache_bytes cap " + gib(double(opt.kv_cache_bytes)) : std::string()) +
                      "); free another model's memory or lower max_chunk_tokens");
  char* base = alloc<char>(blocks * block * int64_t(eb), "the KV cache", &kv_bytes);
  kv_pool = std::make_unique<DevPool>(blocks, block, eb, base, stream);
}

void CudaRunner::Impl::ensure_meta(int64_t n) {
  if (n <= meta_cap) return;
  const int64_t cap = std::max<int64_t>({n, meta_cap * 2, int64_t(1) << 16});
  drop_graphs();  // they hold the old metadata pointers
  meta_cap = staging_cap = 0;  // a failed allocation below must not leave a stale capacity
  if (meta) CUDA_CHECK(cudaFree(meta));
  meta = nullptr;
  meta = static_cast<int32_t*>(dev_alloc(size_t(cap) * 4, "step metadata"));
  if (staging) CUDA_CHECK(cudaFreeHost(staging));
  staging = nullptr;
  CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&staging), size_t(cap) * 4));
  meta_cap = staging_cap = cap;
}

void CudaRunner::Impl::ensure_pen_saved(int64_t n) {
  if (n <= pen_cap) return;
  const int64_t cap = std::max<int64_t>({n, 2 * pen_cap, 4096});
  drop_graphs();  // they hold the old pointer
  if (pen_saved) CUDA_CHECK(cudaFree(pen_saved));
  pen_saved = nullptr;
  pen_cap = 0;
  pen_saved = static_cast<float*>(dev_alloc(size_t(cap) * 4, "sampling penalties"));
  pen_cap = cap;
}

}  // namespace gptoss::cuda
