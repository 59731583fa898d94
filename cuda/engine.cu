// CudaRunner's public methods: construction, the runner interface, the device options. The
// sequences and their blocks are the engine core's (csrc/engine_core.h). Its parts: engine_impl.cuh.
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
CudaRunner::CudaRunner(const ModelConfig& cfg, std::unique_ptr<TensorSource> src, const std::string& layout,
                       CudaEngineOptions opt)
    : p_(std::make_unique<Impl>()) {
  p_->cfg = cfg;
  p_->opt = opt;
  p_->init_device();
  p_->upload(*src, layout);
  src.reset();  // host copies are no longer needed
  p_->alloc_workspace();
  p_->alloc_kv();
}

CudaRunner::CudaRunner(const ModelConfig& cfg, uint64_t seed, CudaEngineOptions opt) : p_(std::make_unique<Impl>()) {
  p_->cfg = cfg;
  p_->opt = opt;
  p_->init_device();
  p_->generate(seed);
  p_->alloc_workspace();
  p_->alloc_kv();
}

CudaRunner::~CudaRunner() {
  if (p_) cudaSetDevice(p_->opt.device);
}

std::unique_ptr<EngineCore> make_cuda_engine(ModelConfig cfg, std::unique_ptr<TensorSource> src,
                                             const std::string& layout, CudaEngineOptions opt) {
  auto runner = std::make_unique<CudaRunner>(cfg, std::move(src), layout, opt);
  return std::make_unique<EngineCore>(std::move(cfg), opt.kv(), std::move(runner));
}

std::unique_ptr<EngineCore> make_cuda_engine(ModelConfig cfg, uint64_t seed, CudaEngineOptions opt) {
  auto runner = std::make_unique<CudaRunner>(cfg, seed, opt);
  return std::make_unique<EngineCore>(std::move(cfg), opt.kv(), std::move(runner));
}

// The namespace's name: "cuda", or "cuda_emu" where the emulator's build #defines cuda.
#define GPTOSS_NAME_OF(ns) GPTOSS_NAME_OF_(ns)
#define GPTOSS_NAME_OF_(ns) #ns
const char* CudaRunner::backend() const { return GPTOSS_NAME_OF(cuda); }
const char* CudaRunner::precision() const { return p_->opt.tc_split ? "fp32" : "bf16"; }
BlockPool& CudaRunner::kv_pool() { return *p_->kv_pool; }
void CudaRunner::enter() { CUDA_CHECK(cudaSetDevice(p_->opt.device)); }
void CudaRunner::forward(const StepPlan& plan, const StepOutputs& out) { p_->forward_chunk(plan, out); }

std::map<std::string, double> CudaRunner::memory_info() const {
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

std::string CudaRunner::device_name() const { return p_->dev_name; }

void CudaRunner::set_graphs(bool enabled) {
  CUDA_CHECK(cudaSetDevice(p_->opt.device));
  CUDA_CHECK(cudaStreamSynchronize(p_->stream));
  p_->opt.graphs = enabled;
  if (!enabled) p_->drop_graphs();
}

std::map<std::string, double> CudaRunner::memory_plan(ModelConfig cfg, CudaEngineOptions opt) {
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
static void reconfigure(CudaRunner::Impl& im, F&& change) {
  CUDA_CHECK(cudaSetDevice(im.opt.device));
  CUDA_CHECK(cudaStreamSynchronize(im.stream));
  change(im.opt);
  im.drop_graphs();
}

void CudaRunner::set_tc_split(bool split) {
  reconfigure(*p_, [&](CudaEngineOptions& o) { o.tc_split = split; });
}

void CudaRunner::set_gemm_tiles(int tiles) {
  if (tiles < TILES_AUTO || tiles > kGemmTilesMax)
    throw InvalidArgument("set_gemm_tiles: 0 (auto), 1 (64x64), 2 (64x128), 3 (128x128) or 4 (32x128)");
  reconfigure(*p_, [&](CudaEngineOptions& o) { o.gemm_tiles = tiles; });
}

void CudaRunner::set_moe_gemv_tokens(int n) {
  if (n < 0) throw InvalidArgument("set_moe_gemv_tokens: n must be >= 0");
  reconfigure(*p_, [&](CudaEngineOptions& o) { o.moe_gemv_tokens = p_->moe_gemv_ok ? n : 0; });
}

void CudaRunner::set_fuse_qkv_rope(bool on) {
  reconfigure(*p_, [&](CudaEngineOptions& o) { o.fuse_qkv_rope = on; });
}

bool CudaRunner::moe_gemv_available() const { return p_->moe_gemv_ok; }

int CudaRunner::moe_gemv_tokens() const { return p_->opt.moe_gemv_tokens; }

bool CudaRunner::set_pdl(bool on, bool prefetch) {
  reconfigure(*p_, [&](CudaEngineOptions& o) {
    o.pdl = on && p_->cc_major >= 9;
    o.pdl_prefetch = prefetch;
    stream_set_pdl(p_->stream, o.pdl, prefetch);
  });
  return p_->opt.pdl;
}

void CudaRunner::set_profile(bool on) {
  p_->profiling = on;
  p_->prof_acc.clear();
  p_->prof_steps = 0;
}

DeviceRunner::Profile CudaRunner::profile() const {
  Profile v;
  for (const auto& kv : p_->prof_acc) v.emplace_back(kv.first, kv.second.first, kv.second.second);
  v.emplace_back("steps", 0.0, p_->prof_steps);
  return v;
}

DeviceRunner::GraphStats CudaRunner::graph_stats() const {
  return {p_->graphs_captured, p_->graph_launches, int64_t(p_->graphs.size())};
}

std::pair<int64_t, int64_t> CudaRunner::arrival_counters() {
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

void CudaRunner::synchronize() {
  CUDA_CHECK(cudaSetDevice(p_->opt.device));
  CUDA_CHECK(cudaStreamSynchronize(p_->stream));
}

}  // namespace gptoss::cuda
