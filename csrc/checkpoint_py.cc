// Python bindings of the checkpoint reader on its own: a file's validated tensor table, and the
// check of a config's sizes against the tensors (gptoss.config runs it before sizing anything
// from config.json).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "common.h"
#include "model.h"

namespace py = pybind11;
using namespace gptoss;

namespace {

int64_t dim(const py::dict& d, const char* key) {
  if (!d.contains(key)) throw InvalidArgument(std::string("config is missing '") + key + "'");
  return d[key].cast<int64_t>();
}

}  // namespace

void register_checkpoint_bindings(py::module_& m) {
  m.def(
      "read_safetensors_header",
      [](const std::string& path) {
        py::list out;
        std::unique_ptr<SafetensorsFile> f;
        {
          py::gil_scoped_release nogil;
          f = std::make_unique<SafetensorsFile>(path);
        }
        for (const auto& t : f->tensors())
          out.append(py::make_tuple(t.name, t.dtype_str, t.shape, t.begin, t.begin + t.nbytes));
        return out;
      },
      py::arg("path"),
      "(name, dtype, shape, begin, end) of every tensor of a safetensors file, in header order, "
      "after the same validation as loading it (raises CheckpointError)");
  m.def(
      "check_checkpoint_tensors",
      [](const py::dict& config, const std::vector<std::string>& files, const std::string& layout) {
        ModelConfig c;
        c.n_layers = dim(config, "num_hidden_layers");
        c.n_experts = dim(config, "num_experts");
        c.top_k = dim(config, "experts_per_token");
        c.vocab = dim(config, "vocab_size");
        c.hidden = dim(config, "hidden_size");
        c.inter = dim(config, "intermediate_size");
        c.head_dim = dim(config, "head_dim");
        c.n_heads = dim(config, "num_attention_heads");
        c.n_kv = dim(config, "num_key_value_heads");
        c.window = dim(config, "sliding_window");
        c.max_context = dim(config, "max_context");
        py::gil_scoped_release nogil;
        TensorSource src;
        for (const auto& f : files) src.files.push_back(std::make_unique<SafetensorsFile>(f));
        check_weights(c, src, layout);
      },
      py::arg("config"), py::arg("files"), py::arg("layout"),
      "Checks that the files hold exactly the tensors a model of these sizes has, with their shapes "
      "and dtypes, reading no tensor data (raises CheckpointError)");
}
