// pybind11 module gptoss._core: the runtime (Engine), kernel entry points for tests, build info.
#include <pybind11/pybind11.h>

namespace py = pybind11;

void register_engine_bindings(py::module_& m);   // csrc/engine_py.cc
void register_ops_bindings(py::module_& m);      // csrc/cpu/ops_py.cc
void register_matmul_bindings(py::module_& m);   // csrc/cpu/matmul_py.cc
void register_checkpoint_bindings(py::module_& m);  // csrc/checkpoint_py.cc

PYBIND11_MODULE(_core, m) {
  m.doc() = "gptoss C++ runtime";
  register_engine_bindings(m);
  register_checkpoint_bindings(m);
  py::module_ k = m.def_submodule("kernels", "CPU kernels, exposed for tests against numpy references");
  register_ops_bindings(k);
  register_matmul_bindings(k);
#ifdef GPTOSS_WITH_CUDA
  { void register_cuda_bindings(py::module_&); register_cuda_bindings(m); }  // csrc/cuda_py.cc
#endif
#ifdef GPTOSS_WITH_CUDA_EMU
  {
    void register_cuda_emu_bindings(py::module_&);  // csrc/cuda_py.cc compiled against cuda/emu
    py::module_ e = m.def_submodule("cuda_emu", "the CUDA backend run by a CPU emulator (tests without a GPU)");
    register_cuda_emu_bindings(e);
  }
#endif
}
