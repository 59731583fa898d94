// CudaRunner: the device (checks, kernels prepared, stream) and the weights, uploaded as the
// checkpoint stores them or generated on the device.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "engine_impl.cuh"

namespace gptoss::cuda {

void CudaRunner::Impl::init_device() {
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

void CudaRunner::Impl::alloc_weights() {
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

void CudaRunner::Impl::upload(const TensorSource& src, const std::string& layout) {
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

void CudaRunner::Impl::generate(uint64_t seed) {
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

}  // namespace gptoss::cuda
