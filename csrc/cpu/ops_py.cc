// Test entry points for the small CPU kernels (csrc/cpu/ops.h), checked against numpy.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <numeric>
#include <random>
#include <vector>

#include "common.h"
#include "cpu/attention.h"
#include "cpu/matmul_q8.h"
#include "cpu/ops.h"

namespace py = pybind11;
using namespace gptoss;

template <typename T>
using arr = py::array_t<T, py::array::c_style | py::array::forcecast>;

static void need(bool c, const char* msg) {
  if (!c) throw InvalidArgument(msg);
}

void register_ops_bindings(py::module_& m) {
  m.def("rmsnorm", [](arr<float> x, arr<float> w, float eps) {
    need(x.ndim() == 2 && w.ndim() == 1 && w.shape(0) == x.shape(1), "rmsnorm: x [T,H], w [H]");
    py::array_t<float> y({x.shape(0), x.shape(1)});
    cpu::rmsnorm(x.data(), x.shape(0), x.shape(1), w.data(), eps, y.mutable_data());
    return y;
  });
  m.def("embedding", [](arr<int32_t> tok, arr<uint16_t> E) {
    need(tok.ndim() == 1 && E.ndim() == 2, "embedding: tokens [T], table [V,H] (bf16 as uint16)");
    for (py::ssize_t i = 0; i < tok.shape(0); ++i) need(tok.data()[i] >= 0 && tok.data()[i] < E.shape(0), "token out of range");
    py::array_t<float> x({tok.shape(0), E.shape(1)});
    cpu::embedding(tok.data(), tok.shape(0), E.data(), E.shape(1), x.mutable_data());
    return x;
  });
  m.def("rope", [](arr<float> x, arr<int64_t> pos, arr<float> inv_freq, float conc, int64_t n_heads) {
    // x: [T, n_heads*head_dim]; returns the rotated copy.
    need(x.ndim() == 2 && pos.ndim() == 1 && pos.shape(0) == x.shape(0), "rope: x [T, heads*D], pos [T]");
    const int64_t half = inv_freq.shape(0);
    need(x.shape(1) == n_heads * 2 * half, "rope: x width must be n_heads * 2 * len(inv_freq)");
    const int64_t T = x.shape(0);
    std::vector<float> cs(size_t(T * 2 * half));
    cpu::rope_table(pos.data(), T, inv_freq.data(), half, conc, cs.data());
    py::array_t<float> y({x.shape(0), x.shape(1)});
    std::memcpy(y.mutable_data(), x.data(), size_t(x.size()) * sizeof(float));
    cpu::rope_apply(y.mutable_data(), T, x.shape(1), n_heads, half, cs.data());
    return y;
  });
  m.def(
      "attention",
      [](arr<float> q, arr<float> kc, arr<float> vc, arr<int64_t> pos, arr<float> sinks, float scale,
         int64_t window, int64_t block_size, uint32_t shuffle_seed) {
        // q [T, Hq*D]; kc, vc [L, n_kv, D] (dense cache of one sequence); pos [T] with pos < L.
        need(kc.ndim() == 3 && vc.ndim() == 3 && q.ndim() == 2 && pos.ndim() == 1, "attention: bad ranks");
        const int64_t L = kc.shape(0), n_kv = kc.shape(1), D = kc.shape(2);
        need(vc.shape(0) == L && vc.shape(1) == n_kv && vc.shape(2) == D, "attention: k/v shapes differ");
        const int64_t n_heads = sinks.shape(0);
        need(n_heads % n_kv == 0 && q.shape(1) == n_heads * D && pos.shape(0) == q.shape(0), "attention: bad q/sinks");
        need(block_size > 0, "attention: block_size must be positive");
        for (py::ssize_t i = 0; i < pos.shape(0); ++i) need(pos.data()[i] >= 0 && pos.data()[i] < L, "pos out of range");
        // Lay the cache out in shuffled blocks behind a block table, with a dummy layer first
        // so that layer_offset is exercised.
        const int64_t B = block_size, nblk = (L + B - 1) / B, per_layer = 2 * n_kv * B * D;
        std::vector<float> store(size_t(nblk * 2 * per_layer), std::nanf(""));
        std::vector<float*> ptrs(static_cast<size_t>(nblk));
        std::vector<int32_t> table(static_cast<size_t>(nblk));
        std::iota(table.begin(), table.end(), 0);
        std::shuffle(table.begin(), table.end(), std::mt19937(shuffle_seed));
        for (int64_t b = 0; b < nblk; ++b) ptrs[b] = store.data() + b * 2 * per_layer;
        cpu::KVLayerView view{ptrs.data(), table.data(), per_layer, B};
        for (int64_t p = 0; p < L; ++p) {
          std::vector<int64_t> pp{p};
          cpu::kv_store(kc.data() + p * n_kv * D, n_kv * D, vc.data() + p * n_kv * D, n_kv * D, 1, pp.data(), &view,
                        n_kv, D);
        }
        const int64_t T = q.shape(0);
        std::vector<cpu::KVLayerView> views(size_t(T), view);
        py::array_t<float> out({T, n_heads * D});
        cpu::attention(q.data(), n_heads * D, T, pos.data(), views.data(), n_heads, n_kv, D, scale, sinks.data(),
                       window, out.mutable_data());
        return out;
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("pos"), py::arg("sinks"), py::arg("scale"),
      py::arg("window"), py::arg("block_size") = 4, py::arg("shuffle_seed") = 0);
  m.def("router_topk_softmax", [](arr<float> logits, int64_t k) {
    need(logits.ndim() == 2 && k >= 1 && k <= logits.shape(1), "router: logits [T,E], 1 <= k <= E");
    const int64_t T = logits.shape(0);
    py::array_t<int32_t> idx({T, k});
    py::array_t<float> w({T, k});
    cpu::router_topk_softmax(logits.data(), T, logits.shape(1), k, idx.mutable_data(), w.mutable_data());
    return py::make_tuple(idx, w);
  });
  m.def("quantize_q8", [](arr<uint16_t> w) {
    need(w.ndim() == 2 && w.shape(1) % 32 == 0, "quantize_q8: w [N, K] bf16 bits with K % 32 == 0");
    cpu::Q8Matrix q = cpu::quantize_q8(w.data(), w.shape(0), w.shape(1), w.shape(1));
    py::array_t<int8_t> qa({q.N, q.K});
    py::array_t<float> sa({q.N, q.K / 32});
    std::memcpy(qa.mutable_data(), q.q.data(), q.q.size());
    std::memcpy(sa.mutable_data(), q.scales.data(), q.scales.size() * sizeof(float));
    return py::make_tuple(qa, sa);
  });
  auto q8 = [](bool ref) {
    return [ref](arr<float> x, arr<int8_t> q, arr<float> scales) {
      need(x.ndim() == 2 && q.ndim() == 2 && scales.ndim() == 2 && x.shape(1) == q.shape(1) && q.shape(1) % 32 == 0 &&
               scales.shape(0) == q.shape(0) && scales.shape(1) == q.shape(1) / 32,
           "matmul_q8: x [T,K], q [N,K] int8, scales [N,K/32]");
      const int64_t N = q.shape(0), K = q.shape(1);
      py::array_t<float> y({x.shape(0), N});
      if (ref) cpu::matmul_q8_ref(x.data(), x.shape(0), K, q.data(), scales.data(), N, K, y.mutable_data(), N);
      else cpu::matmul_q8(x.data(), x.shape(0), K, q.data(), scales.data(), N, K, y.mutable_data(), N);
      return y;
    };
  };
  m.def("matmul_q8", q8(false), "Y = x . (q * scales)^T, the int8-decode product");
  m.def("matmul_q8_ref", q8(true));
  m.def("swiglu", [](arr<float> h, float alpha, float limit) {
    need(h.ndim() == 2 && h.shape(1) % 2 == 0, "swiglu: h [T, 2I]");
    py::array_t<float> out({h.shape(0), h.shape(1) / 2});
    cpu::swiglu(h.data(), h.shape(0), h.shape(1) / 2, alpha, limit, out.mutable_data());
    return out;
  });
}
