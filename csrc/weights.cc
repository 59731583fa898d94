// Binding checkpoint tensors to the model: name mapping for both layouts and validation.
#include <algorithm>
#include <cmath>
#include <unordered_map>
#include <unordered_set>

#include "common.h"
#include "json.h"
#include "model.h"

namespace gptoss {

namespace {

void need(bool c, const std::string& m) {
  if (!c) throw InvalidArgument("invalid model config: " + m);
}

}  // namespace

void ModelConfig::validate_dims() const {
  need(n_layers > 0 && n_experts > 0 && top_k > 0 && vocab > 0 && hidden > 0 && inter > 0 &&
           head_dim > 0 && n_heads > 0 && n_kv > 0 && window > 0 && max_context > 0,
       "all sizes must be positive");
  // Sizes index int32 tables and kernels; products of two of them stay far from int64 limits.
  const int64_t kMax = (int64_t(1) << 31) - 1;
  need(n_layers <= kMax && n_experts <= kMax && vocab <= kMax && hidden <= kMax && inter <= kMax &&
           head_dim <= kMax && n_heads <= kMax && n_kv <= kMax && window <= kMax && max_context <= kMax,
       "sizes (and max_context) must be below 2^31");
  need(top_k <= n_experts, "experts_per_token > num_experts");
  need(n_heads % n_kv == 0, "num_attention_heads must be a multiple of num_key_value_heads");
  need(head_dim % 2 == 0, "head_dim must be even");
  need(hidden % 32 == 0 && inter % 32 == 0, "hidden_size and intermediate_size must be multiples of 32");
  need(q_dim() <= kMax && kv_dim() <= kMax, "num_attention_heads * head_dim must be below 2^31");
}

void ModelConfig::validate() const {
  validate_dims();
  need(int64_t(sliding.size()) == n_layers, "layer types do not match num_hidden_layers");
  need(int64_t(inv_freq.size()) == head_dim / 2, "inv_freq must have head_dim/2 entries");
  auto positive = [](float v) { return std::isfinite(v) && v > 0.0f; };
  need(positive(swiglu_limit), "swiglu_limit must be finite and positive");
  need(std::isfinite(swiglu_alpha), "swiglu_alpha must be finite");
  need(positive(rms_eps), "rms_norm_eps must be finite and positive");
  need(positive(attn_scale), "attn_scale must be finite and positive");
  need(positive(rope_conc), "rope_concentration must be finite and positive");
  for (float f : inv_freq) need(std::isfinite(f) && f >= 0.0f, "inv_freq entries must be finite and >= 0");
}

namespace {

struct Finder {
  const TensorSource& src;
  const bool read;  // false: check names, shapes and dtypes only (vec() copies nothing)
  std::unordered_map<std::string, const TensorInfo*> by_name;
  mutable std::unordered_set<std::string> used;

  Finder(const TensorSource& s, bool read_data) : src(s), read(read_data) {
    auto add = [&](const TensorInfo& t) {
      auto it = by_name.find(t.name);
      if (it != by_name.end())
        throw CheckpointError("tensor " + json::quote(t.name) + " appears twice: in " + it->second->file + " and " + t.file);
      by_name[t.name] = &t;
    };
    for (const auto& f : src.files)
      for (const auto& t : f->tensors()) add(t);
    for (const auto& t : src.memory) add(t);
  }

  static std::string shape_str(const std::vector<int64_t>& s) {
    std::string r = "[";
    for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
    return r + "]";
  }

  const TensorInfo& get(const std::string& name, const std::vector<int64_t>& shape,
                        std::initializer_list<DType> dtypes) const {
    auto it = by_name.find(name);
    if (it == by_name.end()) throw CheckpointError("missing tensor '" + name + "' (not in any checkpoint file)");
    const TensorInfo& t = *it->second;
    used.insert(name);
    if (t.shape != shape)
      throw CheckpointError("tensor '" + name + "' in " + t.file + " has shape " + shape_str(t.shape) +
                            ", expected " + shape_str(shape));
    bool ok = false;
    std::string want;
    for (DType d : dtypes) {
      ok |= (t.dtype == d);
      want += (want.empty() ? "" : " or ") + std::string(dtype_name(d));
    }
    if (!ok)
      throw CheckpointError("tensor '" + name + "' in " + t.file + " has dtype " + t.dtype_str + ", expected " + want);
    return t;
  }
  const uint16_t* bf16(const std::string& name, const std::vector<int64_t>& shape) const {
    return static_cast<const uint16_t*>(get(name, shape, {DType::BF16}).data);
  }
  const uint8_t* u8(const std::string& name, const std::vector<int64_t>& shape) const {
    return static_cast<const uint8_t*>(get(name, shape, {DType::U8}).data);
  }
  // Small vectors (norms, biases, sinks) are kept as fp32 copies; bf16 or f32 on disk.
  std::vector<float> vec(const std::string& name, const std::vector<int64_t>& shape) const {
    const TensorInfo& t = get(name, shape, {DType::BF16, DType::F32});
    if (!read) return {};
    size_t n = 1;
    for (int64_t d : shape) n *= size_t(d);
    std::vector<float> out(n);
    if (t.dtype == DType::BF16) {
      const uint16_t* p = static_cast<const uint16_t*>(t.data);
      for (size_t i = 0; i < n; ++i) out[i] = bf16_to_f32(p[i]);
    } else {
      std::memcpy(out.data(), t.data, n * sizeof(float));
    }
    return out;
  }

  // A tensor the config does not use means the two disagree (e.g. num_hidden_layers too small):
  // loading would silently drop part of the model.
  void check_all_used(const std::string& layout) const {
    if (used.size() == by_name.size()) return;
    std::vector<std::string> extra;
    for (const auto& kv : by_name)
      if (!used.count(kv.first)) extra.push_back(kv.first);
    std::sort(extra.begin(), extra.end());
    std::string list;
    for (size_t i = 0; i < extra.size() && i < 3; ++i) list += (i ? ", " : "") + json::quote(extra[i]);
    if (extra.size() > 3) list += ", ...";
    const TensorInfo& t = *by_name.at(extra[0]);
    throw CheckpointError(std::to_string(extra.size()) + " tensor(s) that a gpt-oss model of this config (" +
                          layout + " layout) does not have: " + list + " (in " + t.file +
                          "); does config.json match the checkpoint?");
  }
};

Weights bind(const ModelConfig& c, const TensorSource& src, const std::string& layout, bool read);

}  // namespace

Weights bind_weights(const ModelConfig& c, const TensorSource& src, const std::string& layout) {
  return bind(c, src, layout, /*read=*/true);
}

void check_weights(const ModelConfig& c, const TensorSource& src, const std::string& layout) {
  c.validate_dims();
  bind(c, src, layout, /*read=*/false);
}

namespace {

Weights bind(const ModelConfig& c, const TensorSource& src, const std::string& layout, bool read) {
  if (layout != "hf" && layout != "original")
    throw InvalidArgument("layout must be 'hf' or 'original', got '" + layout + "'");
  Finder f(src, read);
  const bool hf = layout == "hf";
  const int64_t H = c.hidden, I = c.inter, E = c.n_experts, Q = c.q_dim(), KV = c.kv_dim();
  Weights w;
  w.embed = f.bf16(hf ? "model.embed_tokens.weight" : "embedding.weight", {c.vocab, H});
  w.unembed = f.bf16(hf ? "lm_head.weight" : "unembedding.weight", {c.vocab, H});
  w.final_norm = f.vec(hf ? "model.norm.weight" : "norm.scale", {H});
  for (int64_t l = 0; l < c.n_layers; ++l) {
    LayerWeights L;
    const std::string p = (hf ? "model.layers." : "block.") + std::to_string(l) + ".";
    if (hf) {
      L.attn_norm = f.vec(p + "input_layernorm.weight", {H});
      L.q_w = f.bf16(p + "self_attn.q_proj.weight", {Q, H});
      L.k_w = f.bf16(p + "self_attn.k_proj.weight", {KV, H});
      L.v_w = f.bf16(p + "self_attn.v_proj.weight", {KV, H});
      L.q_b = f.vec(p + "self_attn.q_proj.bias", {Q});
      L.k_b = f.vec(p + "self_attn.k_proj.bias", {KV});
      L.v_b = f.vec(p + "self_attn.v_proj.bias", {KV});
      L.sinks = f.vec(p + "self_attn.sinks", {c.n_heads});
      L.o_w = f.bf16(p + "self_attn.o_proj.weight", {H, Q});
      L.o_b = f.vec(p + "self_attn.o_proj.bias", {H});
      L.mlp_norm = f.vec(p + "post_attention_layernorm.weight", {H});
      L.router_w = f.bf16(p + "mlp.router.weight", {E, H});
      L.router_b = f.vec(p + "mlp.router.bias", {E});
      L.mlp1_blocks = f.u8(p + "mlp.experts.gate_up_proj_blocks", {E, 2 * I, H / 32, 16});
      L.mlp1_scales = f.u8(p + "mlp.experts.gate_up_proj_scales", {E, 2 * I, H / 32});
      L.mlp1_b = f.vec(p + "mlp.experts.gate_up_proj_bias", {E, 2 * I});
      L.mlp2_blocks = f.u8(p + "mlp.experts.down_proj_blocks", {E, H, I / 32, 16});
      L.mlp2_scales = f.u8(p + "mlp.experts.down_proj_scales", {E, H, I / 32});
      L.mlp2_b = f.vec(p + "mlp.experts.down_proj_bias", {E, H});
    } else {
      L.attn_norm = f.vec(p + "attn.norm.scale", {H});
      const uint16_t* qkv = f.bf16(p + "attn.qkv.weight", {Q + 2 * KV, H});
      L.q_w = qkv;
      L.k_w = qkv + Q * H;
      L.v_w = qkv + (Q + KV) * H;
      std::vector<float> b = f.vec(p + "attn.qkv.bias", {Q + 2 * KV});
      if (read) {
        L.q_b.assign(b.begin(), b.begin() + Q);
        L.k_b.assign(b.begin() + Q, b.begin() + Q + KV);
        L.v_b.assign(b.begin() + Q + KV, b.end());
      }
      L.sinks = f.vec(p + "attn.sinks", {c.n_heads});
      L.o_w = f.bf16(p + "attn.out.weight", {H, Q});
      L.o_b = f.vec(p + "attn.out.bias", {H});
      L.mlp_norm = f.vec(p + "mlp.norm.scale", {H});
      L.router_w = f.bf16(p + "mlp.gate.weight", {E, H});
      L.router_b = f.vec(p + "mlp.gate.bias", {E});
      L.mlp1_blocks = f.u8(p + "mlp.mlp1_weight.blocks", {E, 2 * I, H / 32, 16});
      L.mlp1_scales = f.u8(p + "mlp.mlp1_weight.scales", {E, 2 * I, H / 32});
      L.mlp1_b = f.vec(p + "mlp.mlp1_bias", {E, 2 * I});
      L.mlp2_blocks = f.u8(p + "mlp.mlp2_weight.blocks", {E, H, I / 32, 16});
      L.mlp2_scales = f.u8(p + "mlp.mlp2_weight.scales", {E, H, I / 32});
      L.mlp2_b = f.vec(p + "mlp.mlp2_bias", {E, H});
    }
    w.layers.push_back(std::move(L));
  }
  f.check_all_used(layout);
  return w;
}

}  // namespace

}  // namespace gptoss
