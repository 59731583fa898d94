// Python bindings of the CUDA backend (compiled only with GPTOSS_WITH_CUDA), and a second time
// for the CPU emulation of that backend (GPTOSS_CUDA_EMU: `cuda` is then #defined to
// `cuda_emu`, and the functions register into _core.cuda_emu; see cuda/emu/):
//   _core.cuda_engine        an _core.Engine on the CUDA runner
//   _core.cuda_device_count  number of visible devices (0 without driver/GPU; never raises)
//   _core.cuda_kernels       each kernel on numpy inputs (copy in, run, copy out), for tests
#if defined(GPTOSS_WITH_CUDA) || defined(GPTOSS_CUDA_EMU)
#ifndef GPTOSS_CUDA_REGISTER
#define GPTOSS_CUDA_REGISTER register_cuda_bindings
#endif
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "common.h"
#include "engine.h"
#include "engine_py_common.h"
#include "model.h"
#include "test_api.h"

namespace py = pybind11;
using namespace gptoss;

namespace {

using namespace gptoss::py_common;

void need(bool c, const std::string& msg) {
  if (!c) throw InvalidArgument(msg);
}

cuda::CudaEngineOptions make_opts(int64_t block_size, int64_t kv_cache_bytes, int64_t window_retain,
                                  int64_t max_chunk_tokens, int device, const std::string& kv_dtype, bool graphs) {
  cuda::CudaEngineOptions o;
  o.graphs = graphs;
  o.block_size = block_size;
  o.kv_cache_bytes = kv_cache_bytes;
  o.window_retain = window_retain;
  o.max_chunk_tokens = max_chunk_tokens;
  o.device = device;
  if (kv_dtype == "float32" || kv_dtype == "fp32") o.kv_bf16 = false;
  else if (kv_dtype == "bfloat16" || kv_dtype == "bf16") o.kv_bf16 = true;
  else throw InvalidArgument("kv_dtype must be 'float32' or 'bfloat16', got '" + kv_dtype + "'");
  return o;
}

void register_kernels(py::module_& k) {
  using namespace gptoss::cuda;
  k.def("rmsnorm", [](arr<float> x, arr<float> w, float eps) {
    need(x.ndim() == 2 && w.ndim() == 1 && w.shape(0) == x.shape(1), "rmsnorm: x [T,H], w [H]");
    py::array_t<float> y({x.shape(0), x.shape(1)});
    test::rmsnorm(x.data(), int(x.shape(0)), int(x.shape(1)), w.data(), eps, y.mutable_data());
    return y;
  });
  k.def("add_rmsnorm", [](arr<float> x, arr<float> add, arr<float> w, float eps) {
    // returns (x + sum_k add[:, k], rmsnorm(that) * w); add: [T, K, H]
    need(x.ndim() == 2 && add.ndim() == 3 && add.shape(0) == x.shape(0) && add.shape(2) == x.shape(1) &&
             w.ndim() == 1 && w.shape(0) == x.shape(1),
         "add_rmsnorm: x [T,H], add [T,K,H], w [H]");
    py::array_t<float> xo({x.shape(0), x.shape(1)}), y({x.shape(0), x.shape(1)});
    std::memcpy(xo.mutable_data(), x.data(), size_t(x.size()) * 4);
    test::add_rmsnorm(xo.mutable_data(), add.data(), int(add.shape(1)), int(x.shape(0)), int(x.shape(1)), w.data(),
                      eps, y.mutable_data());
    return py::make_tuple(xo, y);
  });
  k.def("embedding", [](arr<int32_t> tok, arr<uint16_t> E) {
    need(tok.ndim() == 1 && E.ndim() == 2, "embedding: tokens [T], table [V,H]");
    for (py::ssize_t i = 0; i < tok.shape(0); ++i) need(tok.data()[i] >= 0 && tok.data()[i] < E.shape(0), "token out of range");
    py::array_t<float> x({tok.shape(0), E.shape(1)});
    test::embedding(tok.data(), int(tok.shape(0)), E.data(), E.shape(0), int(E.shape(1)), x.mutable_data());
    return x;
  });
  k.def("rope", [](arr<float> x, arr<int64_t> pos, arr<float> inv_freq, float conc, int n_heads) {
    need(x.ndim() == 2 && pos.ndim() == 1 && pos.shape(0) == x.shape(0), "rope: x [T, heads*D], pos [T]");
    const int half = int(inv_freq.shape(0));
    need(x.shape(1) == int64_t(n_heads) * 2 * half, "rope: x width must be n_heads * 2 * len(inv_freq)");
    py::array_t<float> y({x.shape(0), x.shape(1)});
    test::rope(x.data(), int(x.shape(0)), pos.data(), inv_freq.data(), half, conc, n_heads, y.mutable_data());
    return y;
  });
  k.def(
      "attention",
      [](arr<float> q, arr<float> kc, arr<float> vc, arr<int64_t> pos, arr<float> sinks, float scale, int window,
         int block_size, uint32_t shuffle_seed, const std::string& kv_dtype, int split_len, int path, bool tc_split,
         bool merge_in_kernel) {
        need(kc.ndim() == 3 && vc.ndim() == 3 && q.ndim() == 2 && pos.ndim() == 1, "attention: bad ranks");
        const int L = int(kc.shape(0)), n_kv = int(kc.shape(1)), D = int(kc.shape(2));
        need(vc.shape(0) == L && vc.shape(1) == n_kv && vc.shape(2) == D, "attention: k/v shapes differ");
        need(n_kv > 0 && D > 0 && sinks.ndim() == 1, "attention: k/v [L, n_kv, D] with n_kv, D > 0; sinks [n_heads]");
        const int n_heads = int(sinks.shape(0));
        need(n_heads % n_kv == 0 && q.shape(1) == int64_t(n_heads) * D && pos.shape(0) == q.shape(0), "attention: bad q/sinks");
        need(block_size > 0, "attention: block_size must be positive");
        for (py::ssize_t i = 0; i < pos.shape(0); ++i) need(pos.data()[i] >= 0 && pos.data()[i] < L, "pos out of range");
        const int T = int(q.shape(0));
        py::array_t<float> out({int64_t(T), int64_t(n_heads) * D});
        test::attention(q.data(), T, n_heads, kc.data(), vc.data(), L, n_kv, D, pos.data(), sinks.data(), scale, window,
                        block_size, shuffle_seed, kv_dtype == "bfloat16", split_len, out.mutable_data(), path,
                        tc_split, merge_in_kernel);
        return out;
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("pos"), py::arg("sinks"), py::arg("scale"), py::arg("window"),
      py::arg("block_size") = 4, py::arg("shuffle_seed") = 0, py::arg("kv_dtype") = "float32", py::arg("split_len") = 0,
      py::arg("path") = 0, py::arg("tc_split") = true, py::arg("merge_in_kernel") = true,
      "path: 0 auto (tensor cores for prefill, head_dim 64), 1 CUDA cores, 2 tensor cores; tc_split: hi/lo "
      "operands (3 MMAs) or plain bf16 (1 MMA); merge_in_kernel: splits merged by their last block, or by a "
      "second kernel");
  k.def(
      "matmul_bf16",
      [](arr<float> x, arr<uint16_t> w, py::object bias, int path, bool split, int tiles) {
        need(tiles >= 0 && tiles <= 4, "matmul_bf16: tiles 0 (auto), 1 (64x64), 2 (64x128), 3 (128x128), 4 (32x128)");
        need(x.ndim() == 2 && w.ndim() == 2 && w.shape(1) == x.shape(1), "matmul_bf16: x [M,K], w [N,K]");
        const int M = int(x.shape(0)), K = int(x.shape(1)), N = int(w.shape(0));
        arr<float> b;
        if (!bias.is_none()) {
          b = bias.cast<arr<float>>();
          need(b.ndim() == 1 && b.shape(0) == N, "matmul_bf16: bias [N] (float32)");
        }
        py::array_t<float> y({int64_t(M), int64_t(N)});
        test::dense(x.data(), M, K, w.data(), N, bias.is_none() ? nullptr : b.data(), path, y.mutable_data(), split,
                    tiles);
        return y;
      },
      py::arg("x"), py::arg("w"), py::arg("bias") = py::none(), py::arg("path") = 0, py::arg("split") = true,
      py::arg("tiles") = 0,
      "Y = x w^T + bias (fp32 bias); path 0 auto, 1 GEMV, 2 tensor cores, 3 tensor-core GEMV (split: hi/lo activations, "
      "tiles: 0 auto, 1 64x64, 2 64x128, 3 128x128, 4 32x128)");
  k.def("router", [](arr<float> t, arr<uint16_t> w, arr<float> b, int k, bool split) {
    need(t.ndim() == 2 && w.ndim() == 2 && w.shape(1) == t.shape(1) && b.ndim() == 1 && b.shape(0) == w.shape(0) &&
             k >= 1 && k <= w.shape(0),
         "router: t [T,H], w [E,H], b [E], 1 <= k <= E");
    const int T = int(t.shape(0));
    py::array_t<int32_t> idx({int64_t(T), int64_t(k)});
    py::array_t<float> rw({int64_t(T), int64_t(k)});
    test::router(t.data(), T, int(t.shape(1)), w.data(), int(w.shape(0)), b.data(), k, idx.mutable_data(),
                 rw.mutable_data(), split);
    return py::make_tuple(idx, rw);
  }, py::arg("t"), py::arg("w"), py::arg("b"), py::arg("k"), py::arg("split") = false,
     "top-k routing; split: few rows over many blocks (up to 16 rows, more than 4 experts), as the engine's decode");
  k.def(
      "moe",
      [](arr<float> x, arr<int32_t> idx, arr<float> rw, arr<uint8_t> b1, arr<uint8_t> s1, arr<float> bias1,
         arr<uint8_t> b2, arr<uint8_t> s2, arr<float> bias2, float alpha, float limit, bool tensor_cores, int tiles,
         bool split) {
        need(tiles >= 0 && tiles <= 4, "moe: tiles 0 (auto), 1 (64x64), 2 (64x128), 3 (128x128), 4 (32x128)");
        need(x.ndim() == 2 && idx.ndim() == 2 && rw.ndim() == 2 && idx.shape(0) == x.shape(0) &&
                 rw.shape(0) == x.shape(0) && rw.shape(1) == idx.shape(1),
             "moe: x [T,H], idx/rw [T,k]");
        const int T = int(x.shape(0)), H = int(x.shape(1)), k = int(idx.shape(1));
        need(b1.ndim() == 4 && b1.shape(2) == H / 32 && b1.shape(3) == 16 && H % 32 == 0, "moe: mlp1 blocks [E, 2I, H/32, 16]");
        const int E = int(b1.shape(0)), I = int(b1.shape(1) / 2);
        need(s1.size() == int64_t(E) * 2 * I * (H / 32) && bias1.size() == int64_t(E) * 2 * I, "moe: mlp1 scales/bias");
        need(b2.ndim() == 4 && b2.shape(0) == E && b2.shape(1) == H && b2.shape(2) == I / 32 && I % 32 == 0,
             "moe: mlp2 blocks [E, H, I/32, 16]");
        need(s2.size() == int64_t(E) * H * (I / 32) && bias2.size() == int64_t(E) * H, "moe: mlp2 scales/bias");
        for (py::ssize_t i = 0; i < idx.size(); ++i) need(idx.data()[i] >= 0 && idx.data()[i] < E, "moe: expert id out of range");
        py::array_t<float> out({int64_t(T), int64_t(H)});
        test::moe(x.data(), T, H, idx.data(), rw.data(), k, E, I, b1.data(), s1.data(), bias1.data(), b2.data(),
                  s2.data(), bias2.data(), alpha, limit, tensor_cores, out.mutable_data(), tiles, split);
        return out;
      },
      py::arg("x"), py::arg("idx"), py::arg("rw"), py::arg("mlp1_blocks"), py::arg("mlp1_scales"),
      py::arg("mlp1_bias"), py::arg("mlp2_blocks"), py::arg("mlp2_scales"), py::arg("mlp2_bias"),
      py::arg("alpha") = 1.702f, py::arg("limit") = 7.0f, py::arg("tensor_cores") = false, py::arg("tiles") = 0,
      py::arg("split") = true, "split: activations as hi + lo parts (fp32-level) or one (fp16 GEMV / bf16 GEMM)");
  k.def(
      "matmul_mxfp4",
      [](arr<float> x, arr<uint8_t> blocks, arr<uint8_t> scales, py::object bias, bool tensor_cores, int tiles,
         bool split) {
        need(tiles >= 0 && tiles <= 4, "matmul_mxfp4: tiles 0 (auto), 1 (64x64), 2 (64x128), 3 (128x128), 4 (32x128)");
        need(x.ndim() == 2 && x.shape(1) % 32 == 0, "matmul_mxfp4: x [T,K], K % 32 == 0");
        const int T = int(x.shape(0)), K = int(x.shape(1));
        need(blocks.ndim() == 3 && blocks.shape(1) == K / 32 && blocks.shape(2) == 16, "matmul_mxfp4: blocks [N, K/32, 16]");
        const int N = int(blocks.shape(0));
        need(scales.ndim() == 2 && scales.shape(0) == N && scales.shape(1) == K / 32, "matmul_mxfp4: scales [N, K/32]");
        arr<float> b;
        if (!bias.is_none()) {
          b = bias.cast<arr<float>>();
          need(b.ndim() == 1 && b.shape(0) == N, "matmul_mxfp4: bias [N] (float32)");
        }
        py::array_t<float> y({int64_t(T), int64_t(N)});
        test::mxfp4_matmul(x.data(), T, K, blocks.data(), scales.data(), N, bias.is_none() ? nullptr : b.data(),
                           tensor_cores, y.mutable_data(), tiles, split);
        return y;
      },
      py::arg("x"), py::arg("blocks"), py::arg("scales"), py::arg("bias") = py::none(), py::arg("tensor_cores") = false,
      py::arg("tiles") = 0, py::arg("split") = true);
  k.def("subnormal_probe", [] {
    float v[2];
    test::subnormal_probe(v);
    return py::make_tuple(v[0], v[1]);
  }, "(A, B): what 16 products of the fp16 subnormal 2^-15 and 1 sum to on a tensor core with the subnormals in "
     "operand A / B: 2^-11 where they are taken as they are, 0 where flushed");
  k.def("kernel_attributes", [] {
    py::list out;
    for (const auto& a : test::kernel_attributes()) {
      py::dict d;
      d["name"] = a.name;
      d["launch_threads"] = a.launch_threads;
      d["max_threads"] = a.max_threads;
      d["regs"] = a.regs;
      d["local_bytes"] = a.local_bytes;
      d["static_shared_bytes"] = a.static_shared_bytes;
      d["const_bytes"] = a.const_bytes;
      d["max_dynamic_shared_bytes"] = a.max_dynamic_shared_bytes;
      out.append(d);
    }
    return out;
  }, "every kernel's cudaFuncGetAttributes (registers, local memory, ...) and the block size it is launched with");
  k.def("shared_memory_optin", &test::shared_memory_optin, py::arg("dynamic_bytes"),
        "a kernel with 1 KiB of static shared memory and dynamic_bytes more, its limit set as the GEMMs set theirs; "
        "returns the sum of both (256 * 2 + dynamic_bytes / 4)");
  k.def("merge_pattern", &test::merge_pattern, py::arg("variant"), py::arg("blocks"),
        "the last-block-merges pattern: 0 right (last_block_arrives), 1 no barrier before the fence, 2 no fence; "
        "returns the last block's sum of every block's stores");
  k.def("argmax", [](arr<float> logits, bool split) {
    need(logits.ndim() == 2, "argmax: logits [R, V]");
    py::array_t<int32_t> out(logits.shape(0));
    test::argmax(logits.data(), int(logits.shape(0)), logits.shape(1), out.mutable_data(), split);
    return out;
  }, py::arg("logits"), py::arg("split") = true,
     "split: each row over several blocks (the last one picks), as the engine does for few rows");
  k.def(
      "sample",
      [](arr<float> logits, arr<float> temperature, arr<int32_t> top_k, arr<float> top_p, arr<float> min_p,
         arr<float> u, int64_t vocab_limit, int splits) {
        need(logits.ndim() == 2, "sample: logits must be a 2-D array [R, V]");
        need(splits <= 64, "sample: splits must be <= 64");
        const int64_t R = logits.shape(0), V = logits.shape(1);
        auto per_row = [&](const py::array& a, const char* name) {
          need(a.ndim() == 1 && a.shape(0) == R,
               std::string("sample: ") + name + " must have shape [R] = [" + std::to_string(R) + "] (one per row)");
        };
        per_row(temperature, "temperature");
        per_row(top_k, "top_k");
        per_row(top_p, "top_p");
        per_row(min_p, "min_p");
        per_row(u, "u");
        for (int64_t r = 0; r < R; ++r) {
          const std::string at = " (row " + std::to_string(r) + ")";
          need(std::isfinite(temperature.data()[r]) && temperature.data()[r] >= 0.f,
               "sample: temperature must be finite and >= 0 (0 = greedy)" + at);
          need(top_k.data()[r] >= 0, "sample: top_k must be >= 0 (0 = off)" + at);
          need(top_p.data()[r] > 0.f && top_p.data()[r] <= 1.f, "sample: top_p must be in (0, 1]" + at);
          need(min_p.data()[r] >= 0.f && min_p.data()[r] <= 1.f, "sample: min_p must be in [0, 1]" + at);
          need(u.data()[r] >= 0.f && u.data()[r] < 1.f, "sample: u must be in [0, 1)" + at);
        }
        need(vocab_limit >= 0 && vocab_limit <= INT32_MAX, "sample: vocab_limit must be >= 0 (0 = every id)");
        py::array_t<int32_t> out(R);
        test::sample(logits.data(), int(R), V, temperature.data(), top_k.data(), top_p.data(), min_p.data(), u.data(),
                     int(vocab_limit), out.mutable_data(), splits);
        return out;
      },
      py::arg("logits"), py::arg("temperature"), py::arg("top_k"), py::arg("top_p"), py::arg("min_p"), py::arg("u"),
      py::arg("vocab_limit") = 0, py::arg("splits") = -1,
      "one token per row of logits [R, V] (sampling.py steps 4-8 with the uniform draw u); -1 where no id can be "
      "sampled. splits: < 0 one block per row, 0 the engine's choice, > 0 the candidates gathered over that many "
      "slices of each row first");
  k.def(
      "logprobs",
      [](arr<float> logits, arr<int32_t> token, int64_t n, int64_t vocab_limit) {
        need(logits.ndim() == 2, "logprobs: logits must be a 2-D array [R, V]");
        const int64_t R = logits.shape(0), V = logits.shape(1);
        need(token.ndim() == 1 && token.shape(0) == R,
             "logprobs: token must have shape [R] = [" + std::to_string(R) + "] (one per row)");
        need(n >= 0 && n <= 20, "logprobs: n must be in [0, 20] (kMaxTopLogprobs)");
        need(vocab_limit >= 0 && vocab_limit <= INT32_MAX, "logprobs: vocab_limit must be >= 0 (0 = every id)");
        py::array_t<float> chosen(R), top_lp({R, n});
        py::array_t<int32_t> top_ids({R, n});
        test::logprobs(logits.data(), int(R), V, int(vocab_limit), token.data(), int(n), chosen.mutable_data(),
                       top_ids.mutable_data(), top_lp.mutable_data());
        return py::make_tuple(chosen, top_ids, top_lp);
      },
      py::arg("logits"), py::arg("token"), py::arg("n"), py::arg("vocab_limit") = 0,
      "log_softmax of each row of logits [R, V] (sampling.py's Sampler._with_logprobs): (chosen_lp [R], top_ids "
      "[R, n], top_lp [R, n]), the n most likely ids descending (ties: lower id)");
  k.def(
      "copy_bandwidth",
      [](int64_t bytes, int reps) {
        py::gil_scoped_release nogil;
        return test::copy_bandwidth(bytes, reps);
      },
      py::arg("bytes") = int64_t(1) << 30, py::arg("reps") = 5,
      "device-to-device cudaMemcpy GB/s (read + write), best of reps");
  k.def(
      "fill",
      [](const std::string& kind, int64_t n, float mean, float std, int base, uint64_t seed, uint64_t stream) -> py::object {
        if (kind == "normal_bf16") {
          py::array_t<uint16_t> a(n);
          test::fill(0, n, mean, std, base, seed, stream, a.mutable_data());
          return std::move(a);
        }
        if (kind == "normal_f32") {
          py::array_t<float> a(n);
          test::fill(1, n, mean, std, base, seed, stream, a.mutable_data());
          return std::move(a);
        }
        py::array_t<uint8_t> a(n);
        if (kind == "bytes") test::fill(2, n, mean, std, base, seed, stream, a.mutable_data());
        else if (kind == "scales") test::fill(3, n, mean, std, base, seed, stream, a.mutable_data());
        else throw InvalidArgument("fill: kind must be normal_bf16, normal_f32, bytes or scales");
        return std::move(a);
      },
      py::arg("kind"), py::arg("n"), py::arg("mean") = 0.f, py::arg("std") = 1.f, py::arg("base") = 127,
      py::arg("seed") = 0, py::arg("stream") = 0);
}

}  // namespace

#ifdef GPTOSS_CUDA_EMU
namespace gptoss_emu {
uint64_t prefetch_count();  // cuda/emu/emu_blocks.cc
uint64_t held_count();
uint64_t private_page_count();  // cuda/emu/emu_memory.cc
std::string set_mma_mode(const std::string& mode);  // cuda/emu/emu.cc
}
#endif

void GPTOSS_CUDA_REGISTER(py::module_& m) {
#ifdef GPTOSS_CUDA_EMU
  m.def("emu_prefetch_count", &gptoss_emu::prefetch_count, "L2 prefetch ranges the emulator has checked so far");
  m.def("emu_held_count", &gptoss_emu::held_count,
        "times a block was held at an atomic on global memory while other blocks ran (interleaving)");
  m.def("emu_private_page_count", &gptoss_emu::private_page_count,
        "pages that blocks stored to before a fence made them visible (the store-visibility model)");
  m.def("emu_set_mma_mode", &gptoss_emu::set_mma_mode, py::arg("mode"),
        "MMA arithmetic: 'exact' (default) or 'hardware' (aligned to the largest exponent and truncated per "
        "instruction, as tensor cores), optionally '+flush_a' / '+flush_b' (fp16 subnormal inputs of that operand "
        "read as zero); returns the previous mode");
#endif
  m.def("cuda_device_count", &cuda::device_count, "Number of visible CUDA devices (0 without a driver or GPU)");
  m.def("cuda_device_description", &cuda::device_description, py::arg("device") = 0);
  m.def(
      "cuda_memory_plan",
      [](const py::dict& config, int64_t block_size, int64_t window_retain, int64_t max_chunk_tokens,
         const std::string& kv_dtype) {
        const auto opt = make_opts(block_size, 0, window_retain, max_chunk_tokens, 0, kv_dtype, true);
        return cuda::CudaRunner::memory_plan(config_from_dict(config), opt);
      },
      py::arg("config"), py::arg("block_size") = 16, py::arg("window_retain") = 256,
      py::arg("max_chunk_tokens") = 512, py::arg("kv_dtype") = "float32",
      "Device bytes of a model (weights, workspace, KV per token / per sequence) without a device");

  // The engine (the one _core.Engine class) on this backend's runner.
  m.def(
      "cuda_engine",
      [](const py::dict& config, const std::vector<std::string>& files, py::object arrays, const std::string& layout,
         int64_t block_size, int64_t kv_cache_bytes, int64_t window_retain, int64_t max_chunk_tokens, int device,
         const std::string& kv_dtype, py::object synthetic_seed, bool cuda_graphs, bool prefix_cache) {
        auto opt = make_opts(block_size, kv_cache_bytes, window_retain, max_chunk_tokens, device, kv_dtype, cuda_graphs);
        opt.prefix_cache = prefix_cache;
        ModelConfig cfg = config_from_dict(config);
        if (!synthetic_seed.is_none()) {
          const uint64_t seed = synthetic_seed.cast<uint64_t>();
          py::gil_scoped_release nogil;
          return cuda::make_cuda_engine(std::move(cfg), seed, opt);
        }
        // The arrays are only read during construction (uploaded), under the GIL.
        auto src = tensor_source(files, arrays, /*keep_alive=*/false);
        return cuda::make_cuda_engine(std::move(cfg), std::move(src), layout, opt);
      },
      py::arg("config"), py::arg("files"), py::arg("arrays") = py::none(), py::arg("layout") = "hf",
      py::arg("block_size") = 16, py::arg("kv_cache_bytes") = 0, py::arg("window_retain") = 256,
      py::arg("max_chunk_tokens") = 512, py::arg("device") = 0, py::arg("kv_dtype") = "float32",
      py::arg("synthetic_seed") = py::none(), py::arg("cuda_graphs") = true, py::arg("prefix_cache") = true,
      "An Engine on a CUDA device: weights uploaded from the files or arrays, or made there from synthetic_seed");

  py::module_ k = m.def_submodule("cuda_kernels", "CUDA kernels on numpy inputs (copy in, run, copy out), for tests");
  register_kernels(k);
}

#endif  // GPTOSS_WITH_CUDA || GPTOSS_CUDA_EMU
