#include "llama.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>
#include <tuple>

#include "pipeswap/core/error.h"
#include "pipeswap/core/torch_compat.h"
#include "config_json.h"
#include "fused.h"
#include "layers.h"

namespace pipeswap::models {
namespace {

using nlohmann::json;

constexpr const char* kSupportedRope = "default, linear, dynamic, llama3, yarn";
constexpr double kPi = 3.14159265358979323846;  // math.pi

double rope_number(const json& params, const std::string& dict, const char* name, const std::string& type) {
  PS_CHECK(has(params, name), CheckpointError, "config.json: '{}.{}' is missing; rope_type '{}' needs it", dict, name,
           type);
  return as_number(params.at(name), dict + "." + name);
}

// "rope_scaling" (transformers 4: rope_theta beside it) or "rope_parameters" (transformers 5: rope_theta inside).
RopeConfig parse_rope(const json& c, int64_t max_position_embeddings) {
  RopeConfig r;
  r.max_position_embeddings = max_position_embeddings;
  r.original_max_position_embeddings = max_position_embeddings;
  std::string dict = has(c, "rope_parameters") ? "rope_parameters" : "rope_scaling";
  json params = has(c, dict) ? c.at(dict) : json::object();
  PS_CHECK(params.is_object(), CheckpointError, "config.json: '{}' must be an object or null, got {}", dict,
           params.dump());
  // transformers 5 nests one dict per layer type ({"full_attention": {...}, ...}) when layer types may differ.
  bool nested = !params.empty();
  for (const auto& [k, v] : params.items()) nested = nested && v.is_object();
  if (nested) {
    const std::string first_key = params.begin().key();
    const json first = params.begin().value();
    for (const auto& [k, v] : params.items()) {
      PS_CHECK(v == first, CheckpointError,
               "config.json: '{}' gives layer type '{}' other RoPE parameters than '{}': per-layer-type RoPE is not "
               "supported for Llama-family models",
               dict, k, first_key);
    }
    dict += "." + first_key;
    params = first;
  }

  if (has(params, "rope_type")) {
    PS_CHECK(params.at("rope_type").is_string(), CheckpointError, "config.json: '{}.rope_type' must be a string", dict);
    r.type = params.at("rope_type").get<std::string>();
  } else if (has(params, "type")) {
    PS_CHECK(params.at("type").is_string(), CheckpointError, "config.json: '{}.type' must be a string", dict);
    r.type = params.at("type").get<std::string>();
  }
  // transformers 5 keeps rope_theta inside the dict and lets it win over a top-level one.
  if (has(params, "rope_theta")) {
    r.theta = as_number(params.at("rope_theta"), dict + ".rope_theta");
  } else if (has(c, "rope_theta")) {
    r.theta = as_number(c.at("rope_theta"), "rope_theta");
  }
  PS_CHECK(r.theta > 0, CheckpointError, "config.json: rope_theta must be positive, got {}", r.theta);
  for (const json* j : std::initializer_list<const json*>{&params, &c}) {
    if (has(*j, "partial_rotary_factor")) {
      const double p = as_number(j->at("partial_rotary_factor"), "partial_rotary_factor");
      PS_CHECK(p == 1.0, CheckpointError,
               "config.json: partial_rotary_factor {} is not supported for Llama-family models (only 1.0)", p);
    }
  }

  // Pretraining length for llama3 / yarn. transformers 5 prefers a top-level value (Phi-3 style), then the
  // dict's, then max_position_embeddings.
  auto original_max = [&]() {
    if (has(c, "original_max_position_embeddings"))
      return optional_positive(c, "original_max_position_embeddings", max_position_embeddings);
    if (has(params, "original_max_position_embeddings")) {
      const std::string key = dict + ".original_max_position_embeddings";
      const int64_t v = as_int(params.at("original_max_position_embeddings"), key);
      PS_CHECK(v > 0, CheckpointError, "config.json: '{}' must be positive, got {}", key, v);
      return v;
    }
    return max_position_embeddings;
  };
  auto positive_factor = [&]() {
    const double f = rope_number(params, dict, "factor", r.type);
    PS_CHECK(f > 0, CheckpointError, "config.json: '{}.factor' must be positive, got {}", dict, f);
    return f;
  };

  if (r.type == "default") {
    return r;
  } else if (r.type == "linear" || r.type == "dynamic") {
    r.factor = positive_factor();
  } else if (r.type == "llama3") {
    r.factor = positive_factor();
    r.low_freq_factor = rope_number(params, dict, "low_freq_factor", r.type);
    r.high_freq_factor = rope_number(params, dict, "high_freq_factor", r.type);
    PS_CHECK(r.low_freq_factor > 0 && r.high_freq_factor > r.low_freq_factor, CheckpointError,
             "config.json: '{}' needs 0 < low_freq_factor < high_freq_factor, got {} and {}", dict, r.low_freq_factor,
             r.high_freq_factor);
    r.original_max_position_embeddings = original_max();
  } else if (r.type == "yarn") {
    r.original_max_position_embeddings = original_max();
    // As transformers 5: an explicit factor wins; without one, the ratio of the two lengths.
    r.factor = has(params, "factor") ? positive_factor()
                                     : static_cast<double>(max_position_embeddings) /
                                           static_cast<double>(r.original_max_position_embeddings);
    auto opt = [&](const char* name) {
      return has(params, name) ? as_number(params.at(name), dict + "." + name) : 0.0;
    };
    r.attention_factor = opt("attention_factor");
    r.beta_fast = opt("beta_fast");
    r.beta_slow = opt("beta_slow");
    r.mscale = opt("mscale");
    r.mscale_all_dim = opt("mscale_all_dim");
    r.truncate = optional_bool(params, "truncate", true);
  } else {
    PS_THROW(CheckpointError,
             "config.json: '{}' has rope_type '{}', which pipeswap does not support; supported RoPE types: {}", dict,
             r.type, kSupportedRope);
  }
  return r;
}

// Which layers attend through a sliding window, as transformers decides it.
std::vector<int64_t> parse_sliding_window(const json& c, const std::string& family, int64_t layers) {
  std::vector<int64_t> windows(static_cast<size_t>(layers), 0);
  if (family == "llama") return windows;  // LlamaConfig has no sliding window
  // HF's class defaults apply when the key is absent; an explicit null turns the window off.
  int64_t window = c.contains("sliding_window") ? 0 : 4096;
  if (has(c, "sliding_window")) {
    window = as_int(c.at("sliding_window"), "sliding_window");
    PS_CHECK(window > 0, CheckpointError, "config.json: 'sliding_window' must be positive or null, got {}", window);
  }
  // Qwen2 keeps sliding_window in its config but uses it only with use_sliding_window.
  if (family == "qwen2" && !optional_bool(c, "use_sliding_window", false)) window = 0;
  if (window == 0) return windows;

  if (has(c, "layer_types")) {
    const json& types = c.at("layer_types");
    PS_CHECK(types.is_array() && static_cast<int64_t>(types.size()) == layers, CheckpointError,
             "config.json: 'layer_types' must list one type per layer ({} layers), got {}", layers, types.dump());
    for (int64_t i = 0; i < layers; ++i) {
      const json& t = types.at(static_cast<size_t>(i));
      PS_CHECK(t == "sliding_attention" || t == "full_attention", CheckpointError,
               "config.json: layer_types[{}] is {}; Llama-family layers are \"full_attention\" or "
               "\"sliding_attention\"",
               i, t.dump());
      if (t == "sliding_attention") windows[static_cast<size_t>(i)] = window;
    }
  } else if (family == "qwen2") {
    const int64_t first = has(c, "max_window_layers") ? as_int(c.at("max_window_layers"), "max_window_layers") : 28;
    for (int64_t i = std::max<int64_t>(first, 0); i < layers; ++i) windows[static_cast<size_t>(i)] = window;
  } else {
    for (auto& w : windows) w = window;  // Mistral: every layer
  }
  return windows;
}

// arange(0, dim, 2).float() / dim: HF's RoPE exponents.
torch::Tensor rope_exponents(int64_t dim) {
  return torch::arange(0, dim, 2, torch::TensorOptions().dtype(torch::kInt64)).to(torch::kFloat32) / dim;
}

// HF's default inverse frequencies 1.0 / (base ** exponents), with the same ops (Python's `1.0 / t` is
// t.reciprocal() * 1.0; `float ** tensor` is pow(Scalar, Tensor)) so that fp32 results agree bit for bit.
torch::Tensor default_inv_freq(double base, int64_t dim) {
  return torch::reciprocal(torch::pow(base, rope_exponents(dim)));
}
// The same with a 0-dim fp32 base (dynamic NTK's rescaled base is a tensor in HF).
torch::Tensor default_inv_freq(const torch::Tensor& base, int64_t dim) {
  return torch::reciprocal(torch::pow(base, rope_exponents(dim)));
}

// HF's _compute_llama3_parameters.
torch::Tensor llama3_inv_freq(const RopeConfig& r, int64_t dim) {
  auto inv_freq = default_inv_freq(r.theta, dim);
  const double old_context = static_cast<double>(r.original_max_position_embeddings);
  const double low_freq_wavelen = old_context / r.low_freq_factor;
  const double high_freq_wavelen = old_context / r.high_freq_factor;
  auto wavelen = torch::reciprocal(inv_freq) * (2 * kPi);
  // Wavelengths longer than the pretraining context are divided by factor, shorter ones kept, the band between
  // interpolated smoothly.
  auto scaled = torch::where(wavelen > low_freq_wavelen, inv_freq / r.factor, inv_freq);
  auto smooth = (torch::reciprocal(wavelen) * old_context - r.low_freq_factor) /
                (r.high_freq_factor - r.low_freq_factor);
  auto smoothed = torch::rsub(smooth, 1) * scaled / r.factor + smooth * scaled;
  auto medium = (wavelen < high_freq_wavelen).logical_not().logical_and((wavelen > low_freq_wavelen).logical_not());
  return torch::where(medium, smoothed, scaled);
}

// HF's _compute_yarn_parameters (transformers 5 semantics: explicit factor, truncate option).
std::pair<torch::Tensor, double> yarn_inv_freq(const RopeConfig& r, int64_t dim) {
  const double base = r.theta;
  const double factor = r.factor;
  auto get_mscale = [](double scale, double mscale) { return scale <= 1 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0; };
  double attention_factor = r.attention_factor;
  if (attention_factor == 0.0) {
    attention_factor = (r.mscale != 0.0 && r.mscale_all_dim != 0.0)
                           ? get_mscale(factor, r.mscale) / get_mscale(factor, r.mscale_all_dim)
                           : get_mscale(factor, 1.0);
  }
  const double beta_fast = r.beta_fast != 0.0 ? r.beta_fast : 32.0;
  const double beta_slow = r.beta_slow != 0.0 ? r.beta_slow : 1.0;
  const double original_max = static_cast<double>(r.original_max_position_embeddings);
  auto correction_dim = [&](double rotations) {
    return (static_cast<double>(dim) * std::log(original_max / (rotations * 2 * kPi))) / (2 * std::log(base));
  };
  double low = correction_dim(beta_fast);
  double high = correction_dim(beta_slow);
  if (r.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(dim - 1));
  if (low == high) high += 0.001;  // HF: prevent a zero-width ramp

  auto pos_freqs = torch::pow(base, rope_exponents(dim));
  auto extrapolation = torch::reciprocal(pos_freqs);
  auto interpolation = torch::reciprocal(pos_freqs * factor);
  auto ramp = torch::clamp((torch::arange(dim / 2, torch::TensorOptions().dtype(torch::kFloat32)) - low) / (high - low),
                           c10::Scalar(0), c10::Scalar(1));
  auto extrapolation_factor = torch::rsub(ramp, 1);
  auto inv_freq = interpolation * torch::rsub(extrapolation_factor, 1) + extrapolation * extrapolation_factor;
  return {inv_freq, attention_factor};
}

// HF's _compute_dynamic_ntk_parameters as its dynamic update calls it: seq_len arrives as an int64 tensor, so
// the rescaled base is computed in fp32 tensor math.
torch::Tensor dynamic_inv_freq(const RopeConfig& r, int64_t dim, int64_t seq_len) {
  const double exponent = static_cast<double>(dim) / static_cast<double>(dim - 2);
  if (seq_len <= r.max_position_embeddings) {
    // At init HF uses max_position_embeddings as a Python int: the base stays a double.
    const double m = static_cast<double>(r.max_position_embeddings);
    const double base = r.theta * std::pow((r.factor * m / m) - (r.factor - 1), exponent);
    return default_inv_freq(base, dim);
  }
  auto s = torch::full({}, seq_len, torch::TensorOptions().dtype(torch::kInt64));
  auto base = ((s * r.factor / r.max_position_embeddings) - (r.factor - 1)).pow(exponent) * r.theta;
  return default_inv_freq(base, dim);
}

class Llama final : public Architecture {
 public:
  explicit Llama(LlamaConfig c) : c_(std::move(c)) {}

  std::string family() const override { return c_.family; }
  int num_blocks() const override { return static_cast<int>(c_.num_layers); }
  int64_t hidden_size() const override { return c_.hidden_size; }
  int64_t vocab_size() const override { return c_.vocab_size; }
  std::vector<std::string> phase_names() const override { return {"attn", "mlp"}; }

  std::vector<TensorRef> phase_tensors(int block, int phase) const override {
    check_block(block);
    const std::string layer = fmt::format("model.layers.{}.", block);
    const int64_t h = c_.hidden_size;
    const int64_t q_out = c_.num_heads * c_.head_dim;
    const int64_t kv_out = c_.num_kv_heads * c_.head_dim;
    const int64_t ffn = c_.intermediate_size;
    std::vector<TensorRef> t;
    auto add = [&](const std::string& local, const std::string& prefix, std::vector<int64_t> shape) {
      t.push_back(TensorRef{local, layer + prefix + local, std::move(shape)});
    };
    if (phase == 0) {
      add("input_layernorm.weight", "", {h});
      const std::pair<const char*, int64_t> qkv[] = {{"q_proj", q_out}, {"k_proj", kv_out}, {"v_proj", kv_out}};
      for (const auto& [name, out] : qkv) {
        add(std::string(name) + ".weight", "self_attn.", {out, h});
        if (c_.qkv_bias) add(std::string(name) + ".bias", "self_attn.", {out});
      }
      add("o_proj.weight", "self_attn.", {h, q_out});
      if (c_.o_bias) add("o_proj.bias", "self_attn.", {h});
    } else if (phase == 1) {
      add("post_attention_layernorm.weight", "", {h});
      add("gate_proj.weight", "mlp.", {ffn, h});
      if (c_.mlp_bias) add("gate_proj.bias", "mlp.", {ffn});
      add("up_proj.weight", "mlp.", {ffn, h});
      if (c_.mlp_bias) add("up_proj.bias", "mlp.", {ffn});
      add("down_proj.weight", "mlp.", {h, ffn});
      if (c_.mlp_bias) add("down_proj.bias", "mlp.", {h});
    } else {
      PS_THROW(Error, "{} blocks have phases 0 (attn) and 1 (mlp), not {}", c_.family, phase);
    }
    return t;
  }

  std::vector<PartSpec> prologue_parts() const override {
    // The token embedding is what block-swap users call the text embedding (offload_txt_emb).
    return {PartSpec{"embed_tokens",
                     {TensorRef{"embed_tokens.weight", "model.embed_tokens.weight", {c_.vocab_size, c_.hidden_size}}},
                     "txt_emb"}};
  }

  std::vector<PartSpec> epilogue_parts() const override {
    // Tied checkpoints usually store no lm_head.weight: HF reuses the embedding, and so do we.
    const std::string head = c_.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
    return {PartSpec{"norm", {TensorRef{"norm.weight", "model.norm.weight", {c_.hidden_size}}}},
            PartSpec{"lm_head", {TensorRef{"lm_head.weight", head, {c_.vocab_size, c_.hidden_size}}}}};
  }

  Activation prologue(const WeightView& w, const Activation& inputs,
                      const torch::TensorOptions& options) const override {
    PS_CHECK(!inputs.empty() && inputs[0].defined(), ConfigError,
             "{} needs token ids as input ([batch, tokens] int64), got none", c_.family);
    const torch::Tensor& ids = inputs[0];
    PS_CHECK(ids.dim() == 2 && ids.size(0) > 0 && ids.size(1) > 0, ConfigError,
             "token ids must be a non-empty [batch, tokens] tensor, got shape {}", shape_str(ids));
    PS_CHECK(ids.scalar_type() == torch::kInt64 || ids.scalar_type() == torch::kInt32, ConfigError,
             "token ids must be int64 or int32, got {}", c10::toString(ids.scalar_type()));
    auto bad = ids.lt(0).logical_or(ids.ge(c_.vocab_size));
    if (bad.any().item<bool>()) {
      auto at = bad.nonzero()[0].to(torch::kCPU);
      const int64_t seq = at[0].item<int64_t>();
      const int64_t pos = at[1].item<int64_t>();
      PS_THROW(ConfigError,
               "token id {} (sequence {}, position {}) is outside the vocabulary of {} tokens (valid ids 0..{}): the "
               "input was tokenized for another model",
               ids[seq][pos].item<int64_t>(), seq, pos, c_.vocab_size, c_.vocab_size - 1);
    }
    const torch::Tensor& table = w["embed_tokens.weight"];
    auto hidden = torch::embedding(table, ids.to(table.device(), torch::kInt64));
    if (inputs.size() > 1) return {hidden.to(options.device()), inputs[1]};  // generation: the cache rows
    return {hidden.to(options.device())};
  }

  void phase_forward(int block, int phase, const WeightView& w, Activation& act) const override {
    check_block(block);
    PS_CHECK(!act.empty() && act[0].defined() && act[0].dim() == 3 && act[0].size(2) == c_.hidden_size, Error,
             "{} block {} expects the hidden state [batch, tokens, {}], got {}", c_.family, block, c_.hidden_size,
             act.empty() || !act[0].defined() ? std::string("nothing") : shape_str(act[0]));
    if (phase == 0) {
      act[0] = act.size() > 1 ? attention_cached(block, w, act[0], act[1]) : attention(block, w, act[0]);
    } else if (phase == 1) {
      act[0] = mlp(w, act[0]);
    } else {
      PS_THROW(Error, "{} blocks have phases 0 (attn) and 1 (mlp), not {}", c_.family, phase);
    }
  }

  torch::Tensor epilogue(const WeightView& w, const Activation& act) const override {
    PS_CHECK(!act.empty() && act[0].defined() && act[0].dim() == 3, Error,
             "{} epilogue expects the hidden state [batch, tokens, {}]", c_.family, c_.hidden_size);
    // Generation needs each row's last token only.
    const torch::Tensor h = act.size() > 1 ? act[0].narrow(1, act[0].size(1) - 1, 1) : act[0];
    auto x = rms_norm(h, w["norm.weight"], c_.rms_norm_eps);
    return dense(x, w, "lm_head.weight");  // the compute dtype: the job makes float32 on the host
  }

  bool ignores_tensor(const std::string& name) const override {
    const std::string inv_freq = ".rotary_emb.inv_freq";  // a buffer older exports saved
    if (name.size() > inv_freq.size() && name.compare(name.size() - inv_freq.size(), inv_freq.size(), inv_freq) == 0)
      return true;
    return c_.tie_word_embeddings && name == "lm_head.weight";  // tied: HF ignores a stored copy, and so do we
  }

  int64_t activation_bytes(int64_t batch, int64_t seq, c10::ScalarType dtype) const override {
    return batch * seq * c_.hidden_size * static_cast<int64_t>(c10::elementSize(dtype));
  }

  // Projections, the MLP, and causal attention (half the products of full attention).
  double block_flops(int64_t batch, int64_t seq) const override {
    const double t = static_cast<double>(batch * seq), h = static_cast<double>(c_.hidden_size);
    const double q = static_cast<double>(c_.num_heads * c_.head_dim), kv = static_cast<double>(c_.num_kv_heads * c_.head_dim);
    return 2 * t * h * (2 * q + 2 * kv + 3 * static_cast<double>(c_.intermediate_size)) +
           2 * t * static_cast<double>(seq) * q;
  }

  // One new token per row: the projections and the MLP as block_flops, q.k and p.v over the cached tokens.
  double decode_block_flops(int64_t rows, int64_t context) const override {
    const double r = static_cast<double>(rows), h = static_cast<double>(c_.hidden_size);
    const double q = static_cast<double>(c_.num_heads * c_.head_dim), kv = static_cast<double>(c_.num_kv_heads * c_.head_dim);
    return 2 * r * h * (2 * q + 2 * kv + 3 * static_cast<double>(c_.intermediate_size)) +
           4 * r * static_cast<double>(context) * q;
  }

  double head_flops(int64_t rows) const override {
    return 2 * static_cast<double>(rows) * static_cast<double>(c_.hidden_size) * static_cast<double>(c_.vocab_size);
  }

  // Attention: the normalised input, q/k/v, roped q/k, GQA's expanded k/v, the output and its copy, the
  // projection; MLP: gate, silu(gate), up and their product alive at once, and the projection.
  int64_t block_workspace_bytes(int64_t batch, int64_t seq, c10::ScalarType dtype) const override {
    const int64_t el = static_cast<int64_t>(c10::elementSize(dtype));
    const int64_t tokens = batch * seq;
    const int64_t q = c_.num_heads * c_.head_dim, kv = c_.num_kv_heads * c_.head_dim;
    const int64_t attn = 2 * c_.hidden_size + 3 * q + 2 * kv + 2 * kv + (kv != q ? 2 * q : 0);
    const int64_t mlp = 3 * c_.intermediate_size + 2 * c_.hidden_size;
    return tokens * el * std::max(attn, mlp);
  }

  int64_t output_bytes(int64_t batch, int64_t seq, c10::ScalarType dtype) const override {
    return batch * seq * c_.vocab_size * static_cast<int64_t>(c10::elementSize(dtype));
  }

  // The logits in the compute dtype and their float32 copy for the output file.
  int64_t epilogue_workspace_bytes(int64_t batch, int64_t seq, c10::ScalarType dtype) const override {
    return batch * seq * c_.vocab_size * (static_cast<int64_t>(c10::elementSize(dtype)) + 4);
  }

  int64_t kv_cache_bytes(int64_t blocks, int64_t max_batch, int64_t max_seq, c10::ScalarType dtype) const override {
    return 2 * blocks * max_batch * c_.num_kv_heads * max_seq * c_.head_dim *
           static_cast<int64_t>(c10::elementSize(dtype));
  }

  void allocate_kv_cache(int first_block, int end_block, int64_t max_batch, int64_t max_seq,
                         const torch::TensorOptions& options) const override {
    std::lock_guard<std::mutex> lock(kv_mutex_);
    kv_.clear();
    kv_first_ = first_block;
    kv_seq_ = max_seq;
    for (int b = first_block; b < end_block; ++b) {
      kv_.push_back({torch::zeros({max_batch, c_.num_kv_heads, max_seq, c_.head_dim}, options),
                     torch::zeros({max_batch, c_.num_kv_heads, max_seq, c_.head_dim}, options)});
    }
  }

  void release_kv_cache() const override {
    std::lock_guard<std::mutex> lock(kv_mutex_);
    kv_.clear();
  }

 private:
  void check_block(int block) const {
    PS_CHECK(block >= 0 && block < c_.num_layers, Error, "{} has blocks 0..{}, not {}", c_.family, c_.num_layers - 1,
             block);
  }

  torch::Tensor attention(int block, const WeightView& w, const torch::Tensor& h) const {
    const int64_t b = h.size(0);
    const int64_t t = h.size(1);
    const int64_t heads = c_.num_heads;
    const int64_t kv_heads = c_.num_kv_heads;
    const int64_t d = c_.head_dim;
    auto bias = [&](const char* name) { return c_.qkv_bias ? w[name] : torch::Tensor(); };

    auto x = rms_norm(h, w["input_layernorm.weight"], c_.rms_norm_eps);
    // RoPE on the [B, T, heads, D] projections (one pass each on CUDA), then the [B, heads, T, D] views SDPA takes.
    const auto [cos_t, sin_t] = rope_tables(t, h.device(), h.scalar_type());
    auto q = fused::rope_half(dense(x, w, "q_proj.weight", bias("q_proj.bias")).view({b, t, heads, d}), cos_t, sin_t)
                 .transpose(1, 2);
    auto k = fused::rope_half(dense(x, w, "k_proj.weight", bias("k_proj.bias")).view({b, t, kv_heads, d}), cos_t,
                              sin_t)
                 .transpose(1, 2);
    auto v = dense(x, w, "v_proj.weight", bias("v_proj.bias")).view({b, t, kv_heads, d}).transpose(1, 2);
    if (kv_heads != heads) {
      // HF's repeat_kv: kv head j serves query heads j*n .. j*n+n-1.
      const int64_t n = heads / kv_heads;
      k = k.unsqueeze(2).expand({b, kv_heads, n, t, d}).reshape({b, heads, t, d});
      v = v.unsqueeze(2).expand({b, kv_heads, n, t, d}).reshape({b, heads, t, d});
    }

    // Mistral/Qwen2 sliding window: key j is visible from query i only when i - j < window (HF's mask); it
    // changes nothing until the sequence is longer than the window.
    torch::Tensor blocked;
    const int64_t window = c_.sliding_window[static_cast<size_t>(block)];
    if (window > 0 && t > window) {
      auto pos = torch::arange(t, torch::TensorOptions().dtype(torch::kInt64).device(h.device()));
      blocked = (pos.unsqueeze(1) - pos.unsqueeze(0)) >= window;
    }
    auto o = compat::attention(q, k, v, /*causal=*/true, std::pow(static_cast<double>(d), -0.5), blocked);
    o = o.transpose(1, 2).reshape({b, t, heads * d});
    return h + dense(o, w, "o_proj.weight", c_.o_bias ? w["o_proj.bias"] : torch::Tensor());
  }

  // Attention over the K/V cache: each row's t new tokens at positions [start, start + t) of its cache slot are
  // written there, then attend to the slot's positions [0, start + t) (causal, and the sliding window).
  torch::Tensor attention_cached(int block, const WeightView& w, const torch::Tensor& h,
                                 const torch::Tensor& rows) const {
    const int64_t b = h.size(0);
    const int64_t t = h.size(1);
    const int64_t heads = c_.num_heads;
    const int64_t kv_heads = c_.num_kv_heads;
    const int64_t d = c_.head_dim;
    PS_CHECK(rows.device().is_cpu() && rows.scalar_type() == torch::kInt64 && rows.dim() == 2 && rows.size(0) == b &&
                 rows.size(1) == 2,
             Error, "{} block {}: the cache rows must be int64 [{}, 2] on the CPU", c_.family, block, b);
    const int local = block - kv_first_;
    PS_CHECK(local >= 0 && local < static_cast<int>(kv_.size()), Error,
             "{} block {} has no K/V cache on this rank (allocate_kv_cache first)", c_.family, block);
    torch::Tensor kc = kv_[static_cast<size_t>(local)].first;  // handles: writes go to the cache
    torch::Tensor vc = kv_[static_cast<size_t>(local)].second;
    auto bias = [&](const char* name) { return c_.qkv_bias ? w[name] : torch::Tensor(); };

    auto x = rms_norm(h, w["input_layernorm.weight"], c_.rms_norm_eps);
    auto q = dense(x, w, "q_proj.weight", bias("q_proj.bias")).view({b, t, heads, d});
    auto k = dense(x, w, "k_proj.weight", bias("k_proj.bias")).view({b, t, kv_heads, d});
    auto v = dense(x, w, "v_proj.weight", bias("v_proj.bias")).view({b, t, kv_heads, d});
    auto acc = rows.accessor<int64_t, 2>();
    const int64_t window = c_.sliding_window[static_cast<size_t>(block)];
    const double scale = std::pow(static_cast<double>(d), -0.5);
    if (t == 1 && b > 1 && c_.rope.type != "dynamic") {
      // Decode: one token per row, the rows batched (one attention over the longest row's keys, the others' tail
      // masked), instead of one small attention per row.
      std::vector<int64_t> slot_v(static_cast<size_t>(b)), start_v(static_cast<size_t>(b));
      int64_t longest = 0;
      for (int64_t i = 0; i < b; ++i) {
        slot_v[static_cast<size_t>(i)] = acc[i][0];
        start_v[static_cast<size_t>(i)] = acc[i][1];
        PS_CHECK(acc[i][0] >= 0 && acc[i][0] < kc.size(0) && acc[i][1] >= 0 && acc[i][1] < kv_seq_, Error,
                 "{} block {}: cache row (slot {}, token {}) is outside the cache of {} slots x {} tokens", c_.family,
                 block, acc[i][0], acc[i][1], kc.size(0), kv_seq_);
        longest = std::max(longest, acc[i][1] + 1);
      }
      const auto lopts = torch::TensorOptions().dtype(torch::kInt64).device(h.device());
      const auto slots_t = torch::tensor(slot_v, torch::kInt64).to(h.device());
      const auto starts_t = torch::tensor(start_v, torch::kInt64).to(h.device());
      const auto [cos_all, sin_all] = rope_tables(rope_length(longest), h.device(), h.scalar_type());
      const auto cos_r = cos_all.index_select(0, starts_t);
      const auto sin_r = sin_all.index_select(0, starts_t);
      // The rows as the tokens of one sequence: each gets its own position's rotation.
      auto qr = fused::rope_half(q.view({1, b, heads, d}), cos_r, sin_r).view({b, 1, heads, d}).transpose(1, 2);
      auto kr = fused::rope_half(k.view({1, b, kv_heads, d}), cos_r, sin_r).view({b, kv_heads, d});
      auto vr = v.reshape({b, kv_heads, d});
      using torch::indexing::Slice;
      kc.index_put_({slots_t, Slice(), starts_t}, kr);
      vc.index_put_({slots_t, Slice(), starts_t}, vr);
      auto keys = kc.index_select(0, slots_t).narrow(2, 0, longest);
      auto values = vc.index_select(0, slots_t).narrow(2, 0, longest);
      if (kv_heads != heads) {
        const int64_t n = heads / kv_heads;
        keys = keys.unsqueeze(2).expand({b, kv_heads, n, longest, d}).reshape({b, heads, longest, d});
        values = values.unsqueeze(2).expand({b, kv_heads, n, longest, d}).reshape({b, heads, longest, d});
      }
      auto kpos = torch::arange(longest, lopts).unsqueeze(0);
      auto qpos = starts_t.unsqueeze(1);
      auto blocked = kpos > qpos;
      if (window > 0) blocked = blocked.logical_or((qpos - kpos) >= window);
      auto o = compat::attention(qr, keys, values, /*causal=*/false, scale, blocked.view({b, 1, 1, longest}));
      o = o.transpose(1, 2).reshape({b, 1, heads * d});
      return h + dense(o, w, "o_proj.weight", c_.o_bias ? w["o_proj.bias"] : torch::Tensor());
    }
    std::vector<torch::Tensor> outs;
    for (int64_t i = 0; i < b; ++i) {
      const int64_t slot = acc[i][0];
      const int64_t start = acc[i][1];
      const int64_t end = start + t;
      PS_CHECK(slot >= 0 && slot < kc.size(0) && start >= 0 && end <= kv_seq_, Error,
               "{} block {}: cache row (slot {}, tokens {}..{}) is outside the cache of {} slots x {} tokens",
               c_.family, block, slot, start, end - 1, kc.size(0), kv_seq_);
      const auto [cos_all, sin_all] = rope_tables(rope_length(end), h.device(), h.scalar_type());
      const auto cos_t = cos_all.narrow(0, start, t);
      const auto sin_t = sin_all.narrow(0, start, t);
      auto qi = fused::rope_half(q.narrow(0, i, 1), cos_t, sin_t).transpose(1, 2);  // [1, heads, t, d]
      auto ki = fused::rope_half(k.narrow(0, i, 1), cos_t, sin_t).transpose(1, 2);  // [1, kv_heads, t, d]
      auto vi = v.narrow(0, i, 1).transpose(1, 2);
      kc.select(0, slot).narrow(1, start, t).copy_(ki.select(0, 0));
      vc.select(0, slot).narrow(1, start, t).copy_(vi.select(0, 0));
      auto keys = kc.narrow(0, slot, 1).narrow(2, 0, end);
      auto values = vc.narrow(0, slot, 1).narrow(2, 0, end);
      if (kv_heads != heads) {
        const int64_t n = heads / kv_heads;
        keys = keys.unsqueeze(2).expand({1, kv_heads, n, end, d}).reshape({1, heads, end, d});
        values = values.unsqueeze(2).expand({1, kv_heads, n, end, d}).reshape({1, heads, end, d});
      }
      torch::Tensor blocked;
      if (window > 0 && end > window) {
        auto opts = torch::TensorOptions().dtype(torch::kInt64).device(h.device());
        auto qpos = torch::arange(start, end, opts);
        auto kpos = torch::arange(end, opts);
        blocked = (qpos.unsqueeze(1) - kpos.unsqueeze(0)) >= window;
      }
      outs.push_back(compat::attention(qi, keys, values, /*causal=*/true, scale, blocked));
    }
    auto o = (b == 1 ? outs[0] : torch::cat(outs, 0)).transpose(1, 2).reshape({b, t, heads * d});
    return h + dense(o, w, "o_proj.weight", c_.o_bias ? w["o_proj.bias"] : torch::Tensor());
  }

  // The length of the RoPE table that positions [0, end) are read from: the whole cache for the RoPE types whose
  // table does not depend on the length (its rows are the same whatever the length), `end` for dynamic NTK.
  int64_t rope_length(int64_t end) const { return c_.rope.type == "dynamic" ? end : std::max(end, kv_seq_); }

  torch::Tensor mlp(const WeightView& w, const torch::Tensor& h) const {
    auto bias = [&](const char* name) { return c_.mlp_bias ? w[name] : torch::Tensor(); };
    auto x = rms_norm(h, w["post_attention_layernorm.weight"], c_.rms_norm_eps);
    auto gate = torch::silu(dense(x, w, "gate_proj.weight", bias("gate_proj.bias")));
    auto up = dense(x, w, "up_proj.weight", bias("up_proj.bias"));
    return h + dense(gate * up, w, "down_proj.weight", bias("down_proj.bias"));
  }

  // cos/sin [T, head_dim] as HF's rotary embedding makes them: fp32 on the compute device, scaled by the
  // attention factor, then cast to the activation dtype. Cached per (T, device, dtype): every block of a
  // micro-batch asks for the same table.
  std::pair<torch::Tensor, torch::Tensor> rope_tables(int64_t t, torch::Device device, c10::ScalarType dtype) const {
    const auto key = std::make_tuple(t, static_cast<int>(device.type()), static_cast<int>(device.index()),
                                     static_cast<int>(dtype));
    std::lock_guard<std::mutex> lock(rope_mutex_);
    auto it = rope_cache_.find(key);
    if (it != rope_cache_.end()) return it->second;
    const auto [inv_freq_cpu, scaling] = rope_inv_freq(c_, t);
    auto inv_freq = inv_freq_cpu.to(device);
    auto positions = torch::arange(t, torch::TensorOptions().dtype(torch::kInt64).device(device)).to(torch::kFloat32);
    // HF's inv_freq @ positions contracts over a length-1 axis: the same single products as this outer product.
    auto freqs = positions.unsqueeze(1) * inv_freq.unsqueeze(0);
    auto emb = torch::cat({freqs, freqs}, -1);
    std::pair<torch::Tensor, torch::Tensor> tables{(emb.cos() * scaling).to(dtype), (emb.sin() * scaling).to(dtype)};
    // Sequence lengths vary little within a job; a bound keeps a long-lived process from hoarding tables.
    if (rope_cache_.size() >= 16) rope_cache_.clear();
    rope_cache_.emplace(key, tables);
    return tables;
  }

  LlamaConfig c_;
  mutable std::mutex rope_mutex_;
  mutable std::map<std::tuple<int64_t, int, int, int>, std::pair<torch::Tensor, torch::Tensor>> rope_cache_;
  // Generation: K/V [max_batch, kv_heads, max_seq, head_dim] of this rank's blocks from kv_first_ on.
  mutable std::mutex kv_mutex_;
  mutable std::vector<std::pair<torch::Tensor, torch::Tensor>> kv_;
  mutable int kv_first_ = 0;
  mutable int64_t kv_seq_ = 0;
};

}  // namespace

LlamaConfig parse_llama_config(const json& c) {
  PS_CHECK(c.is_object(), CheckpointError, "config.json must hold a JSON object, got {}", c.type_name());
  LlamaConfig m;
  PS_CHECK(has(c, "model_type") && c.at("model_type").is_string(), CheckpointError,
           "config.json: 'model_type' is missing or not a string");
  m.family = c.at("model_type").get<std::string>();
  PS_CHECK(m.family == "llama" || m.family == "qwen2" || m.family == "mistral", CheckpointError,
           "config.json: model_type '{}' is not a Llama-family model (llama, qwen2, mistral)", m.family);

  m.hidden_size = require_positive(c, "hidden_size", m.family);
  m.intermediate_size = require_positive(c, "intermediate_size", m.family);
  m.num_layers = require_positive(c, "num_hidden_layers", m.family);
  m.num_heads = require_positive(c, "num_attention_heads", m.family);
  m.vocab_size = require_positive(c, "vocab_size", m.family);
  PS_CHECK(m.num_layers <= (1 << 20), CheckpointError, "config.json: num_hidden_layers {} is not plausible",
           m.num_layers);
  m.num_kv_heads = optional_positive(c, "num_key_value_heads", m.num_heads);
  PS_CHECK(m.num_heads % m.num_kv_heads == 0, CheckpointError,
           "config.json: num_attention_heads ({}) must be a multiple of num_key_value_heads ({})", m.num_heads,
           m.num_kv_heads);
  // HF: `head_dim or hidden_size // num_attention_heads` (Mistral and Qwen3-style configs set it explicitly).
  const int64_t head_dim = has(c, "head_dim") ? as_int(c.at("head_dim"), "head_dim") : 0;
  PS_CHECK(head_dim >= 0, CheckpointError, "config.json: 'head_dim' must be positive, got {}", head_dim);
  if (head_dim > 0) {
    m.head_dim = head_dim;
  } else {
    PS_CHECK(m.hidden_size % m.num_heads == 0, CheckpointError,
             "config.json: hidden_size ({}) is not divisible by num_attention_heads ({}) and 'head_dim' is not set",
             m.hidden_size, m.num_heads);
    m.head_dim = m.hidden_size / m.num_heads;
  }
  PS_CHECK(m.head_dim % 2 == 0, CheckpointError,
           "config.json: head_dim {} is odd; rotary embeddings need an even head dimension", m.head_dim);

  m.rms_norm_eps = has(c, "rms_norm_eps") ? as_number(c.at("rms_norm_eps"), "rms_norm_eps") : 1e-6;
  PS_CHECK(m.rms_norm_eps >= 0, CheckpointError, "config.json: 'rms_norm_eps' must not be negative, got {}",
           m.rms_norm_eps);
  if (has(c, "hidden_act")) {
    PS_CHECK(c.at("hidden_act") == "silu", CheckpointError,
             "config.json: hidden_act {} is not supported for {} (only \"silu\")", c.at("hidden_act").dump(), m.family);
  }
  m.tie_word_embeddings = optional_bool(c, "tie_word_embeddings", false);
  if (m.family == "llama") {
    m.qkv_bias = m.o_bias = optional_bool(c, "attention_bias", false);
    m.mlp_bias = optional_bool(c, "mlp_bias", false);
  } else if (m.family == "qwen2") {
    m.qkv_bias = true;  // Qwen2 always has q/k/v biases and none on o_proj or the MLP
  }

  // HF's per-family defaults; the length matters only for dynamic and yarn RoPE.
  const int64_t default_max_pos = m.family == "qwen2" ? 32768 : m.family == "mistral" ? 4096 * 32 : 2048;
  m.rope = parse_rope(c, optional_positive(c, "max_position_embeddings", default_max_pos));
  m.sliding_window = parse_sliding_window(c, m.family, m.num_layers);
  return m;
}

std::pair<torch::Tensor, double> rope_inv_freq(const LlamaConfig& config, int64_t seq_len) {
  const RopeConfig& r = config.rope;
  const int64_t dim = config.head_dim;
  if (r.type == "linear") return {default_inv_freq(r.theta, dim) / r.factor, 1.0};
  if (r.type == "llama3") return {llama3_inv_freq(r, dim), 1.0};
  if (r.type == "dynamic") return {dynamic_inv_freq(r, dim, seq_len), 1.0};
  if (r.type == "yarn") return yarn_inv_freq(r, dim);
  return {default_inv_freq(r.theta, dim), 1.0};
}

std::unique_ptr<Architecture> make_llama(const nlohmann::json& config) {
  return std::make_unique<Llama>(parse_llama_config(config));
}

}  // namespace pipeswap::models
