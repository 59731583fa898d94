// The methods of _core.Engine, the same class whatever the backend: the sequence API and the
// steps go to the engine core; the accelerator's options to its DeviceRunner (a clear error on
// an engine whose runner has none).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>

#include "common.h"
#include "cpu_runner.h"
#include "engine_py_common.h"

namespace py = pybind11;

namespace gptoss::py_common {

namespace {

// Ctrl-C during a long step: polled between chunks, with the GIL released around the step
// (the Python error set by PyErr_CheckSignals is raised when the step unwinds).
bool check_signals() {
  py::gil_scoped_acquire gil;
  if (PyErr_CheckSignals() == 0) return false;
  throw py::error_already_set();
}

void run_step(EngineCore& e, const Items& it, const StepOutputs& out) {
  py::gil_scoped_release nogil;
  e.step(it.items, out, check_signals);
}

// f(DeviceRunner&) under the engine lock, without the GIL; `what` names the call in the error
// an engine without a device runner raises.
template <class F>
auto on_device(EngineCore& e, const char* what, F&& f) {
  py::gil_scoped_release nogil;
  return e.with_runner([&](Runner& r) {
    auto* d = dynamic_cast<DeviceRunner*>(&r);
    if (d == nullptr)
      throw InvalidArgument(std::string(what) + ": this engine runs on the " + r.backend() +
                            ", which has no such option (a CUDA engine's)");
    return f(*d);
  });
}

}  // namespace

void bind_engine(py::class_<EngineCore>& c) {
  using E = EngineCore;
  // Every call that takes the engine lock lets go of the GIL first: a step in another thread
  // holds the lock and takes the GIL between chunks (to poll Ctrl-C).
  using nogil = py::call_guard<py::gil_scoped_release>;
  c.def("new_sequence", &E::new_sequence, nogil())
      .def("fork", &E::fork, nogil())
      .def("free", &E::free_sequence, nogil())
      .def("truncate", &E::truncate, nogil())
      .def("length", &E::length, nogil())
      .def("has_sequence", &E::has_sequence, nogil())
      .def("tokens", &E::tokens, nogil())
      .def_property_readonly("num_sequences", [](const E& e) {
        py::gil_scoped_release g;
        return e.num_sequences();
      })
      .def("kv_stats", &E::kv_stats, nogil())
      .def("set_max_chunk_tokens", &E::set_max_chunk_tokens, py::arg("n"), nogil(),
           "tokens per forward chunk from now on, at most the constructed max_chunk_tokens (benchmarks)")
      .def(
          "new_sequence_cached",
          [](E& e, const arr<int64_t>& toks) {
            if (toks.ndim() != 1) throw InvalidArgument("new_sequence_cached: tokens must be 1-D");
            std::vector<int32_t> t(size_t(toks.shape(0)));
            for (size_t i = 0; i < t.size(); ++i) {
              const int64_t v = toks.data()[i];
              if (v < 0 || v > INT32_MAX) throw InvalidArgument("token id " + std::to_string(v) + " is out of range");
              t[i] = int32_t(v);
            }
            int64_t reused = 0, seq = 0;
            {
              py::gil_scoped_release g;
              seq = e.new_sequence_from_cache(t, &reused);
            }
            return py::make_tuple(seq, reused);
          },
          py::arg("tokens"),
          "(sequence id, tokens it already holds): a new sequence with the longest cached prefix of tokens")
      .def("prefix_cache_stats",
           [](const E& e) {
             PrefixCacheStats st;
             {
               py::gil_scoped_release g;
               st = e.prefix_cache_stats();
             }
             py::dict d;
             d["kept_blocks"] = st.kept_blocks;
             d["registered_blocks"] = st.registered_blocks;
             d["query_tokens"] = st.query_tokens;
             d["hit_tokens"] = st.hit_tokens;
             return d;
           })
      .def("clear_prefix_cache", &E::clear_prefix_cache, nogil());

  // What the engine is and can do.
  c.def_property_readonly("backend", [](const E& e) { return std::string(e.backend()); },
                          "the runner: 'cpu', 'cuda' or 'cuda_emu'")
      .def_property_readonly("samples_on_device",
                             [](const E& e) { return e.supports(StepOutput::Sample); },
                             "whether step_argmax / step_sample run here (only token ids come back)")
      .def_property_readonly("precision",
                             [](E& e) {
                               py::gil_scoped_release nogil;  // a step may hold the lock
                               return std::string(e.with_runner([](Runner& r) { return r.precision(); }));
                             },
                             "the arithmetic of the larger products: 'fp32', or 'bf16' (the CPU's bf16 dot "
                             "products where it has AVX512_BF16; plain bf16 tensor-core operands on CUDA)")
      .def_property_readonly("int8_decode", [](const E& e) {
        const auto* r = dynamic_cast<const CpuRunner*>(&e.runner());
        return r != nullptr && r->int8_decode();
      }, "whether decode steps use the int8 weight copies (CPU only)");

  c.def(
       "step",
       [](E& e, const std::vector<int64_t>& seqs, const std::vector<arr<int64_t>>& toks,
          const std::vector<bool>& all_logits) {
         const int64_t vocab = e.config().vocab;
         Items it = make_items(vocab, seqs, toks, all_logits);
         py::array_t<float> out({E::logits_rows(it.items), vocab});
         StepOutputs o;
         o.logits = out.mutable_data();
         run_step(e, it, o);
         return out;
       },
       py::arg("seqs"), py::arg("tokens"), py::arg("all_logits"))
      .def(
          "step_argmax",
          [](E& e, const std::vector<int64_t>& seqs, const std::vector<arr<int64_t>>& toks) {
            Items it = make_items(e.config().vocab, seqs, toks, std::vector<bool>(seqs.size(), false));
            py::array_t<int32_t> out(int64_t(seqs.size()));
            StepOutputs o;
            o.kind = StepOutput::Argmax;
            o.tokens = out.mutable_data();
            run_step(e, it, o);
            return out;
          },
          py::arg("seqs"), py::arg("tokens"), "Greedy next token (argmax on the device) after each item")
      .def(
          "step_sample",
          [](E& e, const std::vector<int64_t>& seqs, const std::vector<arr<int64_t>>& toks, arr<float> temperature,
             arr<int32_t> top_k, arr<float> top_p, arr<float> min_p, arr<float> u, arr<int32_t> vocab_limit,
             int logprobs, py::object pen_off, py::object pen_id, py::object pen_val) -> py::object {
            const size_t n = seqs.size();
            if (!(size_t(temperature.size()) == n && size_t(top_k.size()) == n && size_t(top_p.size()) == n &&
                  size_t(min_p.size()) == n && size_t(u.size()) == n && size_t(vocab_limit.size()) == n))
              throw InvalidArgument("step_sample: one value of each parameter per sequence");
            if (logprobs < -1 || logprobs > kMaxTopLogprobs)
              throw InvalidArgument("step_sample: logprobs must be -1 (none) or 0..20");
            std::vector<SampleParams> sp(n);
            for (size_t i = 0; i < n; ++i)
              sp[i] = SampleParams{temperature.data()[i], top_k.data()[i], top_p.data()[i],
                                   min_p.data()[i],       u.data()[i],     vocab_limit.data()[i]};
            Items it = make_items(e.config().vocab, seqs, toks, std::vector<bool>(n, false));
            const py::ssize_t rows = static_cast<py::ssize_t>(n), top = std::max(logprobs, 0);
            py::array_t<int32_t> out(rows);
            py::array_t<float> chosen(rows), top_lp({rows, top});
            py::array_t<int32_t> top_ids({rows, top});
            Penalties pen;
            const bool has_pen = !pen_off.is_none();
            if (has_pen) {
              auto po = pen_off.cast<arr<int32_t>>();
              auto pi = pen_id.cast<arr<int32_t>>();
              auto pv = pen_val.cast<arr<float>>();
              pen.off.assign(po.data(), po.data() + po.size());
              pen.id.assign(pi.data(), pi.data() + pi.size());
              pen.val.assign(pv.data(), pv.data() + pv.size());
            }
            StepOutputs o;
            o.kind = StepOutput::Sample;
            o.tokens = out.mutable_data();
            o.params = sp.data();
            o.penalties = has_pen ? &pen : nullptr;
            o.logprobs = logprobs;
            o.chosen_lp = chosen.mutable_data();
            o.top_ids = top_ids.mutable_data();
            o.top_lp = top_lp.mutable_data();
            run_step(e, it, o);
            if (logprobs < 0) return std::move(out);
            return py::make_tuple(out, chosen, top_ids, top_lp);
          },
          py::arg("seqs"), py::arg("tokens"), py::arg("temperature"), py::arg("top_k"), py::arg("top_p"),
          py::arg("min_p"), py::arg("u"), py::arg("vocab_limit"), py::arg("logprobs") = -1,
          py::arg("pen_off") = py::none(), py::arg("pen_id") = py::none(), py::arg("pen_val") = py::none(),
          "Next token drawn on the device after each item (sampling.py steps 4-8 with the given uniform u); "
          "logprobs >= 0: (tokens, chosen logprob, top ids, top logprobs) of the raw logits; pen_*: the "
          "penalty CSR (item i: entries pen_off[i]..pen_off[i+1] of pen_id, pen_val [.,3] = rep, sub, bias)");

  // A device runner's options (benchmarks, the GPU check).
  c.def("memory_info", [](E& e) { return on_device(e, "memory_info", [](DeviceRunner& d) { return d.memory_info(); }); })
      .def("device_name", [](E& e) { return on_device(e, "device_name", [](DeviceRunner& d) { return d.device_name(); }); })
      .def("set_cuda_graphs",
           [](E& e, bool on) { on_device(e, "set_cuda_graphs", [&](DeviceRunner& d) { d.set_graphs(on); }); },
           py::arg("enabled"))
      .def("set_tc_split",
           [](E& e, bool split) { on_device(e, "set_tc_split", [&](DeviceRunner& d) { d.set_tc_split(split); }); },
           py::arg("split"),
           "tensor-core GEMMs and prefill attention on hi/lo operands (True, default: fp32-level) or bf16 (False)")
      .def("set_profile",
           [](E& e, bool on) { on_device(e, "set_profile", [&](DeviceRunner& d) { d.set_profile(on); }); },
           py::arg("enabled"), "device time per kernel kind of the following steps (benchmarks); resets the totals")
      .def(
          "profile",
          [](E& e) {
            const auto prof = on_device(e, "profile", [](DeviceRunner& d) { return d.profile(); });
            py::dict d;
            int64_t steps = 0;
            for (const auto& [name, ms, n] : prof) {
              if (name == "steps") steps = n;
              else d[py::str(name)] = py::make_tuple(ms, n);
            }
            d["steps"] = steps;
            return d;
          },
          "{kernel kind: (device ms summed, intervals), 'steps': profiled steps}")
      .def("set_fuse_qkv_rope",
           [](E& e, bool on) { on_device(e, "set_fuse_qkv_rope", [&](DeviceRunner& d) { d.set_fuse_qkv_rope(on); }); },
           py::arg("enabled"), "decode steps: QKV projection, RoPE and KV store in one kernel (default) or two")
      .def("set_moe_gemv_tokens",
           [](E& e, int n) { on_device(e, "set_moe_gemv_tokens", [&](DeviceRunner& d) { d.set_moe_gemv_tokens(n); }); },
           py::arg("n"),
           "steps of up to n tokens run the experts on the GEMV path, longer ones on the tensor-core "
           "GEMM (default: while the pairs average at most 8 per expert, 8 E / k tokens, at least 8)")
      .def("moe_gemv_tokens",
           [](E& e) { return on_device(e, "moe_gemv_tokens", [](DeviceRunner& d) { return d.moe_gemv_tokens(); }); },
           "steps of up to this many tokens run the experts on the GEMV path")
      .def("moe_gemv_available",
           [](E& e) { return on_device(e, "moe_gemv_available", [](DeviceRunner& d) { return d.moe_gemv_available(); }); },
           "whether the experts' decode GEMV runs here (tensor cores that take fp16 subnormals)")
      .def("set_pdl",
           [](E& e, bool on, bool prefetch) {
             return on_device(e, "set_pdl", [&](DeviceRunner& d) { return d.set_pdl(on, prefetch); });
           },
           py::arg("enabled"), py::arg("prefetch") = true,
           "programmatic dependent launch between kernels (sm_90+); returns whether it is in use. "
           "prefetch: the weight-streaming kernels first ask L2 for their weights, then wait")
      .def("set_gemm_tiles",
           [](E& e, int tiles) { on_device(e, "set_gemm_tiles", [&](DeviceRunner& d) { d.set_gemm_tiles(tiles); }); },
           py::arg("tiles"), "tensor-core block tile: 0 auto (default), 1 64x64, 2 64x128, 3 128x128, 4 32x128")
      .def("graph_stats",
           [](E& e) {
             const auto v = on_device(e, "graph_stats", [](DeviceRunner& d) { return d.graph_stats(); });
             py::dict d;
             d["captured"] = v.captured;
             d["launches"] = v.launches;
             d["cached"] = v.cached;
             return d;
           })
      .def("arrival_counters",
           [](E& e) { return on_device(e, "arrival_counters", [](DeviceRunner& d) { return d.arrival_counters(); }); },
           "(counters, non-zero counters) of the last-block-merges kernels once the stream drains (all zero "
           "between steps)")
      .def("synchronize", [](E& e) { on_device(e, "synchronize", [](DeviceRunner& d) { d.synchronize(); }); });
}

}  // namespace gptoss::py_common
