#include "pipeswap/models/umt5.h"

#include <cmath>
#include <limits>
#include <utility>

#include "config_json.h"
#include "layers.h"
#include "pickles.h"
#include "pipeswap/core/dtype.h"
#include "pipeswap/core/error.h"
#include "pipeswap/core/log.h"

namespace pipeswap::models {
namespace {

using nlohmann::json;

// T5's LayerNorm: x / rms(x) with the statistics in fp32, rounded to the weight's dtype when that is a half
// type, then times the weight, as transformers' UMT5LayerNorm does.
torch::Tensor t5_layer_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  auto xf = x.to(torch::kFloat32);
  auto y = xf * torch::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
  if (weight.scalar_type() == torch::kBFloat16 || weight.scalar_type() == torch::kHalf) y = y.to(weight.scalar_type());
  return weight * y;
}

// transformers' "gelu_new" (the tanh approximation) written out as it is there, one rounding per operation
// in the input's dtype; at::gelu(x, "tanh") rounds once, which differs in bf16.
torch::Tensor gelu_new(const torch::Tensor& x) {
  const double k = std::sqrt(2.0 / M_PI);
  return 0.5 * x * (1.0 + torch::tanh(k * (x + 0.044715 * torch::pow(x, 3.0))));
}

// The lowest finite value of a floating dtype (torch.finfo(dtype).min).
double lowest(c10::ScalarType t) {
  switch (t) {
    case torch::kBFloat16:
      return static_cast<double>(std::numeric_limits<c10::BFloat16>::lowest());
    case torch::kHalf:
      return static_cast<double>(std::numeric_limits<c10::Half>::lowest());
    case torch::kFloat64:
      return std::numeric_limits<double>::lowest();
    default:
      return std::numeric_limits<float>::lowest();
  }
}

class UMT5 final : public Architecture {
 public:
  explicit UMT5(UMT5Config c) : c_(std::move(c)) {}

  std::string family() const override { return "umt5"; }
  std::string kind() const override { return "text_encoder"; }
  int num_blocks() const override { return static_cast<int>(c_.num_layers); }
  int64_t hidden_size() const override { return c_.d_model; }
  int64_t vocab_size() const override { return c_.vocab_size; }
  std::vector<std::string> phase_names() const override { return {"attn", "ffn"}; }

  std::vector<TensorRef> phase_tensors(int block, int phase) const override {
    check_block(block);
    const int64_t d = c_.d_model, inner = c_.inner_dim();
    std::vector<TensorRef> t;
    auto add = [&](const std::string& local, const std::string& checkpoint, std::vector<int64_t> shape) {
      t.push_back(TensorRef{local, fmt::format("encoder.block.{}.layer.{}", block, checkpoint), std::move(shape)});
    };
    if (phase == 0) {
      add("layer_norm.weight", "0.layer_norm.weight", {d});
      add("q.weight", "0.SelfAttention.q.weight", {inner, d});
      add("k.weight", "0.SelfAttention.k.weight", {inner, d});
      add("v.weight", "0.SelfAttention.v.weight", {inner, d});
      add("o.weight", "0.SelfAttention.o.weight", {d, inner});
      add("relative_attention_bias.weight", "0.SelfAttention.relative_attention_bias.weight",
          {c_.num_buckets, c_.num_heads});
    } else if (phase == 1) {
      add("layer_norm.weight", "1.layer_norm.weight", {d});
      add("wi_0.weight", "1.DenseReluDense.wi_0.weight", {c_.d_ff, d});
      add("wi_1.weight", "1.DenseReluDense.wi_1.weight", {c_.d_ff, d});
      add("wo.weight", "1.DenseReluDense.wo.weight", {d, c_.d_ff});
    } else {
      PS_THROW(Error, "umt5 blocks have phases 0 (attn) and 1 (ffn), not {}", phase);
    }
    return t;
  }

  std::vector<PartSpec> prologue_parts() const override {
    return {
        PartSpec{"embed_tokens", {TensorRef{"embed_tokens.weight", c_.embedding, {c_.vocab_size, c_.d_model}}}, ""}};
  }
  std::vector<PartSpec> epilogue_parts() const override {
    return {PartSpec{"final_layer_norm",
                     {TensorRef{"final_layer_norm.weight", "encoder.final_layer_norm.weight", {c_.d_model}}},
                     ""}};
  }
  // The embedding is saved under both tied names by some exporters: the one not declared is a copy.
  bool ignores_tensor(const std::string& name) const override {
    return name == "shared.weight" || name == "encoder.embed_tokens.weight";
  }

  // inputs {input_ids int64 [B, T], attention_mask [B, T] (optional)} ->
  // activation {x [B, T, d] compute dtype, padding bool [B, 1, 1, T]
  // (true: a key to mask) or undefined, buckets int64 [T, T]}.
  Activation prologue(const WeightView& w, const Activation& inputs,
                      const torch::TensorOptions& options) const override {
    check_inputs(inputs);
    const auto device = options.device();
    const torch::Tensor& table = w["embed_tokens.weight"];
    const auto ids = inputs[0].to(device, torch::kInt64);
    auto x = torch::embedding(table, ids);
    if (x.scalar_type() != options.dtype().toScalarType()) x = x.to(options.dtype().toScalarType());
    torch::Tensor padding;
    if (inputs.size() > 1 && inputs[1].defined())
      padding = inputs[1].to(device).eq(0).view({ids.size(0), 1, 1, ids.size(1)});
    const int64_t t = ids.size(1);
    auto buckets = relative_position_buckets(t, t, c_.num_buckets, c_.max_distance).to(device);
    return {x, padding, buckets};
  }

  void phase_forward(int block, int phase, const WeightView& w, Activation& act) const override {
    check_block(block);
    PS_CHECK(act.size() == 3 && act[0].defined() && act[2].defined(), Error,
             "umt5 block {}: the activation is not the prologue's {{x, padding, buckets}}", block);
    torch::Tensor& x = act[0];
    if (phase == 0) {
      x = x + self_attention(w, t5_layer_norm(x, w["layer_norm.weight"], c_.eps), act[1], act[2]);
    } else if (phase == 1) {
      auto n = t5_layer_norm(x, w["layer_norm.weight"], c_.eps);
      auto h = gelu_new(dense(n, w["wi_0.weight"])) * dense(n, w["wi_1.weight"]);
      const torch::Tensor& wo = w["wo.weight"];
      if (h.scalar_type() != wo.scalar_type()) h = h.to(wo.scalar_type());
      x = x + dense(h, wo);
    } else {
      PS_THROW(Error, "umt5 blocks have phases 0 (attn) and 1 (ffn), not {}", phase);
    }
  }

  torch::Tensor epilogue(const WeightView& w, const Activation& act) const override {
    return t5_layer_norm(act.at(0), w["final_layer_norm.weight"], c_.eps);
  }

  int64_t activation_bytes(int64_t batch, int64_t seq, c10::ScalarType dtype) const override {
    // The residual stream, the padding mask (bool) and the buckets (int64).
    return batch * seq * c_.d_model * static_cast<int64_t>(c10::elementSize(dtype)) + batch * seq + seq * seq * 8;
  }
  int64_t block_workspace_bytes(int64_t batch, int64_t seq, c10::ScalarType dtype) const override {
    const int64_t el = static_cast<int64_t>(c10::elementSize(dtype));
    // Attention: q, k, v, scores and probabilities with the bias; FFN: two [T, d_ff] products and their gate.
    const int64_t attn = batch * (4 * seq * c_.inner_dim() * el + 3 * c_.num_heads * seq * seq * el);
    const int64_t ffn = batch * seq * c_.d_ff * (3 * el + 4);
    return std::max(attn, ffn);
  }
  int64_t output_bytes(int64_t batch, int64_t seq, c10::ScalarType dtype) const override {
    return batch * seq * c_.d_model * static_cast<int64_t>(c10::elementSize(dtype));
  }

  void check_inputs(const Activation& in) const override {
    PS_CHECK(!in.empty() && in[0].defined() && in[0].dim() == 2 && in[0].size(0) > 0 && in[0].size(1) > 0, ConfigError,
             "umt5 takes token ids [batch, tokens], got {}",
             !in.empty() && in[0].defined() ? shape_str(in[0]) : std::string("none"));
    const auto& ids = in[0];
    PS_CHECK(!at::isFloatingType(ids.scalar_type()) && ids.scalar_type() != torch::kBool, ConfigError,
             "umt5 token ids must be integers, got {}", dtype_word(ids.scalar_type()));
    const int64_t lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
    PS_CHECK(lo >= 0 && hi < c_.vocab_size, ConfigError,
             "token id {} is outside umt5's vocabulary of {}: is the tokenizer from the same repo as the text "
             "encoder?",
             lo < 0 ? lo : hi, c_.vocab_size);
    if (in.size() > 1 && in[1].defined()) {
      PS_CHECK(in[1].sizes() == ids.sizes(), ConfigError, "the attention mask {} must have the ids' shape {}",
               shape_str(in[1]), shape_str(ids));
      // Every sample needs a key to attend to (the tokenizer always gives </s> one).
      PS_CHECK(in[1].ne(0).any(1).all().item<bool>(), ConfigError,
               "the attention mask has a sample with no token: every prompt has at least its </s>");
    }
  }

 private:
  void check_block(int block) const {
    PS_CHECK(block >= 0 && block < num_blocks(), Error, "block {} is out of range (the model has {} blocks)", block,
             num_blocks());
  }

  // softmax(q k^T + bias + mask) v, unscaled (T5 folds the scale into its initialisation), in the compute
  // dtype; softmax accumulates in fp32 and rounds to it, as torch's does for bf16.
  torch::Tensor self_attention(const WeightView& w, const torch::Tensor& n, const torch::Tensor& padding,
                               const torch::Tensor& buckets) const {
    const int64_t b = n.size(0), t = n.size(1), h = c_.num_heads, dk = c_.d_kv;
    auto heads = [&](const torch::Tensor& y) { return y.view({b, t, h, dk}).transpose(1, 2); };
    auto q = heads(dense(n, w["q.weight"]));
    auto k = heads(dense(n, w["k.weight"]));
    auto v = heads(dense(n, w["v.weight"]));
    auto scores = torch::matmul(q, k.transpose(-2, -1));
    // [T, T, H] -> [1, H, T, T]
    auto bias = torch::embedding(w["relative_attention_bias.weight"], buckets).permute({2, 0, 1}).unsqueeze(0);
    scores = scores + bias.to(scores.scalar_type());
    if (padding.defined()) {
      // transformers adds the dtype's lowest value: exp() of it is exactly 0 beside any real key.
      scores = scores.masked_fill(padding, lowest(scores.scalar_type()));
    }
    auto out = torch::matmul(torch::softmax(scores, -1), v);
    return dense(out.transpose(1, 2).reshape({b, t, h * dk}), w["o.weight"]);
  }

  UMT5Config c_;
};

}  // namespace

bool is_umt5_config(const json& config) {
  return config.is_object() && config.contains("model_type") && config["model_type"] == "umt5";
}

UMT5Config parse_umt5_config(const json& config) {
  PS_CHECK(config.is_object(), CheckpointError, "config.json must hold a JSON object, got {}", config.type_name());
  const std::string type =
      config.contains("model_type") && config["model_type"].is_string() ? config["model_type"].get<std::string>() : "";
  PS_CHECK(type == "umt5", CheckpointError,
           "config.json model_type '{}' is not umt5: the text encoder must be umT5 (UMT5EncoderModel) as a diffusers "
           "Wan repo's text_encoder/ folder has it (T5 and mT5 share a single relative position bias and are not "
           "supported)",
           type);
  // transformers' defaults where a key is absent.
  UMT5Config c;
  c.vocab_size = optional_positive(config, "vocab_size", 250112);
  c.d_model = optional_positive(config, "d_model", 512);
  c.d_kv = optional_positive(config, "d_kv", 64);
  c.d_ff = optional_positive(config, "d_ff", 1024);
  c.num_layers = optional_positive(config, "num_layers", 8);
  c.num_heads = optional_positive(config, "num_heads", 6);
  c.num_buckets = optional_positive(config, "relative_attention_num_buckets", 32);
  c.max_distance = optional_positive(config, "relative_attention_max_distance", 128);
  if (has(config, "layer_norm_epsilon")) c.eps = as_number(config["layer_norm_epsilon"], "layer_norm_epsilon");
  // Bidirectional buckets: half for each direction, half of those exact (at least one each).
  PS_CHECK(c.num_buckets >= 4, CheckpointError,
           "config.json: relative_attention_num_buckets must be at least 4 for a bidirectional encoder, got {}",
           c.num_buckets);
  PS_CHECK(c.max_distance > c.num_buckets / 4, CheckpointError,
           "config.json: relative_attention_max_distance ({}) must exceed the exact buckets ({})", c.max_distance,
           c.num_buckets / 4);
  const std::string ffn = config.contains("feed_forward_proj") && config["feed_forward_proj"].is_string()
                              ? config["feed_forward_proj"].get<std::string>()
                              : "gated-gelu";
  PS_CHECK(ffn == "gated-gelu", CheckpointError,
           "config.json: feed_forward_proj '{}' is not supported: umT5's encoder is \"gated-gelu\"", ffn);
  return c;
}

std::unique_ptr<Architecture> make_umt5_encoder(const UMT5Config& config) { return std::make_unique<UMT5>(config); }

torch::Tensor relative_position_buckets(int64_t query_length, int64_t key_length, int64_t num_buckets,
                                        int64_t max_distance) {
  const auto i64 = torch::TensorOptions().dtype(torch::kInt64);
  auto relative = torch::arange(key_length, i64).unsqueeze(0) - torch::arange(query_length, i64).unsqueeze(1);
  const int64_t half = num_buckets / 2;  // per direction
  auto buckets = relative.gt(0).to(torch::kInt64) * half;
  relative = relative.abs();
  const int64_t exact = half / 2;
  // log(r / exact) / log(max_distance / exact) * (half - exact), in float32 with the divisor a float32 too:
  // the operations (and roundings) of transformers' version.
  auto scaled = torch::log(relative.to(torch::kFloat32) / exact) /
                std::log(static_cast<double>(max_distance) / static_cast<double>(exact)) *
                static_cast<double>(half - exact);
  auto large = (exact + scaled.to(torch::kInt64)).clamp_max(half - 1);
  return buckets + torch::where(relative.lt(exact), relative, large);
}

torch::Tensor wan_prompt_embeds(const torch::Tensor& hidden, const torch::Tensor& attention_mask, int64_t max_length) {
  PS_CHECK(hidden.dim() == 3 && attention_mask.dim() == 2 && attention_mask.size(0) == hidden.size(0) &&
               attention_mask.size(1) == hidden.size(1),
           ConfigError, "wan_prompt_embeds takes hidden [B, T, d] and its mask [B, T], got {} and {}",
           shape_str(hidden), shape_str(attention_mask));
  const int64_t rows = max_length < 0 ? hidden.size(1) : max_length;
  PS_CHECK(rows >= hidden.size(1), ConfigError, "max_length {} is shorter than the {} tokens encoded", rows,
           hidden.size(1));
  auto out = torch::zeros({hidden.size(0), rows, hidden.size(2)}, hidden.options());
  const auto lengths = attention_mask.gt(0).sum(1).to(torch::kCPU, torch::kInt64);
  for (int64_t b = 0; b < hidden.size(0); ++b) {
    const int64_t n = lengths[b].item<int64_t>();
    out[b].narrow(0, 0, n).copy_(hidden[b].narrow(0, 0, n));
  }
  return out;
}

std::unique_ptr<UMT5Encoder> UMT5Encoder::load(const std::string& dir, torch::Device device, c10::ScalarType dtype) {
  PS_CHECK(dtype == torch::kFloat32 || dtype == torch::kBFloat16, ConfigError,
           "the umT5 text encoder runs in float32 or bfloat16, not {} (in float16 its activations overflow; "
           "transformers clamps them, pipeswap does not run it so)",
           dtype_word(dtype));
  refuse_pickles(dir, "text encoder", "the text_encoder/ folder of a diffusers Wan repo (config.json and model-*.safetensors)");
  auto ckpt = Checkpoint::open(dir);
  std::unique_ptr<UMT5Encoder> enc(new UMT5Encoder());
  enc->config_ = parse_umt5_config(ckpt->config());
  if (!ckpt->has("shared.weight") && ckpt->has("encoder.embed_tokens.weight"))
    enc->config_.embedding = "encoder.embed_tokens.weight";
  enc->arch_ = make_umt5_encoder(enc->config_);
  enc->device_ = device;
  enc->dtype_ = dtype;
  const Architecture& arch = *enc->arch_;
  check_checkpoint_tensors(arch, *ckpt);

  auto read = [&](const TensorRef& ref, WeightView& view) {
    torch::Tensor t = ckpt->locate(ref.checkpoint).file->read(ref.checkpoint);
    PS_CHECK(t.sizes().vec() == ref.shape, CheckpointError,
             "checkpoint {}: tensor '{}' is {}, but config.json implies {}: config.json and the weights disagree", dir,
             ref.checkpoint, shape_str(t),
             shape_str(torch::empty(ref.shape, torch::TensorOptions().device(torch::kMeta))));
    view.add(ref.local, t.to(device, dtype));
  };
  for (const auto& part : arch.prologue_parts())
    for (const auto& ref : part.tensors) read(ref, enc->prologue_);
  for (const auto& part : arch.epilogue_parts())
    for (const auto& ref : part.tensors) read(ref, enc->epilogue_);
  enc->blocks_.resize(arch.num_blocks());
  for (int b = 0; b < arch.num_blocks(); ++b) {
    for (int p = 0; p < static_cast<int>(arch.phase_names().size()); ++p) {
      enc->blocks_[b].emplace_back();
      for (const auto& ref : arch.phase_tensors(b, p)) read(ref, enc->blocks_[b].back());
    }
  }
  log().debug("umt5 text encoder '{}': {} layers, d_model {}, on {} in {}", dir, arch.num_blocks(),
              enc->config_.d_model, device.str(), dtype_word(dtype));
  return enc;
}

torch::Tensor UMT5Encoder::forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask) const {
  torch::NoGradGuard no_grad;
  const Activation inputs{input_ids.to(torch::kCPU),
                          attention_mask.defined() ? attention_mask.to(torch::kCPU) : torch::Tensor()};
  Activation act = arch_->prologue(prologue_, inputs, torch::TensorOptions().device(device_).dtype(dtype_));
  for (int b = 0; b < arch_->num_blocks(); ++b)
    for (size_t p = 0; p < blocks_[b].size(); ++p) arch_->phase_forward(b, static_cast<int>(p), blocks_[b][p], act);
  return arch_->epilogue(epilogue_, act);
}

torch::Tensor UMT5Encoder::encode(const PromptTokens& tokens) const {
  return wan_prompt_embeds(forward(tokens.input_ids, tokens.attention_mask), tokens.attention_mask);
}

}  // namespace pipeswap::models
