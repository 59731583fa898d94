// Python bindings of the Engine, build info and the exception mapping.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "common.h"
#include "cpu/matmul.h"
#include "cpu/roofline.h"
#include "model.h"

#include <omp.h>

namespace py = pybind11;
using namespace gptoss;

namespace {

template <typename T>
T req(const py::dict& d, const char* key) {
  if (!d.contains(key)) throw InvalidArgument(std::string("config is missing '") + key + "'");
  return d[key].cast<T>();
}

ModelConfig config_from_dict(const py::dict& d) {
  ModelConfig c;
  c.n_layers = req<int64_t>(d, "num_hidden_layers");
  c.n_experts = req<int64_t>(d, "num_experts");
  c.top_k = req<int64_t>(d, "experts_per_token");
  c.vocab = req<int64_t>(d, "vocab_size");
  c.hidden = req<int64_t>(d, "hidden_size");
  c.inter = req<int64_t>(d, "intermediate_size");
  c.head_dim = req<int64_t>(d, "head_dim");
  c.n_heads = req<int64_t>(d, "num_attention_heads");
  c.n_kv = req<int64_t>(d, "num_key_value_heads");
  c.window = req<int64_t>(d, "sliding_window");
  c.max_context = req<int64_t>(d, "max_context");
  c.swiglu_limit = req<float>(d, "swiglu_limit");
  c.rms_eps = req<float>(d, "rms_norm_eps");
  c.attn_scale = req<float>(d, "attn_scale");
  c.sliding = req<std::vector<uint8_t>>(d, "sliding");
  c.inv_freq = req<std::vector<float>>(d, "inv_freq");
  c.rope_conc = req<float>(d, "rope_concentration");
  return c;
}

DType dtype_of(const py::array& a) {
  const char kind = a.dtype().kind();
  const auto size = a.itemsize();
  if (kind == 'u' && size == 1) return DType::U8;
  if (kind == 'u' && size == 2) return DType::BF16;  // bf16 travels as raw uint16
  if (kind == 'f' && size == 4) return DType::F32;
  if (kind == 'f' && size == 2) return DType::F16;
  if (kind == 'i' && size == 1) return DType::I8;
  if (kind == 'i' && size == 4) return DType::I32;
  if (kind == 'i' && size == 8) return DType::I64;
  return DType::Other;
}

py::object py_error(const char* name) {
  return py::module_::import("gptoss.errors").attr(name);
}

}  // namespace

void register_engine_bindings(py::module_& m) {
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const CheckpointError& e) {
      PyErr_SetString(py_error("CheckpointError").ptr(), e.what());
    } catch (const ContextOverflow& e) {
      PyErr_SetString(py_error("ContextOverflowError").ptr(), e.what());
    } catch (const OutOfMemory& e) {
      PyErr_SetString(PyExc_MemoryError, e.what());
    } catch (const InvalidArgument& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const std::bad_alloc&) {
      PyErr_SetString(PyExc_MemoryError, "out of memory");
    }
  });

  py::class_<Engine>(m, "Engine")
      .def(py::init([](const py::dict& config, const std::vector<std::string>& files, py::object arrays,
                       const std::string& layout, int64_t block_size, int64_t kv_cache_bytes,
                       int64_t window_retain, int64_t max_chunk_tokens, int threads) {
             auto src = std::make_unique<TensorSource>();
             for (const auto& f : files) src->files.push_back(std::make_unique<SafetensorsFile>(f));
             if (!arrays.is_none()) {
               py::dict d = arrays.cast<py::dict>();
               for (auto kv : d) {
                 py::array a = py::reinterpret_borrow<py::array>(kv.second);
                 if (!(a.flags() & py::array::c_style))
                   throw InvalidArgument("array for '" + kv.first.cast<std::string>() + "' must be C-contiguous");
                 TensorInfo ti;
                 ti.name = kv.first.cast<std::string>();
                 ti.dtype = dtype_of(a);
                 ti.dtype_str = dtype_name(ti.dtype);
                 for (py::ssize_t i = 0; i < a.ndim(); ++i) ti.shape.push_back(a.shape(i));
                 ti.data = a.data();
                 ti.nbytes = size_t(a.nbytes());
                 ti.file = "<memory>";
                 src->memory.push_back(std::move(ti));
               }
               src->keepalive = std::shared_ptr<void>(new py::object(arrays), [](void* o) {
                 py::gil_scoped_acquire g;
                 delete static_cast<py::object*>(o);
               });
             }
             EngineOptions opt;
             opt.block_size = block_size;
             opt.kv_cache_bytes = kv_cache_bytes;
             opt.window_retain = window_retain;
             opt.max_chunk_tokens = max_chunk_tokens;
             opt.threads = threads;
             return std::make_unique<Engine>(config_from_dict(config), std::move(src), layout, opt);
           }),
           py::arg("config"), py::arg("files"), py::arg("arrays") = py::none(), py::arg("layout") = "hf",
           py::arg("block_size") = 16, py::arg("kv_cache_bytes") = int64_t(4) << 30,
           py::arg("window_retain") = 256, py::arg("max_chunk_tokens") = 512, py::arg("threads") = 0)
      .def("new_sequence", &Engine::new_sequence)
      .def("fork", &Engine::fork)
      .def("free", &Engine::free_sequence)
      .def("truncate", &Engine::truncate)
      .def("length", &Engine::length)
      .def("has_sequence", &Engine::has_sequence)
      .def("tokens", [](const Engine& e, int64_t s) { return e.tokens(s); })
      .def_property_readonly("num_sequences", &Engine::num_sequences)
      .def("kv_stats", &Engine::kv_stats)
      .def(
          "step",
          [](Engine& e, const std::vector<int64_t>& seqs, const std::vector<py::array_t<int64_t, py::array::c_style | py::array::forcecast>>& toks,
             const std::vector<bool>& all_logits) {
            if (seqs.size() != toks.size() || seqs.size() != all_logits.size())
              throw InvalidArgument("step: seqs, tokens and all_logits must have the same length");
            const int64_t vocab = e.config().vocab;
            std::vector<std::vector<int32_t>> t32(seqs.size());
            std::vector<StepItem> items;
            for (size_t i = 0; i < seqs.size(); ++i) {
              if (toks[i].ndim() != 1) throw InvalidArgument("step: each token list must be 1-D");
              const int64_t n = toks[i].shape(0);
              const int64_t* src = toks[i].data();
              t32[i].resize(size_t(n));
              for (int64_t j = 0; j < n; ++j) {
                if (src[j] < 0 || src[j] >= vocab)
                  throw InvalidArgument("token id " + std::to_string(src[j]) + " at index " + std::to_string(j) +
                                        " is out of range [0, " + std::to_string(vocab) + ")");
                t32[i][size_t(j)] = int32_t(src[j]);
              }
              items.push_back({seqs[i], t32[i].data(), n, bool(all_logits[i])});
            }
            py::array_t<float> out({e.logits_rows(items), vocab});
            float* o = out.mutable_data();
            {
              py::gil_scoped_release nogil;
              e.step(items, o);
            }
            return out;
          },
          py::arg("seqs"), py::arg("tokens"), py::arg("all_logits"));

  m.def("measure_read_bandwidth", [](int64_t bytes, int reps) {
    py::gil_scoped_release nogil;
    return cpu::measure_read_bandwidth(bytes, reps);
  }, py::arg("bytes") = int64_t(1) << 30, py::arg("reps") = 5,
     "GB/s reading a large buffer with all threads (best of reps)");
  m.def("measure_copy_bandwidth", [](int64_t bytes, int reps) {
    py::gil_scoped_release nogil;
    return cpu::measure_copy_bandwidth(bytes, reps);
  }, py::arg("bytes") = int64_t(1) << 30, py::arg("reps") = 5, "GB/s (read + write) copying a large buffer");
  m.def("measure_peak_gflops", []() {
    py::gil_scoped_release nogil;
    return cpu::measure_peak_gflops();
  }, "fp32 FMA GFLOP/s on all threads at the SIMD width in use");
  m.def("build_info", []() {
    py::dict d;
    d["version"] = GPTOSS_VERSION;
    d["compiler"] = GPTOSS_COMPILER;
    d["simd"] = cpu::simd_level();
#ifdef GPTOSS_WITH_CUDA
    d["cuda"] = true;
    d["cuda_archs"] = std::string(GPTOSS_CUDA_ARCHS);
#else
    d["cuda"] = false;
    d["cuda_archs"] = std::string();
#endif
    d["openmp_threads"] = omp_get_max_threads();
    return d;
  });
}
