// Python bindings for the CPU matmul kernels (gptoss._core.kernels), for tests and benchmarks.
//
//   matmul_bf16(x: float32[T,K], w: uint16[N,K], bias: uint16[N] | None) -> float32[T,N]
//   matmul_mxfp4(x: float32[T,K], blocks: uint8[N,K/32,16], scales: uint8[N,K/32],
//                bias: uint16[N] | None) -> float32[T,N]
//   matmul_bf16_ref / matmul_mxfp4_ref: the scalar double-accumulation oracles, same arguments.
//   simd_level() -> "avx512" | "avx2" | "scalar"
//
// The SIMD path is re-read from the environment (GPTOSS_SIMD=avx2|scalar) on every call, so
// tests switch paths by setting os.environ between calls.
//
// Arrays must have the exact dtype (native byte order); x and w may have a row stride (inner
// stride must be 1), blocks/scales/bias must be C-contiguous. Anything else raises ValueError.
// The GIL is released during the computation.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "common.h"
#include "cpu/matmul.h"

namespace py = pybind11;

namespace {

using gptoss::InvalidArgument;

std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

template <class T>
py::array as_array(const py::handle& obj, const char* name, const char* dtype_name) {
  if (!py::isinstance<py::array>(obj))
    throw InvalidArgument(std::string(name) + " must be a numpy array of " + dtype_name);
  py::array a = py::reinterpret_borrow<py::array>(obj);
  const py::dtype want = py::dtype::of<T>();
  const py::dtype got = a.dtype();
  const char bo = got.byteorder();
  const bool native = bo == '=' || bo == '|' || bo == (__BYTE_ORDER__ == __ORDER_BIG_ENDIAN__ ? '>' : '<');
  if (got.kind() != want.kind() || got.itemsize() != want.itemsize() || !native)
    throw InvalidArgument(std::string(name) + " must have dtype " + dtype_name + ", got " +
                          std::string(py::str(got)));
  return a;
}

// Row stride (in elements) of a 2-D array whose rows are contiguous.
int64_t row_stride_2d(const py::array& a, const char* name) {
  const py::ssize_t item = a.itemsize();
  if (a.size() == 0) return a.shape(1);  // nothing is read; numpy may report any strides
  if (a.shape(1) > 1 && a.strides(1) != item)
    throw InvalidArgument(std::string(name) + " rows must be contiguous (inner stride " +
                          std::to_string(a.strides(1)) + " bytes)");
  if (a.shape(0) > 1 && (a.strides(0) <= 0 || a.strides(0) % item != 0 ||
                         a.strides(0) / item < a.shape(1)))
    throw InvalidArgument(std::string(name) + " has an unsupported row stride (" +
                          std::to_string(a.strides(0)) + " bytes)");
  return a.shape(0) > 1 ? a.strides(0) / item : a.shape(1);
}

void require_c_contiguous(const py::array& a, const char* name) {
  if (!(a.flags() & py::array::c_style))
    throw InvalidArgument(std::string(name) + " must be C-contiguous");
}

struct XArg {
  py::array a;
  const float* p;
  int64_t T, K, ld;
};

XArg get_x(const py::handle& obj) {
  XArg x;
  x.a = as_array<float>(obj, "x", "float32");
  if (x.a.ndim() != 2)
    throw InvalidArgument("x must be 2-D [T, K], got shape " + shape_str(x.a));
  x.T = x.a.shape(0);
  x.K = x.a.shape(1);
  x.ld = row_stride_2d(x.a, "x");
  x.p = static_cast<const float*>(x.a.data());
  return x;
}

gptoss::cpu::Precision get_precision(const std::string& p) {
  if (p == "fp32") return gptoss::cpu::Precision::Fp32;
  if (p == "bf16") return gptoss::cpu::Precision::Bf16;
  throw InvalidArgument("precision must be 'fp32' or 'bf16', got '" + p + "'");
}

const uint16_t* get_bias(const py::object& obj, int64_t N, py::array* keep) {
  if (obj.is_none()) return nullptr;
  *keep = as_array<uint16_t>(obj, "bias", "uint16 (bf16 bits)");
  if (keep->ndim() != 1 || keep->shape(0) != N)
    throw InvalidArgument("bias must have shape (" + std::to_string(N) + ",), got " +
                          shape_str(*keep));
  require_c_contiguous(*keep, "bias");
  return static_cast<const uint16_t*>(keep->data());
}

template <bool kRef>
py::array_t<float> matmul_bf16_py(const py::object& xo, const py::object& wo,
                                  const py::object& bo, const std::string& precision) {
  const auto prec = get_precision(precision);
  XArg x = get_x(xo);
  py::array w = as_array<uint16_t>(wo, "w", "uint16 (bf16 bits)");
  if (w.ndim() != 2) throw InvalidArgument("w must be 2-D [N, K], got shape " + shape_str(w));
  if (w.shape(1) != x.K)
    throw InvalidArgument("w has K = " + std::to_string(w.shape(1)) + " but x has K = " +
                          std::to_string(x.K) + " (x " + shape_str(x.a) + ", w " + shape_str(w) +
                          ")");
  const int64_t N = w.shape(0);
  const int64_t ldw = row_stride_2d(w, "w");
  py::array bkeep;
  const uint16_t* bias = get_bias(bo, N, &bkeep);
  py::array_t<float> y({x.T, N});
  float* yp = y.mutable_data();
  const uint16_t* wp = static_cast<const uint16_t*>(w.data());
  {
    py::gil_scoped_release nogil;
    if (kRef) gptoss::cpu::matmul_bf16_ref(x.p, x.T, x.K, x.ld, wp, N, ldw, bias, yp, N);
    else gptoss::cpu::matmul_bf16(x.p, x.T, x.K, x.ld, wp, N, ldw, bias, yp, N, prec);
  }
  return y;
}

template <bool kRef>
py::array_t<float> matmul_mxfp4_py(const py::object& xo, const py::object& bo,
                                   const py::object& so, const py::object& biaso,
                                   const std::string& precision) {
  const auto prec = get_precision(precision);
  XArg x = get_x(xo);
  if (x.K % 32 != 0)
    throw InvalidArgument("matmul_mxfp4 needs K to be a multiple of 32, got K = " +
                          std::to_string(x.K));
  py::array blocks = as_array<uint8_t>(bo, "blocks", "uint8");
  py::array scales = as_array<uint8_t>(so, "scales", "uint8");
  const int64_t nb = x.K / 32;
  if (blocks.ndim() != 3 || blocks.shape(1) != nb || blocks.shape(2) != 16)
    throw InvalidArgument("blocks must have shape (N, " + std::to_string(nb) +
                          ", 16) for K = " + std::to_string(x.K) + ", got " + shape_str(blocks));
  const int64_t N = blocks.shape(0);
  if (scales.ndim() != 2 || scales.shape(0) != N || scales.shape(1) != nb)
    throw InvalidArgument("scales must have shape (" + std::to_string(N) + ", " +
                          std::to_string(nb) + "), got " + shape_str(scales));
  require_c_contiguous(blocks, "blocks");
  require_c_contiguous(scales, "scales");
  py::array bkeep;
  const uint16_t* bias = get_bias(biaso, N, &bkeep);
  py::array_t<float> y({x.T, N});
  float* yp = y.mutable_data();
  const uint8_t* bp = static_cast<const uint8_t*>(blocks.data());
  const uint8_t* sp = static_cast<const uint8_t*>(scales.data());
  {
    py::gil_scoped_release nogil;
    if (kRef) gptoss::cpu::matmul_mxfp4_ref(x.p, x.T, x.K, x.ld, bp, sp, N, bias, yp, N);
    else gptoss::cpu::matmul_mxfp4(x.p, x.T, x.K, x.ld, bp, sp, N, bias, yp, N, prec);
  }
  return y;
}

}  // namespace

void register_matmul_bindings(py::module_& m) {
  m.def("matmul_bf16", &matmul_bf16_py<false>, py::arg("x"), py::arg("w"),
        py::arg("bias") = py::none(), py::arg("precision") = "fp32",
        "Y[T,N] = x[T,K] @ w[N,K]^T + bias; w and bias are bf16 bit patterns (uint16). "
        "precision 'bf16': x rounded to bf16 and bf16 dot products where the CPU has AVX512_BF16 "
        "(the GEMM path, more than a few tokens), else as 'fp32'.");
  m.def("matmul_bf16_ref", &matmul_bf16_py<true>, py::arg("x"), py::arg("w"),
        py::arg("bias") = py::none(), py::arg("precision") = "fp32",
        "Scalar double-accumulation oracle for matmul_bf16 (precision is ignored).");
  m.def("matmul_mxfp4", &matmul_mxfp4_py<false>, py::arg("x"), py::arg("blocks"),
        py::arg("scales"), py::arg("bias") = py::none(), py::arg("precision") = "fp32",
        "Y[T,N] = x[T,K] @ W^T + bias with W in packed MXFP4 (blocks [N,K/32,16], scales "
        "[N,K/32] E8M0); bias is bf16 bits (uint16). precision as for matmul_bf16 (an MXFP4 "
        "matrix with a scale byte below 2 takes the fp32 path).");
  m.def("matmul_mxfp4_ref", &matmul_mxfp4_py<true>, py::arg("x"), py::arg("blocks"),
        py::arg("scales"), py::arg("bias") = py::none(), py::arg("precision") = "fp32",
        "Scalar double-accumulation oracle for matmul_mxfp4 (precision is ignored).");
  m.def("bf16_dot_available", &gptoss::cpu::bf16_dot_available,
        "whether precision='bf16' runs on bf16 dot products here (AVX512_BF16, not lowered by "
        "GPTOSS_SIMD)");
  m.def("simd_level", &gptoss::cpu::simd_level,
        "SIMD path the kernels take: 'avx512', 'avx2' or 'scalar' (GPTOSS_SIMD=avx2|scalar "
        "in the environment forces a narrower one; re-read on every call).");
}
