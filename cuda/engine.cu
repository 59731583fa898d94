// CudaEngine's public methods: weights and the paged KV cache on the device (sequence and block
// bookkeeping is the shared SequenceTable of csrc/kv_cache.h), the forward pass as kernel
// launches on one stream. Its parts: engine_impl.cuh.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <tuple>

#include "engine_impl.cuh"

namespace gptoss::cuda {

std::string gib(double bytes) {  // human-readable size
  char b[64];
  if (bytes >= double(1 << 30)) std::snprintf(b, sizeof b, "%.2f GiB", bytes / double(1 << 30));
  else if (bytes >= double(1 << 20)) std::snprintf(b, sizeof b, "%.1f MiB", bytes / double(1 << 20));
  else std::snprintf(b, sizeof b, "%.0f bytes", bytes);
  return b;
}

// One allocation, freed by the owner (Impl keeps them all).
void* dev_alloc(size_t bytes, const std::string& what) {
  if (bytes == 0) bytes = 16;
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, bytes);
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    size_t fr = 0, tot = 0;
    cudaMemGetInfo(&fr, &tot);
    throw OutOfMemory("CUDA out of memory allocating " + gib(double(bytes)) + " for " + what + " (" + gib(double(fr)) +
                      " free of " + gib(double(tot)) + ")");
  }
  CUDA_CHECK(e);
  return p;
}
int device_count() noexcept {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

std::string device_description(int device) {
  cudaDeviceProp p;
  if (cudaGetDeviceProperties(&p, device) != cudaSuccess) {
    cudaGetLastError();
    return "";
  }
  return std::string(p.name) + " (sm_" + std::to_string(p.major) + std::to_string(p.minor) + ", " +
         gib(double(p.totalGlobalMem)) + ")";
}
CudaEngine::CudaEngine(ModelConfig cfg, std::unique_ptr<TensorSource> src, const std::string& layout,
                       CudaEngineOptions opt)
    : p_(std::make_unique<Impl>()) {
  p_->cfg = std::move(cfg);
  p_->opt = opt;
  p_->init_device();
  p_->upload(*src, layout);
  src.reset();  // host copies are no longer needed
  p_->alloc_workspace();
  p_->alloc_kv();
}

CudaEngine::CudaEngine(ModelConfig cfg, uint64_t seed, CudaEngineOptions opt) : p_(std::make_unique<Impl>()) {
  p_->cfg = std::move(cfg);
  p_->opt = opt;
  p_->init_device();
  p_->generate(seed);
  p_->alloc_workspace();
  p_->alloc_kv();
}

CudaEngine::~CudaEngine() {
  if (p_) cudaSetDevice(p_->opt.device);
}

const ModelConfig& CudaEngine::config() const { return p_->cfg; }

int64_t CudaEngine::new_sequence() { std::lock_guard<std::mutex> g(p_->mu); return p_->seqs->create(); }
int64_t CudaEngine::new_sequence_from_cache(const std::vector<int32_t>& tokens, int64_t* reused) {
  std::lock_guard<std::mutex> g(p_->mu);
  return p_->seqs->create_from_cache(tokens.data(), int64_t(tokens.size()), reused);
}
PrefixCacheStats CudaEngine::prefix_cache_stats() const {
  std::lock_guard<std::mutex> g(p_->mu);
  return p_->seqs->prefix_cache_stats();
}
void CudaEngine::clear_prefix_cache() { std::lock_guard<std::mutex> g(p_->mu); p_->seqs->clear_prefix_cache(); }
int64_t CudaEngine::fork(int64_t seq) { std::lock_guard<std::mutex> g(p_->mu); return p_->seqs->fork(seq); }
void CudaEngine::free_sequence(int64_t seq) { std::lock_guard<std::mutex> g(p_->mu); p_->seqs->free(seq); }
bool CudaEngine::truncate(int64_t seq, int64_t n) {
  std::lock_guard<std::mutex> g(p_->mu);
  return p_->seqs->truncate(seq, n);
}
int64_t CudaEngine::length(int64_t seq) const { std::lock_guard<std::mutex> g(p_->mu); return p_->seqs->at(seq).len; }
std::vector<int32_t> CudaEngine::tokens(int64_t seq) const {
  std::lock_guard<std::mutex> g(p_->mu);
  return p_->seqs->at(seq).tokens;
}
bool CudaEngine::has_sequence(int64_t seq) const { std::lock_guard<std::mutex> g(p_->mu); return p_->seqs->contains(seq); }
int64_t CudaEngine::num_sequences() const { std::lock_guard<std::mutex> g(p_->mu); return p_->seqs->size(); }
int64_t CudaEngine::logits_rows(const std::vector<StepItem>& items) const { return SequenceTable::logits_rows(items); }

void CudaEngine::step(const std::vector<StepItem>& items, float* out, const std::function<bool()>& interrupted) {
  std::lock_guard<std::mutex> g(p_->mu);
  CUDA_CHECK(cudaSetDevice(p_->opt.device));
  p_->run(items, out, nullptr, nullptr, interrupted, Impl::LogprobOut());
}

void CudaEngine::step_argmax(const std::vector<StepItem>& items, int32_t* out,
                             const std::function<bool()>& interrupted) {
  std::lock_guard<std::mutex> g(p_->mu);
  CUDA_CHECK(cudaSetDevice(p_->opt.device));
  p_->run(items, nullptr, out, nullptr, interrupted, Impl::LogprobOut());
}

void CudaEngine::step_sample(const std::vector<StepItem>& items, const std::vector<SampleParams>& params,
                             int32_t* out, const std::function<bool()>& interrupted, int logprobs,
                             float* chosen_lp, int32_t* top_ids, float* top_lp, const Penalties* penalties) {
  if (penalties) {
    const Penalties& q = *penalties;
    GPTOSS_CHECK_ARG(q.off.size() == items.size() + 1 && q.off.front() == 0 && q.off.back() == int32_t(q.id.size()) &&
                         q.val.size() == 3 * q.id.size(),
                     "penalties: off [items + 1] from 0 to len(id), val [3 * len(id)]");
    for (size_t i = 0; i + 1 < q.off.size(); ++i) GPTOSS_CHECK_ARG(q.off[i] <= q.off[i + 1], "penalties: off must not decrease");
    for (int32_t v : q.id)
      GPTOSS_CHECK_ARG(v >= 0 && v < p_->cfg.vocab, "penalties: token id " + std::to_string(v) + " outside the vocabulary");
    for (size_t e = 0; e < q.id.size(); ++e)
      GPTOSS_CHECK_ARG(q.val[3 * e] > 0.f && std::isfinite(q.val[3 * e]) && std::isfinite(q.val[3 * e + 1]) &&
                           std::isfinite(q.val[3 * e + 2]),
                       "penalties: repetition penalty > 0, finite amounts");
  }
  GPTOSS_CHECK_ARG(logprobs >= -1 && logprobs <= kMaxTopLogprobs, "logprobs: at most 20 top log-probabilities");
  GPTOSS_CHECK_ARG(params.size() == items.size(), "step_sample: one set of sampling parameters per item");
  for (const auto& q : params) {
    GPTOSS_CHECK_ARG(std::isfinite(q.temperature) && q.temperature >= 0.f, "temperature must be finite and >= 0");
    GPTOSS_CHECK_ARG(q.top_p > 0.f && q.top_p <= 1.f, "top_p must be in (0, 1]");
    GPTOSS_CHECK_ARG(q.min_p >= 0.f && q.min_p <= 1.f, "min_p must be in [0, 1]");
    GPTOSS_CHECK_ARG(q.u >= 0.f && q.u < 1.f, "u must be in [0, 1)");
  }
  std::vector<Impl::SP> sp(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    const SampleParams& q = params[i];
    sp[i] = Impl::SP{q.temperature, q.top_k, q.top_p, q.min_p, q.u, q.vocab_limit};
  }
  std::lock_guard<std::mutex> g(p_->mu);
  CUDA_CHECK(cudaSetDevice(p_->opt.device));
  Impl::LogprobOut lp;
  lp.pen = penalties && !penalties->id.empty() ? penalties : nullptr;
  if (logprobs >= 0) {
    GPTOSS_CHECK_ARG(chosen_lp && (logprobs == 0 || (top_ids && top_lp)), "logprobs: output buffers missing");
    for (const auto& q : params)
      GPTOSS_CHECK_ARG(q.vocab_limit == params[0].vocab_limit, "logprobs: one vocab_limit for every item");
    lp = Impl::LogprobOut{logprobs, params.empty() ? 0 : params[0].vocab_limit, chosen_lp, top_ids, top_lp, lp.pen};
  }
  p_->run(items, nullptr, out, sp.data(), interrupted, lp);
  for (size_t i = 0; i < items.size(); ++i)
    if (out[i] < 0) throw InvalidArgument("no token can be sampled: every logit is -inf or masked");
}

std::vector<int64_t> CudaEngine::kv_stats() const { std::lock_guard<std::mutex> g(p_->mu); return p_->seqs->stats(); }

std::map<std::string, double> CudaEngine::memory_info() const {
  size_t fr = 0, tot = 0;
  CUDA_CHECK(cudaSetDevice(p_->opt.device));
  CUDA_CHECK(cudaMemGetInfo(&fr, &tot));
  return {{"weights", double(p_->weight_bytes)},
          {"kv_cache", double(p_->kv_bytes)},
          {"workspace", double(p_->work_bytes)},
          {"used", double(tot - fr)},
          {"total", double(tot)},
          {"kv_elem_bytes", p_->opt.kv_bf16 ? 2.0 : 4.0},
          {"sm_count", double(p_->sm_count)}};
}

std::string CudaEngine::device_name() const { return p_->dev_name; }

void CudaEngine::set_graphs(bool enabled) {
  std::lock_guard<std::mutex> g(p_->mu);
  CUDA_CHECK(cudaSetDevice(p_->opt.device));
  CUDA_CHECK(cudaStreamSynchronize(p_->stream));
  p_->opt.graphs = enabled;
  if (!enabled) p_->drop_graphs();
}

std::map<std::string, double> CudaEngine::memory_plan(ModelConfig cfg, CudaEngineOptions opt) {
  cfg.validate();
  Impl im;
  im.cfg = std::move(cfg);
  im.opt = opt;
  im.dry = true;
  im.alloc_weights();
  im.alloc_workspace();
  const ModelConfig& c = im.cfg;
  int64_t nf = 0;
  for (int64_t l = 0; l < c.n_layers; ++l) nf += c.sliding[size_t(l)] ? 0 : 1;
  const int64_t nw = c.n_layers - nf;
  const double eb = opt.kv_bf16 ? 2.0 : 4.0, per_layer_token = 2.0 * double(c.n_kv * c.head_dim) * eb;
  // Both groups take blocks of max(nf, nw) layers from one pool (alloc_kv): a token of context
  // costs a full-attention block's share; a sequence's window layers hold at most window +
  // window_retain + one chunk of positions besides.
  const double group = double(std::max<int64_t>(1, std::max(nf, nw))) * per_layer_token;
  const double win_tokens = double(c.window + opt.window_retain + opt.max_chunk_tokens + 2 * opt.block_size);
  return {{"weights", double(im.weight_bytes)},
          {"workspace", double(im.work_bytes)},
          {"kv_bytes_per_token", nf ? group : 0.0},
          {"kv_bytes_per_sequence_window", nw ? group * win_tokens : 0.0}};
}

// A launch option changes between steps: the stream drains, and the captured graphs (which keep
// the launches they were captured with) are dropped.
template <class F>
static void reconfigure(CudaEngine::Impl& im, F&& change) {
  std::lock_guard<std::mutex> g(im.mu);
  CUDA_CHECK(cudaSetDevice(im.opt.device));
  CUDA_CHECK(cudaStreamSynchronize(im.stream));
  change(im.opt);
  im.drop_graphs();
}

void CudaEngine::set_tc_split(bool split) {
  reconfigure(*p_, [&](CudaEngineOptions& o) { o.tc_split = split; });
}

void CudaEngine::set_gemm_tiles(int tiles) {
  if (tiles < TILES_AUTO || tiles > kGemmTilesMax)
    throw InvalidArgument("set_gemm_tiles: 0 (auto), 1 (64x64), 2 (64x128), 3 (128x128) or 4 (32x128)");
  reconfigure(*p_, [&](CudaEngineOptions& o) { o.gemm_tiles = tiles; });
}

void CudaEngine::set_moe_gemv_tokens(int n) {
  if (n < 0) throw InvalidArgument("set_moe_gemv_tokens: n must be >= 0");
  reconfigure(*p_, [&](CudaEngineOptions& o) { o.moe_gemv_tokens = p_->moe_gemv_ok ? n : 0; });
}

void CudaEngine::set_fuse_qkv_rope(bool on) {
  reconfigure(*p_, [&](CudaEngineOptions& o) { o.fuse_qkv_rope = on; });
}

bool CudaEngine::moe_gemv_available() const { return p_->moe_gemv_ok; }

int CudaEngine::moe_gemv_tokens() const {
  std::lock_guard<std::mutex> g(p_->mu);
  return p_->opt.moe_gemv_tokens;
}

bool CudaEngine::set_pdl(bool on, bool prefetch) {
  reconfigure(*p_, [&](CudaEngineOptions& o) {
    o.pdl = on && p_->cc_major >= 9;
    o.pdl_prefetch = prefetch;
    stream_set_pdl(p_->stream, o.pdl, prefetch);
  });
  return p_->opt.pdl;
}

void CudaEngine::set_profile(bool on) {
  std::lock_guard<std::mutex> g(p_->mu);
  p_->profiling = on;
  p_->prof_acc.clear();
  p_->prof_steps = 0;
}

std::vector<std::tuple<std::string, double, int64_t>> CudaEngine::profile() const {
  std::lock_guard<std::mutex> g(p_->mu);
  std::vector<std::tuple<std::string, double, int64_t>> v;
  for (const auto& kv : p_->prof_acc) v.emplace_back(kv.first, kv.second.first, kv.second.second);
  v.emplace_back("steps", 0.0, p_->prof_steps);
  return v;
}

void CudaEngine::set_max_chunk_tokens(int64_t n) {
  std::lock_guard<std::mutex> g(p_->mu);
  p_->seqs->set_max_chunk_tokens(n);
}

std::vector<int64_t> CudaEngine::graph_stats() const {
  std::lock_guard<std::mutex> g(p_->mu);
  return {p_->graphs_captured, p_->graph_launches, int64_t(p_->graphs.size())};
}

std::pair<int64_t, int64_t> CudaEngine::arrival_counters() {
  std::lock_guard<std::mutex> g(p_->mu);
  Impl& im = *p_;
  CUDA_CHECK(cudaSetDevice(im.opt.device));
  CUDA_CHECK(cudaStreamSynchronize(im.stream));
  const std::pair<const int32_t*, int64_t> all[] = {
      {im.attn_arrivals, im.Tmax * im.cfg.n_kv}, {im.moe_arrivals, 1}, {im.argmax_scr.arrivals, im.argmax_scr.rows},
      {im.sample_scr.arrivals, im.sample_scr.rows}, {im.router_scr.arrivals, im.router_scr.rows}};
  int64_t n = 0, nonzero = 0;
  for (const auto& [p, len] : all) {
    std::vector<int32_t> h(static_cast<size_t>(len));
    CUDA_CHECK(cudaMemcpy(h.data(), p, size_t(len) * 4, cudaMemcpyDeviceToHost));
    n += len;
    for (int32_t v : h) nonzero += v != 0;
  }
  return {n, nonzero};
}

void CudaEngine::synchronize() {
  CUDA_CHECK(cudaSetDevice(p_->opt.device));
  CUDA_CHECK(cudaStreamSynchronize(p_->stream));
}

}  // namespace gptoss::cuda
