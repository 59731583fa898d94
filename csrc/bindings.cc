// pybind11 module gptoss._core: the runtime (Engine), kernel entry points for tests, build info.
#include <pybind11/pybind11.h>

namespace py = pybind11;

void register_matmul_bindings(py::module_& m);  // csrc/cpu/matmul_py.cc

PYBIND11_MODULE(_core, m) {
  m.doc() = "gptoss C++ runtime";
  py::module_ k = m.def_submodule("kernels", "CPU kernels, exposed for tests against numpy references");
  register_matmul_bindings(k);
}
