#include "checkpoint_dir.h"

#include <dirent.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>
#include <vector>

#include "common.h"
#include "json.h"

namespace gptoss::bench {

namespace {

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw CheckpointError(path + ": cannot be read");
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

struct Cfg {
  const json::Value& top;
  const json::Value* rope;
  std::string path;
  const json::Value* get(const char* key, const char* rope_key = nullptr) const {
    if (const json::Value* v = top.find(key)) return v;
    if (rope && rope_key) return rope->find(rope_key);
    return nullptr;
  }
  int64_t integer(const char* key, const char* alt = nullptr, int64_t def = -1) const {
    const json::Value* v = get(key);
    if (!v && alt) v = get(alt);
    if (!v) {
      if (def >= 0) return def;
      throw CheckpointError(path + ": lacks required key '" + key + "'");
    }
    if (v->kind != json::Value::Kind::Number || !v->is_integer)
      throw CheckpointError(path + ": " + key + " must be an integer");
    return v->i;
  }
  double number(const json::Value* v, const char* key, double def) const {
    if (!v) return def;
    if (v->kind != json::Value::Kind::Number) throw CheckpointError(path + ": " + key + " must be a number");
    return v->num;
  }
};

}  // namespace

std::vector<float> yarn_inv_freq(int64_t d, float theta, float factor, float beta_fast, float beta_slow,
                                 int64_t orig, bool truncate, float* conc) {
  std::vector<float> freq(size_t(d / 2)), inv(size_t(d / 2));
  for (int64_t i = 0; i < d / 2; ++i) freq[size_t(i)] = std::pow(theta, float(2 * i) / float(d));
  if (factor <= 1.0f) {
    for (int64_t i = 0; i < d / 2; ++i) inv[size_t(i)] = 1.0f / freq[size_t(i)];
    *conc = 1.0f;
    return inv;
  }
  *conc = float(0.1 * std::log(double(factor)) + 1.0);
  auto corr = [&](double rot) { return double(d) * std::log(double(orig) / (rot * 2 * M_PI)) / (2 * std::log(double(theta))); };
  double low = corr(beta_fast), high = corr(beta_slow);
  if (truncate) low = std::floor(low), high = std::ceil(high);
  low = std::max(low, 0.0);
  high = std::min(high, double(d) - 1.0);
  if (low == high) high += 0.001;
  for (int64_t i = 0; i < d / 2; ++i) {
    const float ramp = std::clamp((float(i) - float(low)) / float(high - low), 0.0f, 1.0f);
    const float extrap = 1.0f - ramp;
    inv[size_t(i)] = (1.0f / (factor * freq[size_t(i)])) * (1.0f - extrap) + (1.0f / freq[size_t(i)]) * extrap;
  }
  return inv;
}

CheckpointDir open_checkpoint_dir(const std::string& dir, int64_t max_context, bool populate) {
  const std::string path = dir + "/config.json";
  const std::string text = read_file(path);
  const json::Value root = json::parse(text.data(), text.size(), path);
  if (root.kind != json::Value::Kind::Object) throw CheckpointError(path + ": must hold a JSON object");
  if (root.find("layer_types") == nullptr && root.find("hidden_size") == nullptr)
    throw CheckpointError(path + ": not an HF gpt-oss config (the original/ layout is not supported here)");
  const json::Value* rs = root.find("rope_scaling");
  if (rs && rs->kind == json::Value::Kind::Null) rs = nullptr;
  if (!rs) rs = root.find("rope_parameters");
  Cfg c{root, rs, path};

  CheckpointDir out;
  ModelConfig& m = out.config;
  m.n_layers = c.integer("num_hidden_layers");
  m.n_experts = c.integer("num_local_experts", "num_experts");
  m.top_k = c.integer("num_experts_per_tok", "experts_per_token");
  m.vocab = c.integer("vocab_size");
  m.hidden = c.integer("hidden_size");
  m.inter = c.integer("intermediate_size");
  m.head_dim = c.integer("head_dim");
  m.n_heads = c.integer("num_attention_heads");
  m.n_kv = c.integer("num_key_value_heads");
  m.window = c.integer("sliding_window", nullptr, 128);
  m.swiglu_limit = float(c.number(c.get("swiglu_limit"), "swiglu_limit", 7.0));
  m.rms_eps = float(c.number(c.get("rms_norm_eps"), "rms_norm_eps", 1e-5));
  m.attn_scale = float(1.0 / std::sqrt(double(m.head_dim)));
  if (m.n_layers <= 0 || m.n_layers > 4096) throw CheckpointError(path + ": num_hidden_layers out of range");

  const json::Value* lt = root.find("layer_types");
  for (int64_t l = 0; l < m.n_layers; ++l) {
    if (lt && lt->kind == json::Value::Kind::Array) {
      if (int64_t(lt->arr.size()) != m.n_layers) throw CheckpointError(path + ": layer_types has the wrong length");
      m.sliding.push_back(lt->arr[size_t(l)].str == "sliding_attention" ? 1 : 0);
    } else {
      m.sliding.push_back(l % 2 == 0 ? 1 : 0);
    }
  }
  const int64_t orig = rs && rs->find("original_max_position_embeddings")
                           ? c.integer("initial_context_length", nullptr,
                                       rs->find("original_max_position_embeddings")->i)
                           : c.integer("initial_context_length", nullptr, 4096);
  const float theta = float(c.number(c.get("rope_theta", "rope_theta"), "rope_theta", 150000.0));
  const float factor = float(c.number(rs ? rs->find("factor") : nullptr, "rope_scaling.factor", 32.0));
  const float beta_slow = float(c.number(rs ? rs->find("beta_slow") : nullptr, "beta_slow", 1.0));
  const float beta_fast = float(c.number(rs ? rs->find("beta_fast") : nullptr, "beta_fast", 32.0));
  bool truncate = false;
  if (rs) {
    const json::Value* t = rs->find("truncate");
    truncate = t ? (t->kind == json::Value::Kind::Bool && t->b) : true;  // as transformers
  }
  m.inv_freq = yarn_inv_freq(m.head_dim, theta, factor, beta_fast, beta_slow, orig, truncate, &m.rope_conc);
  int64_t mpe = c.integer("max_position_embeddings", nullptr, 0);
  if (mpe == 0) mpe = int64_t(double(orig) * std::max(1.0f, factor));
  m.max_context = max_context > 0 ? max_context : mpe;

  std::vector<std::string> files;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) {
      const std::string n = e->d_name;
      if (n.size() > 12 && n.compare(n.size() - 12, 12, ".safetensors") == 0) files.push_back(dir + "/" + n);
    }
    closedir(d);
  }
  if (files.empty()) throw CheckpointError(dir + ": no *.safetensors files next to config.json");
  std::sort(files.begin(), files.end());
  out.tensors = std::make_unique<TensorSource>();
  for (const auto& f : files) {
    out.tensors->files.push_back(std::make_unique<SafetensorsFile>(f, populate));
    out.file_bytes += int64_t(out.tensors->files.back()->size());
  }
  return out;
}

}  // namespace gptoss::bench
