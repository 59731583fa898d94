// CudaEngine: weights and the paged KV cache on the device (sequence and block bookkeeping is
// the shared SequenceTable of csrc/kv_cache.h), the forward pass as kernel launches on one stream.
#include "engine.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <tuple>
#include <unordered_map>
#include <unordered_set>

#include "common.cuh"
#include "kernels.cuh"

namespace gptoss::cuda {

void check_kernel_image(int device);  // ops.cu

namespace {

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


// KV blocks in one preallocated device array; ids and reference counts come from BlockPool.
class DevPool final : public BlockPool {
 public:
  DevPool(int64_t max_blocks, int64_t block_elems, size_t elem_bytes, char* base, cudaStream_t stream)
      : BlockPool(max_blocks, block_elems * int64_t(elem_bytes)), block_elems(block_elems), base(base), stream_(stream) {}
  void copy_block(int32_t src, int32_t dst) override {
    const size_t bb = size_t(block_bytes());
    CUDA_CHECK(cudaMemcpyAsync(base + size_t(dst) * bb, base + size_t(src) * bb, bb, cudaMemcpyDeviceToDevice, stream_));
  }
  const int64_t block_elems;
  char* const base;

 private:
  cudaStream_t stream_;
};

struct DevLayer {
  float *attn_norm, *qkv_b, *sinks, *o_b, *mlp_norm, *router_b, *mlp1_b, *mlp2_b;
  uint16_t *qkv_w, *o_w, *router_w;
  uint8_t *mlp1_blocks, *mlp1_scales, *mlp2_blocks, *mlp2_scales;
};

}  // namespace

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

struct CudaEngine::Impl {
  ModelConfig cfg;
  CudaEngineOptions opt;
  int sm_count = 0, cc_major = 0;
  bool moe_gemv_ok = true;  // the tensor cores take fp16 subnormals (moe_gemv_exact)
  std::string dev_name;
  cudaStream_t stream = nullptr;
  std::vector<void*> allocs;
  size_t weight_bytes = 0, work_bytes = 0, kv_bytes = 0;

  // weights
  uint16_t *embed = nullptr, *unembed = nullptr;
  float* final_norm = nullptr;
  float* inv_freq = nullptr;
  std::vector<DevLayer> layers;

  // KV cache
  std::vector<int64_t> full_layers, win_layers;
  std::unique_ptr<DevPool> kv_pool;  // both groups of layers draw blocks from it
  std::unique_ptr<PoolView> full_pool, win_pool;
  std::unique_ptr<SequenceTable> seqs;  // after the pools: destroyed first
  std::mutex mu;                        // serialises the public methods

  // workspace (sized for max_chunk_tokens rows)
  int64_t Tmax = 0, part_cap = 0;
  float *x = nullptr, *t = nullptr, *qkv = nullptr, *att = nullptr, *rw = nullptr, *act = nullptr, *ypairs = nullptr;
  float *part = nullptr, *logits = nullptr;
  int32_t *ridx = nullptr, *argmax_out = nullptr;
  float* pen_saved = nullptr;  // the logits that penalties overwrite (restored for the logprobs)
  int64_t pen_cap = 0;
  float *lp_chosen = nullptr, *lp_top = nullptr;  // device logprobs: [Tmax], [Tmax * kMaxTopLogprobs]
  int32_t* lp_ids = nullptr;
  MoeTiles tiles;
  RouterScratch router_scr;  // few-row steps route over many blocks
  int32_t* attn_arrivals = nullptr;  // [Tmax * n_kv]: split attention merges in its last block
  int32_t* moe_arrivals = nullptr;   // [1]: one token's mlp2 does the combine in its last block
  ArgmaxScratch argmax_scr;          // few-row greedy steps: each row's argmax over many blocks
  SampleScratch sample_scr;          // few-row sampled steps: the candidates gathered first
  int32_t* meta = nullptr;   // per-chunk metadata (device)
  int64_t meta_cap = 0;      // int32 entries
  int32_t* staging = nullptr;  // pinned host copy of meta
  int64_t staging_cap = 0;

  template <typename T>
  T* alloc(int64_t n, const std::string& what, size_t* counter) {
    *counter += size_t(n) * sizeof(T);
    if (dry) return nullptr;
    void* p = dev_alloc(size_t(n) * sizeof(T), what);
    allocs.push_back(p);
    return static_cast<T*>(p);
  }
  bool dry = false;  // memory_plan: count the allocations, make none

  ~Impl() {
    if (stream) cudaStreamSynchronize(stream);
    drop_graphs();
    drop_profile();
    for (void* p : allocs) cudaFree(p);
    if (meta) cudaFree(meta);
    if (pen_saved) cudaFree(pen_saved);
    if (staging) cudaFreeHost(staging);
    if (stream) {
      stream_set_pdl(stream, false);  // a later stream may get this handle
      cudaStreamDestroy(stream);
    }
  }

  void init_device() {
    cfg.validate();
    GPTOSS_CHECK_ARG(opt.block_size > 0 && opt.block_size <= 4096, "block_size must be in [1, 4096]");
    GPTOSS_CHECK_ARG(opt.max_chunk_tokens > 0, "max_chunk_tokens must be positive");
    GPTOSS_CHECK_ARG(opt.window_retain >= 0, "window_retain must be >= 0");
    GPTOSS_CHECK_ARG(opt.kv_cache_bytes >= 0, "kv_cache_bytes must be >= 0 (0 = automatic)");
    const int n = device_count();
    if (n == 0)
      throw CudaError("device='cuda': no CUDA device is visible (no GPU or no NVIDIA driver; cudaGetDeviceCount = 0)");
    if (opt.device < 0 || opt.device >= n)
      throw InvalidArgument("CUDA device " + std::to_string(opt.device) + " does not exist (" + std::to_string(n) +
                            " visible)");
    CUDA_CHECK(cudaSetDevice(opt.device));
    cudaDeviceProp p;
    CUDA_CHECK(cudaGetDeviceProperties(&p, opt.device));
    dev_name = device_description(opt.device);
    if (p.major < 8)
      throw CudaError("unsupported GPU " + dev_name + ": the gptoss CUDA backend needs compute capability 8.0+");
    check_kernel_image(opt.device);
    attention_prepare();
    gemm_prepare();
    // The experts' GEMV decodes each weight once per 8 pairs of an expert at ~3.7 warp
    // instructions per 16 bytes; the tensor-core GEMM's smallest tile (32 pairs) needs ~15, more
    // than an SM can issue while streaming at full bandwidth. So the GEMV serves while a step's
    // pairs average at most 8 per expert (one GEMV tile), unless set otherwise.
    if (opt.moe_gemv_tokens < 0)
      opt.moe_gemv_tokens = int(std::max<int64_t>(8, 8 * cfg.n_experts / std::max<int64_t>(1, cfg.top_k)));
    moe_gemv_ok = moe_gemv_exact();
    if (!moe_gemv_ok) {  // keep every step on the tensor-core GEMM (bf16 dequantization, exact)
      std::fprintf(stderr, "gptoss: %s flushes fp16 subnormal inputs of tensor-core MMAs; the MoE experts run on "
                           "the tensor-core GEMM at every batch size (the decode GEMV needs them)\n", dev_name.c_str());
      opt.moe_gemv_tokens = 0;
    }
    sm_count = p.multiProcessorCount;
    cc_major = p.major;
    if (!attn_head_dim_supported(int(cfg.head_dim)))
      throw InvalidArgument("CUDA backend: head_dim must be 32, 64 or 128, got " + std::to_string(cfg.head_dim));
    if (attn_rows_per_group(int(cfg.n_heads), int(cfg.n_kv)) < 1)
      throw InvalidArgument("CUDA backend: at most 64 query heads per KV head");
    GPTOSS_CHECK_ARG(cfg.vocab < (int64_t(1) << 31) && cfg.max_context < (int64_t(1) << 30),
                     "CUDA backend: vocab and max_context must fit in int32");
    CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    stream_set_pdl(stream, opt.pdl && cc_major >= 9, opt.pdl_prefetch);
  }

  // ---- weights -------------------------------------------------------------------------------
  void alloc_weights() {
    const int64_t H = cfg.hidden, I = cfg.inter, E = cfg.n_experts, Q = cfg.q_dim(), KV = cfg.kv_dim();
    const int64_t QKV = Q + 2 * KV;
    size_t* c = &weight_bytes;
    embed = alloc<uint16_t>(cfg.vocab * H, "the embedding", c);
    unembed = alloc<uint16_t>(cfg.vocab * H, "the unembedding", c);
    final_norm = alloc<float>(H, "the final norm", c);
    inv_freq = alloc<float>(cfg.head_dim / 2, "rope frequencies", c);
    if (!dry)  // on the engine stream, as every other upload (upload and generate wait for it)
      CUDA_CHECK(cudaMemcpyAsync(inv_freq, cfg.inv_freq.data(), cfg.inv_freq.size() * sizeof(float),
                                 cudaMemcpyHostToDevice, stream));
    layers.resize(size_t(cfg.n_layers));
    for (int64_t l = 0; l < cfg.n_layers; ++l) {
      DevLayer& L = layers[size_t(l)];
      const std::string w = "layer " + std::to_string(l) + " ";
      L.attn_norm = alloc<float>(H, w + "attn norm", c);
      L.qkv_w = alloc<uint16_t>(QKV * H, w + "qkv weight", c);
      L.qkv_b = alloc<float>(QKV, w + "qkv bias", c);
      L.sinks = alloc<float>(cfg.n_heads, w + "sinks", c);
      L.o_w = alloc<uint16_t>(H * Q, w + "attention out weight", c);
      L.o_b = alloc<float>(H, w + "attention out bias", c);
      L.mlp_norm = alloc<float>(H, w + "mlp norm", c);
      L.router_w = alloc<uint16_t>(E * H, w + "router weight", c);
      L.router_b = alloc<float>(E, w + "router bias", c);
      L.mlp1_blocks = alloc<uint8_t>(E * 2 * I * (H / 32) * 16, w + "mlp1 blocks", c);
      L.mlp1_scales = alloc<uint8_t>(E * 2 * I * (H / 32), w + "mlp1 scales", c);
      L.mlp1_b = alloc<float>(E * 2 * I, w + "mlp1 bias", c);
      L.mlp2_blocks = alloc<uint8_t>(E * H * (I / 32) * 16, w + "mlp2 blocks", c);
      L.mlp2_scales = alloc<uint8_t>(E * H * (I / 32), w + "mlp2 scales", c);
      L.mlp2_b = alloc<float>(E * H, w + "mlp2 bias", c);
    }
  }

  void upload(const TensorSource& src, const std::string& layout) {
    Weights hw = bind_weights(cfg, src, layout);  // validates names, shapes, dtypes
    alloc_weights();
    const int64_t H = cfg.hidden, I = cfg.inter, E = cfg.n_experts, Q = cfg.q_dim(), KV = cfg.kv_dim();
    auto h2d = [&](void* dst, const void* s, size_t bytes) {
      CUDA_CHECK(cudaMemcpyAsync(dst, s, bytes, cudaMemcpyHostToDevice, stream));
    };
    auto vec = [&](float* dst, const std::vector<float>& v) { h2d(dst, v.data(), v.size() * sizeof(float)); };
    h2d(embed, hw.embed, size_t(cfg.vocab * H) * 2);
    h2d(unembed, hw.unembed, size_t(cfg.vocab * H) * 2);
    vec(final_norm, hw.final_norm);
    for (int64_t l = 0; l < cfg.n_layers; ++l) {
      const LayerWeights& S = hw.layers[size_t(l)];
      DevLayer& L = layers[size_t(l)];
      vec(L.attn_norm, S.attn_norm);
      h2d(L.qkv_w, S.q_w, size_t(Q * H) * 2);
      h2d(L.qkv_w + Q * H, S.k_w, size_t(KV * H) * 2);
      h2d(L.qkv_w + (Q + KV) * H, S.v_w, size_t(KV * H) * 2);
      std::vector<float> b(S.q_b);
      b.insert(b.end(), S.k_b.begin(), S.k_b.end());
      b.insert(b.end(), S.v_b.begin(), S.v_b.end());
      vec(L.qkv_b, b);
      CUDA_CHECK(cudaStreamSynchronize(stream));  // `b` is a temporary
      vec(L.sinks, S.sinks);
      h2d(L.o_w, S.o_w, size_t(H * Q) * 2);
      vec(L.o_b, S.o_b);
      vec(L.mlp_norm, S.mlp_norm);
      h2d(L.router_w, S.router_w, size_t(E * H) * 2);
      vec(L.router_b, S.router_b);
      h2d(L.mlp1_blocks, S.mlp1_blocks, size_t(E * 2 * I * (H / 32) * 16));
      h2d(L.mlp1_scales, S.mlp1_scales, size_t(E * 2 * I * (H / 32)));
      vec(L.mlp1_b, S.mlp1_b);
      h2d(L.mlp2_blocks, S.mlp2_blocks, size_t(E * H * (I / 32) * 16));
      h2d(L.mlp2_scales, S.mlp2_scales, size_t(E * H * (I / 32)));
      vec(L.mlp2_b, S.mlp2_b);
      CUDA_CHECK(cudaStreamSynchronize(stream));  // the host vectors of `hw` outlive this, but keep memory bounded
    }
  }

  void generate(uint64_t seed) {
    alloc_weights();
    const int64_t H = cfg.hidden, I = cfg.inter, E = cfg.n_experts, Q = cfg.q_dim(), KV = cfg.kv_dim();
    const float fp4_rms = std::sqrt((0.f + .25f + 1.f + 2.25f + 4.f + 9.f + 16.f + 36.f) / 8.f);
    const float jitter = std::sqrt((0.25f + 1.0f + 4.0f) / 3.0f);
    auto base = [&](int64_t fan_in) {
      return 127 + int(std::lround(std::log2(1.0 / std::sqrt(double(fan_in)) / (fp4_rms * jitter))));
    };
    uint64_t sid = 0;
    cudaStream_t st = stream;
    fill_normal_bf16(embed, cfg.vocab * H, 0.f, 1.f, seed, sid++, st);
    fill_normal_bf16(unembed, cfg.vocab * H, 0.f, 2.f / std::sqrt(float(H)), seed, sid++, st);
    fill_normal_f32(final_norm, H, 1.f, 0.1f, seed, sid++, st);
    for (int64_t l = 0; l < cfg.n_layers; ++l) {
      DevLayer& L = layers[size_t(l)];
      sid = 16 + uint64_t(l) * 32;
      fill_normal_f32(L.attn_norm, H, 1.f, 0.1f, seed, sid++, st);
      fill_normal_bf16(L.qkv_w, (Q + 2 * KV) * H, 0.f, 1.f / std::sqrt(float(H)), seed, sid++, st);
      fill_normal_f32(L.qkv_b, Q + 2 * KV, 0.f, 0.05f, seed, sid++, st);
      fill_normal_f32(L.sinks, cfg.n_heads, 1.f, 2.f, seed, sid++, st);
      fill_normal_bf16(L.o_w, H * Q, 0.f, 1.f / std::sqrt(float(Q)), seed, sid++, st);
      fill_normal_f32(L.o_b, H, 0.f, 0.05f, seed, sid++, st);
      fill_normal_f32(L.mlp_norm, H, 1.f, 0.1f, seed, sid++, st);
      fill_normal_bf16(L.router_w, E * H, 0.f, 2.f / std::sqrt(float(H)), seed, sid++, st);
      fill_normal_f32(L.router_b, E, 0.f, 0.1f, seed, sid++, st);
      fill_bytes(L.mlp1_blocks, E * 2 * I * (H / 32) * 16, seed, sid++, st);
      fill_scales(L.mlp1_scales, E * 2 * I * (H / 32), base(H), seed, sid++, st);
      fill_normal_f32(L.mlp1_b, E * 2 * I, 0.f, 0.05f, seed, sid++, st);
      fill_bytes(L.mlp2_blocks, E * H * (I / 32) * 16, seed, sid++, st);
      fill_scales(L.mlp2_scales, E * H * (I / 32), base(I), seed, sid++, st);
      fill_normal_f32(L.mlp2_b, E * H, 0.f, 0.05f, seed, sid++, st);
    }
    CUDA_CHECK(cudaStreamSynchronize(stream));
  }

  // ---- workspace and KV cache -----------------------------------------------------------------
  // Zeroes device memory on the engine stream: a cudaMemset would run on the legacy default
  // stream, which the engine's non-blocking stream is not ordered with. alloc_workspace waits
  // for them once at its end.
  void zero(void* p, size_t bytes) {
    if (!dry) CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, stream));
  }

  void alloc_workspace() {
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

  void alloc_kv() {
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
    full_pool = std::make_unique<PoolView>(*kv_pool, nf > 0);
    win_pool = std::make_unique<PoolView>(*kv_pool, nw > 0);
    KVOptions ko;
    ko.block_size = opt.block_size;
    ko.window_retain = opt.window_retain;
    ko.max_chunk_tokens = opt.max_chunk_tokens;
    ko.prefix_cache = opt.prefix_cache;
    seqs = std::make_unique<SequenceTable>(cfg, ko, *full_pool, *win_pool);
  }

  // ---- a step: validated and chunked by the shared SequenceTable (csrc/kv_cache.h)
  // out: logits rows; else out_tok: one token per item, the argmax (sp null) or sampled with
  // sp[item] (all_logits is then ignored, so output row == item index).
  using SP = ::gptoss::cuda::SampleParams;  // the kernel's (kernels.cuh), not CudaEngine's
  // Host outputs of the device logprobs (n < 0: none), one row per item.
  struct LogprobOut {
    int n = -1, vocab_limit = 0;
    float* chosen = nullptr;  // [items]
    int32_t* ids = nullptr;   // [items * n]
    float* top = nullptr;     // [items * n]
    const Penalties* pen = nullptr;  // and the sampler's penalties (per item; may be null)
  };
  void run(const std::vector<StepItem>& items_in, float* out, int32_t* out_tok, const SP* sp,
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

  void ensure_meta(int64_t n) {
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

  void ensure_pen_saved(int64_t n) {
    if (n <= pen_cap) return;
    const int64_t cap = std::max<int64_t>({n, 2 * pen_cap, 4096});
    drop_graphs();  // they hold the old pointer
    if (pen_saved) CUDA_CHECK(cudaFree(pen_saved));
    pen_saved = nullptr;
    pen_cap = 0;
    pen_saved = static_cast<float*>(dev_alloc(size_t(cap) * 4, "sampling penalties"));
    pen_cap = cap;
  }

  // ---- CUDA graphs: a decode step (one token per sequence) is captured once per launch shape
  // and replayed. Everything a kernel reads that changes from step to step (tokens, positions,
  // block tables, attention groups) is in `meta`, whose layout depends only on the shape; the
  // attention splits are cut per group on the device (AttnArgs::split_len = 0).
  enum Mode : int { LOGITS = 0, ARGMAX = 1, SAMPLE = 2 };
  struct Shape {
    int T, ng, R, nsf, nsw, mode;
    int lpn, lpl;  // SAMPLE: top logprobs per row (-1: no logprobs) and their vocab_limit
    // SAMPLE: room for the chunk's penalty entries, a power of two >= 64 (0: none), so that a
    // graph serves every step whose entries fit; the CSR offsets say how many are real.
    int pe = 0;
    bool operator<(const Shape& o) const {
      return std::tie(T, ng, R, nsf, nsw, mode, lpn, lpl, pe) <
             std::tie(o.T, o.ng, o.R, o.nsf, o.nsw, o.mode, o.lpn, o.lpl, o.pe);
    }
  };
  static constexpr int kSpInts = int(sizeof(SP) / 4);
  static_assert(sizeof(SP) % 4 == 0, "SampleParams is copied as int32 words");
  std::map<Shape, cudaGraphExec_t> graphs;
  int64_t graphs_captured = 0, graph_launches = 0;
  static constexpr int kGraphMaxT = 256;
  static constexpr int kLogitRows = 256;  // rows of the logits buffer (>= kGraphMaxT: a graph's head is one piece)
  static constexpr int kSampleSplitRows = 8;  // sampled steps of up to this many rows gather candidates first
  static_assert(kLogitRows >= kGraphMaxT, "a captured decode step computes its head in one piece");
  static constexpr size_t kMaxGraphs = 64;

  void drop_graphs() {
    for (auto& kv : graphs) cudaGraphExecDestroy(kv.second);
    graphs.clear();
  }

  // ---- profile: device time per kernel kind ----------------------------------------------------
  // A profiled step records an event after each kernel group and the events' elapsed times
  // split it. Steps of up to 256 rows are captured afresh into a graph with the events, so their
  // short kernels run back to back as in a replayed graph; longer ones (prefill) run eagerly,
  // where launch gaps are small next to their kernels.
  bool profiling = false;
  bool prof_on = false;       // marks are recorded now
  bool prof_pending = false;  // a profiled step is in flight
  std::vector<cudaEvent_t> prof_events;
  std::vector<const char*> prof_labels;  // label of the interval ending at event i
  std::map<std::string, std::pair<double, int64_t>> prof_acc;  // label -> (ms, intervals)
  int64_t prof_steps = 0;
  cudaGraphExec_t prof_exec = nullptr;

  void mark(const char* label) {
    if (!prof_on) return;
    const size_t i = prof_labels.size();
    if (i == prof_events.size()) {
      cudaEvent_t e = nullptr;
      CUDA_CHECK(cudaEventCreate(&e));
      prof_events.push_back(e);
    }
    // A plain record on a capturing stream only marks a point of the capture (for other streams
    // to wait on): the graph gets no node and a replay records nothing. An external record is a
    // node of the graph, recorded at each replay.
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    CUDA_CHECK(cudaStreamIsCapturing(stream, &cs));
    if (cs == cudaStreamCaptureStatusActive)
      CUDA_CHECK(cudaEventRecordWithFlags(prof_events[i], stream, cudaEventRecordExternal));
    else
      CUDA_CHECK(cudaEventRecord(prof_events[i], stream));
    prof_labels.push_back(label);
  }

  void run_profiled(const Shape& p) {
    CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    cudaGraph_t g = nullptr;
    prof_on = true;
    try {
      mark("start");
      enqueue_forward(p);
    } catch (...) {
      prof_on = false;
      cudaStreamEndCapture(stream, &g);
      if (g) cudaGraphDestroy(g);
      cudaGetLastError();
      throw;
    }
    prof_on = false;
    CUDA_CHECK(cudaStreamEndCapture(stream, &g));
    const cudaError_t e = cudaGraphInstantiate(&prof_exec, g, 0);
    cudaGraphDestroy(g);
    CUDA_CHECK(e);
    CUDA_CHECK(cudaGraphLaunch(prof_exec, stream));
  }

  // After the profiled step's stream synchronisation: adds its intervals.
  void collect_profile() {
    if (!prof_pending) return;
    prof_pending = false;
    if (prof_exec) cudaGraphExecDestroy(prof_exec);
    prof_exec = nullptr;
    for (size_t i = 1; i < prof_labels.size(); ++i) {
      float ms = 0.f;
      CUDA_CHECK(cudaEventElapsedTime(&ms, prof_events[i - 1], prof_events[i]));
      auto& a = prof_acc[prof_labels[i]];
      a.first += ms;
      a.second += 1;
    }
    ++prof_steps;
  }

  void drop_profile() {
    if (prof_exec) cudaGraphExecDestroy(prof_exec);
    prof_exec = nullptr;
    for (cudaEvent_t e : prof_events) cudaEventDestroy(e);
    prof_events.clear();
  }

  // Metadata layout: tok[T] pos[T] row_full[T] row_win[T] groups_full[ng] groups_win[ng]
  // logit_rows[R] sample_params[R] (SAMPLE only) tables[...] (the full-attention tables, then the
  // window tables).
  static int64_t o_pos(const Shape& p) { return p.T; }
  static int64_t o_rf(const Shape& p) { return 2 * int64_t(p.T); }
  static int64_t o_rw(const Shape& p) { return 3 * int64_t(p.T); }
  static int64_t o_gf(const Shape& p) { return 4 * int64_t(p.T); }
  static int64_t o_gw(const Shape& p) { return o_gf(p) + 4 * int64_t(p.ng); }
  static int64_t o_lr(const Shape& p) { return o_gw(p) + 4 * int64_t(p.ng); }
  static int64_t o_sp(const Shape& p) { return o_lr(p) + p.R; }
  static int64_t o_pen(const Shape& p) { return o_sp(p) + (p.mode == SAMPLE ? int64_t(kSpInts) * p.R : 0); }
  // penalty CSR: off[R + 1] (from 0), id[pe], val[3 pe]
  static int64_t o_tab(const Shape& p) { return o_pen(p) + (p.pe > 0 ? int64_t(p.R + 1) + 4 * int64_t(p.pe) : 0); }

  void forward_chunk(const std::vector<Chunk>& chunks, float* out, int32_t* out_tok, const SP* sp,
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

  int plan_splits(const Shape& p, int max_span) const {
    AttnArgs a;
    a.T = p.T;
    a.n_groups = p.ng;
    a.kv.n_kv = int(cfg.n_kv);
    attn_plan(a, max_span, part_cap, sm_count);
    return a.n_splits;
  }

  void run_graph(const Shape& p) {
    auto it = graphs.find(p);
    if (it == graphs.end()) {
      if (graphs.size() >= kMaxGraphs) drop_graphs();
      CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
      cudaGraph_t g = nullptr;
      try {
        enqueue_forward(p);
      } catch (...) {
        cudaStreamEndCapture(stream, &g);  // leave the stream usable
        if (g) cudaGraphDestroy(g);
        cudaGetLastError();
        throw;
      }
      CUDA_CHECK(cudaStreamEndCapture(stream, &g));
      cudaGraphExec_t ex = nullptr;
      const cudaError_t e = cudaGraphInstantiate(&ex, g, 0);
      cudaGraphDestroy(g);
      CUDA_CHECK(e);
      it = graphs.emplace(p, ex).first;
      ++graphs_captured;
    }
    CUDA_CHECK(cudaGraphLaunch(it->second, stream));
    ++graph_launches;
  }

  // Every kernel of one forward pass over the rows described by `meta` (layout: Shape).
  void enqueue_forward(const Shape& p) {
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

  // Logits of output rows r0 .. r0+n-1 (into `logits`, from row 0), then their greedy or sampled
  // tokens and log-probabilities (at row r0 of those buffers).
  void enqueue_head(const Shape& p, int r0, int n) {
    const ModelConfig& c = cfg;
    const int Hi = int(c.hidden);
    cudaStream_t st = stream;
    dense(t, Hi, meta + o_lr(p) + r0, n, Hi, unembed, Hi, int(c.vocab), nullptr, logits, int(c.vocab), EPI_STORE, st, 0,
          opt.tc_split, opt.gemm_tiles);
    mark("unembedding");
    if (p.mode == ARGMAX) argmax_rows(logits, n, c.vocab, argmax_out + r0, st, &argmax_scr);
    if (p.mode == ARGMAX) mark("argmax");
    const int32_t* pen_off = meta + o_pen(p) + r0;  // absolute entry indices of this piece's rows
    const int32_t* pen_id = meta + o_pen(p) + p.R + 1;
    const float* pen_val = reinterpret_cast<const float*>(meta + o_pen(p) + p.R + 1 + p.pe);
    if (p.pe > 0) apply_penalties(logits, n, c.vocab, pen_off, pen_id, pen_val, pen_saved, st);
    if (p.mode == SAMPLE)
      sample_rows(logits, n, c.vocab, reinterpret_cast<const SP*>(meta + o_sp(p)) + r0, argmax_out + r0, st,
                  &sample_scr);
    if (p.pe > 0 && p.lpn >= 0) restore_penalties(logits, n, c.vocab, pen_off, pen_id, pen_saved, st);
    if (p.mode == SAMPLE && p.lpn >= 0)  // of the raw logits, for the sampled tokens
      logprobs_rows(logits, n, c.vocab, p.lpl, argmax_out + r0, p.lpn, lp_chosen + r0,
                    lp_ids + int64_t(r0) * p.lpn, lp_top + int64_t(r0) * p.lpn, st);
    if (p.mode == SAMPLE) mark(p.lpn >= 0 ? "sampling + logprobs" : "sampling");
  }
};

// ---------------------------------------------------------------------------------------------

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
