// Binding helpers shared by the engine's constructors (engine_py.cc, cuda_py.cc) and its methods
// (engine_class_py.cc): the config dict, tensors handed over from Python, and step() arguments.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <vector>

#include "common.h"
#include "engine_core.h"
#include "model.h"

namespace gptoss::py_common {

namespace py = pybind11;

template <typename T>
using arr = py::array_t<T, py::array::c_style | py::array::forcecast>;

template <typename T>
T req(const py::dict& d, const char* key) {
  if (!d.contains(key)) throw InvalidArgument(std::string("config is missing '") + key + "'");
  return d[key].cast<T>();
}

// The dict built by python/gptoss/model.py from a ModelConfig.
inline ModelConfig config_from_dict(const py::dict& d) {
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

inline DType dtype_of(const py::array& a) {
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

// Mapped safetensors files plus (optionally) a dict of numpy arrays named like checkpoint
// tensors. With keep_alive the arrays are referenced for the engine's lifetime (the CPU engine
// reads them in place); without it they must only be read during construction.
inline std::unique_ptr<TensorSource> tensor_source(const std::vector<std::string>& files, const py::object& arrays,
                                                   bool keep_alive) {
  auto src = std::make_unique<TensorSource>();
  for (const auto& f : files) src->files.push_back(std::make_unique<SafetensorsFile>(f));
  if (arrays.is_none()) return src;
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
  if (keep_alive)
    src->keepalive = std::shared_ptr<void>(new py::object(arrays), [](void* o) {
      py::gil_scoped_acquire g;
      delete static_cast<py::object*>(o);
    });
  return src;
}

// step() arguments: token ids range-checked here (int64 from Python) and narrowed to int32.
struct Items {
  std::vector<std::vector<int32_t>> t32;
  std::vector<StepItem> items;
};

inline Items make_items(int64_t vocab, const std::vector<int64_t>& seqs, const std::vector<arr<int64_t>>& toks,
                        const std::vector<bool>& all_logits) {
  if (seqs.size() != toks.size() || seqs.size() != all_logits.size())
    throw InvalidArgument("step: seqs, tokens and all_logits must have the same length");
  Items r;
  r.t32.resize(seqs.size());
  for (size_t i = 0; i < seqs.size(); ++i) {
    if (toks[i].ndim() != 1) throw InvalidArgument("step: each token list must be 1-D");
    const int64_t n = toks[i].shape(0);
    const int64_t* src = toks[i].data();
    r.t32[i].resize(size_t(n));
    for (int64_t j = 0; j < n; ++j) {
      if (src[j] < 0 || src[j] >= vocab)
        throw InvalidArgument("token id " + std::to_string(src[j]) + " at index " + std::to_string(j) +
                              " is out of range [0, " + std::to_string(vocab) + ")");
      r.t32[i][size_t(j)] = int32_t(src[j]);
    }
  }
  for (size_t i = 0; i < seqs.size(); ++i)
    r.items.push_back({seqs[i], r.t32[i].data(), int64_t(r.t32[i].size()), bool(all_logits[i])});
  return r;
}

// The methods of _core.Engine (engine_class_py.cc): whichever backend constructed it.
void bind_engine(py::class_<EngineCore>& c);

}  // namespace gptoss::py_common
