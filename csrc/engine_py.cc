// Python bindings of the engine (one class whatever the backend; the CPU's constructor here, the
// CUDA factories in cuda_py.cc), build info and the exception mapping.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "common.h"
#include "cpu/matmul.h"
#include "cpu/roofline.h"
#include "cpu_runner.h"
#include "engine_py_common.h"

#include <omp.h>

namespace py = pybind11;
using namespace gptoss;

namespace {

using namespace gptoss::py_common;

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
    } catch (const Interrupted& e) {
      PyErr_SetString(PyExc_KeyboardInterrupt, e.what());
    } catch (const std::bad_alloc&) {
      PyErr_SetString(PyExc_MemoryError, "out of memory");
    }
  });

  py::class_<EngineCore> engine(m, "Engine",
                                "The engine: sequences in a paged KV cache and batched steps, on the runner of "
                                "its backend (Engine(...) on the CPU; cuda_engine(...) on a CUDA device)");
  engine.def(py::init([](const py::dict& config, const std::vector<std::string>& files, py::object arrays,
                         const std::string& layout, int64_t block_size, int64_t kv_cache_bytes,
                         int64_t window_retain, int64_t max_chunk_tokens, int threads, bool populate,
                         bool int8_decode, bool prefix_cache, const std::string& precision) {
               if (precision != "fp32" && precision != "bf16")
                 throw InvalidArgument("precision must be 'fp32' or 'bf16', got '" + precision + "'");
               auto src = std::make_unique<TensorSource>();
               {
                 py::gil_scoped_release nogil;  // mapping (and populating) large files takes a moment
                 for (const auto& f : files) src->files.push_back(std::make_unique<SafetensorsFile>(f, populate));
               }
               if (!arrays.is_none()) {
                 auto mem = tensor_source({}, arrays, /*keep_alive=*/true);
                 src->memory = std::move(mem->memory);
                 src->keepalive = std::move(mem->keepalive);
               }
               EngineOptions opt;
               opt.kv.block_size = block_size;
               opt.kv.window_retain = window_retain;
               opt.kv.max_chunk_tokens = max_chunk_tokens;
               opt.kv.prefix_cache = prefix_cache;
               opt.kv_cache_bytes = kv_cache_bytes;
               opt.threads = threads;
               opt.int8_decode = int8_decode;
               opt.precision = precision == "bf16" ? cpu::Precision::Bf16 : cpu::Precision::Fp32;
               ModelConfig cfg = config_from_dict(config);
               py::gil_scoped_release nogil;  // quantizing (int8_decode) takes a moment
               return make_cpu_engine(std::move(cfg), std::move(src), layout, opt);
             }),
             py::arg("config"), py::arg("files"), py::arg("arrays") = py::none(), py::arg("layout") = "hf",
             py::arg("block_size") = 16, py::arg("kv_cache_bytes") = int64_t(4) << 30,
             py::arg("window_retain") = 256, py::arg("max_chunk_tokens") = 512, py::arg("threads") = 0,
             py::arg("populate") = false, py::arg("int8_decode") = false, py::arg("prefix_cache") = true,
             py::arg("precision") = "fp32",
             "An engine on the CPU (the weights read in place from the files or arrays)");
  bind_engine(engine);
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
  m.def("measure_peak_gflops_bf16", []() {
    py::gil_scoped_release nogil;
    return cpu::measure_peak_gflops_bf16();
  }, "bf16 dot-product (vdpbf16ps) GFLOP/s on all threads; 0 without AVX512_BF16");
  m.def("build_info", []() {
    py::dict d;
    d["version"] = GPTOSS_VERSION;
    d["compiler"] = GPTOSS_COMPILER;
    d["simd"] = cpu::simd_level();
    d["cpu_bf16_dot"] = cpu::bf16_dot_available();
#ifdef GPTOSS_WITH_CUDA
    d["cuda"] = true;
    d["cuda_archs"] = std::string(GPTOSS_CUDA_ARCHS);
#else
    d["cuda"] = false;
    d["cuda_archs"] = std::string();
#endif
#ifdef GPTOSS_WITH_CUDA_EMU
    d["cuda_emu"] = true;
#else
    d["cuda_emu"] = false;
#endif
    d["openmp_threads"] = omp_get_max_threads();
    return d;
  });
}
