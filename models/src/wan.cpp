#include "wan.h"

#include <cmath>
#include <map>
#include <mutex>
#include <tuple>
#include <utility>

#include "config_json.h"
#include "fused.h"
#include "layers.h"
#include "pipeswap/core/error.h"
#include "pipeswap/core/torch_compat.h"

namespace pipeswap::models {
namespace {

using nlohmann::json;

// LayerNorm in fp32 (diffusers' FP32LayerNorm, Wan's WanLayerNorm): returns fp32.
torch::Tensor layer_norm32(const torch::Tensor& x, double eps, const torch::Tensor& weight = {},
                           const torch::Tensor& bias = {}) {
  return torch::layer_norm(x.to(torch::kFloat32), {x.size(-1)}, weight.defined() ? weight.to(torch::kFloat32) : weight,
                           bias.defined() ? bias.to(torch::kFloat32) : bias, eps);
}

torch::Tensor gelu_tanh(const torch::Tensor& x) { return torch::gelu(x, "tanh"); }

class Wan final : public Architecture {
 public:
  explicit Wan(WanConfig c) : c_(std::move(c)) {}

  std::string family() const override { return "wan"; }
  std::string kind() const override { return "dit"; }
  int num_blocks() const override { return static_cast<int>(c_.num_layers); }
  int64_t hidden_size() const override { return c_.dim; }
  int64_t vocab_size() const override { return 0; }
  std::vector<std::string> phase_names() const override { return {"self_attn", "cross_attn", "ffn"}; }

  std::vector<TensorRef> phase_tensors(int block, int phase) const override {
    check_block(block);
    const int64_t d = c_.dim;
    std::vector<TensorRef> t;
    auto add = [&](const std::string& local, std::vector<int64_t> shape) {
      t.push_back(TensorRef{local, fmt::format("blocks.{}.{}", block, checkpoint_name(local)), std::move(shape)});
    };
    auto linear = [&](const std::string& name, int64_t out, int64_t in) {
      add(name + ".weight", {out, in});
      add(name + ".bias", {out});
    };
    if (phase == 0) {
      add("modulation", {1, 6, d});
      for (const char* p : {"q", "k", "v", "o"}) linear(std::string("self_attn.") + p, d, d);
      if (c_.qk_norm) {
        add("self_attn.norm_q.weight", {d});
        add("self_attn.norm_k.weight", {d});
      }
    } else if (phase == 1) {
      if (c_.cross_attn_norm) {
        add("norm3.weight", {d});
        add("norm3.bias", {d});
      }
      for (const char* p : {"q", "k", "v", "o"}) linear(std::string("cross_attn.") + p, d, d);
      if (c_.qk_norm) {
        add("cross_attn.norm_q.weight", {d});
        add("cross_attn.norm_k.weight", {d});
      }
      if (c_.i2v()) {
        linear("cross_attn.k_img", d, d);
        linear("cross_attn.v_img", d, d);
        if (c_.qk_norm) add("cross_attn.norm_k_img.weight", {d});
      }
    } else if (phase == 2) {
      linear("ffn.0", c_.ffn_dim, d);
      linear("ffn.2", d, c_.ffn_dim);
    } else {
      PS_THROW(Error, "wan blocks have phases 0 (self_attn), 1 (cross_attn) and 2 (ffn), not {}", phase);
    }
    return t;
  }

  std::vector<PartSpec> prologue_parts() const override {
    const int64_t d = c_.dim;
    auto ref = [&](const std::string& local, std::vector<int64_t> shape) {
      return TensorRef{local, checkpoint_name(local), std::move(shape)};
    };
    std::vector<PartSpec> parts;
    parts.push_back(PartSpec{"patch_embedding",
                             {ref("patch_embedding.weight", {d, c_.in_dim, c_.patch[0], c_.patch[1], c_.patch[2]}),
                              ref("patch_embedding.bias", {d})},
                             ""});
    parts.push_back(PartSpec{"time_embedding",
                             {ref("time_embedding.0.weight", {d, c_.freq_dim}), ref("time_embedding.0.bias", {d}),
                              ref("time_embedding.2.weight", {d, d}), ref("time_embedding.2.bias", {d}),
                              ref("time_projection.1.weight", {6 * d, d}), ref("time_projection.1.bias", {6 * d})},
                             ""});
    parts.push_back(PartSpec{"text_embedding",
                             {ref("text_embedding.0.weight", {d, c_.text_dim}), ref("text_embedding.0.bias", {d}),
                              ref("text_embedding.2.weight", {d, d}), ref("text_embedding.2.bias", {d})},
                             "txt_emb"});
    if (c_.i2v()) {
      const int64_t i = c_.image_dim;
      parts.push_back(PartSpec{"img_emb",
                               {ref("img_emb.proj.0.weight", {i}), ref("img_emb.proj.0.bias", {i}),
                                ref("img_emb.proj.1.weight", {i, i}), ref("img_emb.proj.1.bias", {i}),
                                ref("img_emb.proj.3.weight", {d, i}), ref("img_emb.proj.3.bias", {d}),
                                ref("img_emb.proj.4.weight", {d}), ref("img_emb.proj.4.bias", {d})},
                               "img_emb"});
    }
    return parts;
  }

  std::vector<PartSpec> epilogue_parts() const override {
    const int64_t d = c_.dim;
    const int64_t out = c_.out_dim * c_.patch[0] * c_.patch[1] * c_.patch[2];
    return {PartSpec{"head",
                     {TensorRef{"head.head.weight", checkpoint_name("head.head.weight"), {out, d}},
                      TensorRef{"head.head.bias", checkpoint_name("head.head.bias"), {out}},
                      TensorRef{"head.modulation", checkpoint_name("head.modulation"), {1, 2, d}}},
                     ""}};
  }

  Activation prologue(const WeightView& w, const Activation& inputs,
                      const torch::TensorOptions& options) const override {
    check_inputs(inputs);
    const auto dtype = options.dtype().toScalarType();
    const auto device = options.device();
    const torch::Tensor latents = inputs[0].to(device, dtype);

    // Patch embedding: [B, C, F, H, W] -> [B, dim, f, h, w] -> [B, L, dim].
    auto x = torch::conv3d(latents, w["patch_embedding.weight"], w["patch_embedding.bias"],
                           {c_.patch[0], c_.patch[1], c_.patch[2]});
    const int64_t f = x.size(2), h = x.size(3), wd = x.size(4);
    x = x.flatten(2).transpose(1, 2).contiguous();

    // The time embedding in fp32 (Wan computes it under autocast(float32); diffusers keeps its time_embedder
    // in fp32). The projection to the six modulation vectors runs in the compute dtype, as diffusers' does
    // (its time_proj is not among the modules it keeps in fp32): upcasting its [6 dim, dim] weight each
    // step would cost 629 MB at Wan2.1-14B's width. In fp32 both are fp32, as before.
    auto f32 = [](const torch::Tensor& t) { return t.to(torch::kFloat32); };
    auto sinus = sinusoidal(inputs[1].to(torch::kFloat64)).to(device, torch::kFloat32);
    auto e = dense(torch::silu(dense(sinus, f32(w["time_embedding.0.weight"]), f32(w["time_embedding.0.bias"]))),
                   f32(w["time_embedding.2.weight"]), f32(w["time_embedding.2.bias"]));
    const auto& wp = w["time_projection.1.weight"];
    auto e0 = dense(torch::silu(e).to(wp.scalar_type()), wp, w["time_projection.1.bias"])
                  .to(torch::kFloat32)
                  .unflatten(1, {6, c_.dim});

    const int64_t key = inputs.size() > 4 && inputs[4].defined() ? inputs[4].item<int64_t>() + 1 : 0;
    const auto [ctx, img_len] = cached_context(w, inputs, options, key);
    // The grid travels as the shape of an empty tensor: reading it never waits for the device. Its last
    // entry is the context key + 1 (0: none), under which each block caches the cross-attention K/V.
    auto grid = torch::empty({0, f, h, wd, img_len, key}, torch::TensorOptions().dtype(torch::kInt64).device(device));
    return {x, e, e0, ctx, grid};
  }

  void phase_forward(int block, int phase, const WeightView& w, Activation& act) const override {
    check_block(block);
    check_activation(act, block);
    torch::Tensor& x = act[0];
    if (phase == 0) {
      // modulation + e0: (shift, scale, gate) for self-attention, then (shift, scale, gate) for the FFN.
      auto mod = w["modulation"].to(torch::kFloat32) + act[2];
      auto m = mod.chunk(6, 1);
      auto n = fused::modulated_layer_norm(x, c_.eps, m[0], m[1]);
      fused::gated_residual_(x, self_attention(w, n, grid_of(act)), m[2]);
      act.push_back(mod.narrow(1, 3, 3));  // the FFN phase's modulation, consumed by phase 2
    } else if (phase == 1) {
      auto n = c_.cross_attn_norm ? fused::modulated_layer_norm(x, c_.eps, {}, {}, w["norm3.weight"], w["norm3.bias"])
                                  : x;
      x = x + cross_attention(block, w, n, act[3], grid_of(act));
    } else if (phase == 2) {
      PS_CHECK(act.size() == 6, Error, "wan block {}: the ffn phase ran without its self_attn phase", block);
      auto m = act[5].chunk(3, 1);
      auto n = fused::modulated_layer_norm(x, c_.eps, m[0], m[1]);
      auto y = dense(dense_gelu_tanh(n, w, "ffn.0.weight", w["ffn.0.bias"]), w, "ffn.2.weight", w["ffn.2.bias"]);
      fused::gated_residual_(x, y, m[2]);
      act.pop_back();
    } else {
      PS_THROW(Error, "wan blocks have phases 0 (self_attn), 1 (cross_attn) and 2 (ffn), not {}", phase);
    }
  }

  torch::Tensor epilogue(const WeightView& w, const Activation& act) const override {
    check_activation(act, num_blocks());
    const torch::Tensor& x = act[0];
    auto m = (w["head.modulation"].to(torch::kFloat32) + act[1].unsqueeze(1)).chunk(2, 1);
    auto n = fused::modulated_layer_norm(x, c_.eps, m[0], m[1]);
    auto y = dense(n, w, "head.head.weight", w["head.head.bias"]);
    // Unpatchify: [B, f*h*w, pt*ph*pw*C] -> [B, C, f*pt, h*ph, w*pw].
    const auto g = grid_of(act);
    const int64_t b = y.size(0);
    y = y.reshape({b, g[0], g[1], g[2], c_.patch[0], c_.patch[1], c_.patch[2], c_.out_dim});
    y = y.permute({0, 7, 1, 4, 2, 5, 3, 6});
    return y.reshape({b, c_.out_dim, g[0] * c_.patch[0], g[1] * c_.patch[1], g[2] * c_.patch[2]})
        .to(torch::kFloat32);
  }

  int64_t activation_bytes(int64_t batch, int64_t seq, c10::ScalarType dtype) const override {
    const int64_t el = static_cast<int64_t>(c10::elementSize(dtype));
    const int64_t ctx = std::max<int64_t>(c_.text_len, 512) + (c_.i2v() ? 257 : 0);
    // x and the context in the compute dtype, e / e0 / the ffn modulation in fp32.
    return batch * (seq * c_.dim * el + ctx * c_.dim * el + (1 + 6 + 3) * c_.dim * 4);
  }

  // Measured on an H100 (docs/gpu-runs.md, 2026-12-07): a block's peak above its input is about 4 x [L, dim]
  // in self-attention (q/k/v and their roped copies, freed as they are replaced) and [L, ffn] + 2 x [L, dim]
  // in the FFN (the GELU is the GEMM's epilogue, so one [L, ffn] tensor lives).
  int64_t block_workspace_bytes(int64_t batch, int64_t seq, c10::ScalarType dtype) const override {
    const int64_t el = static_cast<int64_t>(c10::elementSize(dtype));
    return batch * seq * el * std::max<int64_t>(4 * c_.dim, c_.ffn_dim + 2 * c_.dim);
  }

  // The time embedding runs in float32 (as Wan2.1 does): its two weights are upcast for it when the
  // compute dtype is narrower.
  int64_t prologue_workspace_bytes(int64_t batch, int64_t seq, c10::ScalarType dtype) const override {
    return dtype == c10::ScalarType::Float ? 0 : 4 * (c_.freq_dim * c_.dim + c_.dim * c_.dim);
  }

  // Self-attention (q, k, v, o and the two attention products), cross-attention (q, o and its attention;
  // the context's K/V are made once per job), the FFN.
  double block_flops(int64_t batch, int64_t seq) const override {
    const double l = static_cast<double>(batch * seq), d = static_cast<double>(c_.dim);
    const double ctx = static_cast<double>(std::max<int64_t>(c_.text_len, 512));
    return 2 * l * (4 * d * d + 2 * d * d + 2 * d * static_cast<double>(c_.ffn_dim)) + 4 * l * l * d / batch +
           4 * l * ctx * d;
  }

  int64_t cache_bytes(int64_t blocks, int64_t micro_batches, int64_t batch, c10::ScalarType dtype) const override {
    const int64_t ctx = std::max<int64_t>(c_.text_len, 512) + (c_.i2v() ? 257 : 0);
    // K and V per block and micro-batch, and the embedded context per micro-batch (first stage).
    return (2 * blocks + 1) * micro_batches * batch * ctx * c_.dim * static_cast<int64_t>(c10::elementSize(dtype));
  }

  int64_t sequence_length(const Activation& in) const override {
    check_inputs(in);
    return in[0].size(2) / c_.patch[0] * (in[0].size(3) / c_.patch[1]) * (in[0].size(4) / c_.patch[2]);
  }

  void check_inputs(const Activation& in) const override { check_inputs_impl(in); }

 private:
  void check_block(int block) const {
    PS_CHECK(block >= 0 && block < num_blocks(), Error, "block {} is out of range (the model has {} blocks)", block,
             num_blocks());
  }

  void check_inputs_impl(const Activation& in) const {
    PS_CHECK(in.size() >= 3 && in[0].defined() && in[1].defined() && in[2].defined(), ConfigError,
             "a wan forward pass needs latents, timesteps and a text context");
    const auto& lat = in[0];
    PS_CHECK(lat.dim() == 5 && lat.size(1) == c_.in_dim, ConfigError,
             "latents must be [batch, {}, frames, height, width]{}, got {}", c_.in_dim,
             c_.i2v() ? " (the noise latents and the image condition concatenated on channels)" : "",
             shape_str(lat));
    for (int i = 0; i < 3; ++i) {
      PS_CHECK(lat.size(2 + i) % c_.patch[i] == 0 && lat.size(2 + i) >= c_.patch[i], ConfigError,
               "latent {} {} is not a positive multiple of the patch size {}", i == 0 ? "frames" : i == 1 ? "height" : "width",
               lat.size(2 + i), c_.patch[i]);
      PS_CHECK(lat.size(2 + i) / c_.patch[i] <= c_.rope_max_seq_len, ConfigError,
               "latent {} {} exceeds the model's RoPE table of {} positions", i == 0 ? "frames" : i == 1 ? "height" : "width",
               lat.size(2 + i), c_.rope_max_seq_len);
    }
    PS_CHECK(in[1].dim() == 1 && in[1].size(0) == lat.size(0), ConfigError,
             "timesteps must be one per sample ([{}]), got {}", lat.size(0), shape_str(in[1]));
    const auto& ctx = in[2];
    PS_CHECK(ctx.dim() == 3 && ctx.size(0) == lat.size(0) && ctx.size(2) == c_.text_dim && ctx.size(1) > 0, ConfigError,
             "the text context must be [batch {}, tokens, {}] (the text encoder's output), got {}", lat.size(0),
             c_.text_dim, shape_str(ctx));
    PS_CHECK(c_.text_len == 0 || ctx.size(1) <= c_.text_len, ConfigError,
             "the text context has {} tokens, more than the model's text_len {}", ctx.size(1), c_.text_len);
    if (c_.i2v()) {
      PS_CHECK(in.size() >= 4 && in[3].defined(), ConfigError,
               "this is an image-to-video model: give the CLIP image features (--clip-fea, [257, {}])", c_.image_dim);
      PS_CHECK(in[3].dim() == 3 && in[3].size(0) == lat.size(0) && in[3].size(2) == c_.image_dim, ConfigError,
               "the CLIP image features must be [batch {}, tokens, {}], got {}", lat.size(0), c_.image_dim,
               shape_str(in[3]));
    } else {
      PS_CHECK(in.size() < 4 || !in[3].defined(), ConfigError,
               "CLIP image features were given but this is a text-to-video model (no img_emb)");
    }
  }

  void check_activation(const Activation& act, int block) const {
    PS_CHECK(act.size() >= 5 && act[0].defined() && act[0].dim() == 3 && act[0].size(2) == c_.dim, Error,
             "wan block {} expects the activation {{x [batch, tokens, {}], e, e0, context, grid}}, got {} tensors",
             block, c_.dim, act.size());
  }

  std::vector<int64_t> grid_of(const Activation& act) const {
    PS_CHECK(act[4].dim() == 6 && act[4].size(0) == 0, Error, "wan: the activation's grid entry is malformed");
    return {act[4].size(1), act[4].size(2), act[4].size(3), act[4].size(4), act[4].size(5)};
  }

  // [cos, sin] of t * 10000^(-i/half), i < half, computed in fp64 (Wan's sinusoidal_embedding_1d).
  torch::Tensor sinusoidal(const torch::Tensor& t) const {
    const int64_t half = c_.freq_dim / 2;
    // On t's device: a step's timestep made on the GPU never comes to the host (no sync).
    const auto f64 = torch::TensorOptions(torch::kFloat64).device(t.device());
    auto freqs = torch::pow(10000.0, -torch::arange(half, f64) / static_cast<double>(half));
    auto s = torch::outer(t.to(torch::kFloat64), freqs);
    return torch::cat({torch::cos(s), torch::sin(s)}, 1);
  }

  // The embedded context (text, after the image's for I2V) and the image tokens' count.
  std::pair<torch::Tensor, int64_t> embedded_context(const WeightView& w, const Activation& inputs,
                                                     const torch::TensorOptions& options) const {
    const auto dtype = options.dtype().toScalarType();
    const auto device = options.device();
    // Text context, padded with zeros to text_len as Wan2.1 does (diffusers' pipeline pads before the model).
    auto ctx = inputs[2].to(device, dtype);
    const int64_t b = ctx.size(0);
    if (c_.text_len > 0 && ctx.size(1) < c_.text_len) {
      ctx = torch::cat({ctx, torch::zeros({b, c_.text_len - ctx.size(1), ctx.size(2)}, ctx.options())}, 1);
    }
    ctx = dense(gelu_tanh(dense(ctx, w, "text_embedding.0.weight", w["text_embedding.0.bias"])),
                w["text_embedding.2.weight"], w["text_embedding.2.bias"]);
    int64_t img_len = 0;
    if (c_.i2v()) {
      auto img = inputs[3].to(device, dtype);
      img = layer_norm32(img, 1e-5, w["img_emb.proj.0.weight"], w["img_emb.proj.0.bias"]).to(dtype);
      img = dense(torch::gelu(dense(img, w, "img_emb.proj.1.weight", w["img_emb.proj.1.bias"])),
                  w["img_emb.proj.3.weight"], w["img_emb.proj.3.bias"]);
      img = layer_norm32(img, 1e-5, w["img_emb.proj.4.weight"], w["img_emb.proj.4.bias"]).to(dtype);
      img_len = img.size(1);
      ctx = torch::cat({img, ctx}, 1);
    }
    return {ctx, img_len};
  }

  // With a context key the embedded context is made once per branch and kept for the job's later steps
  // (no host-to-device copy of the encoder output per step either).
  std::pair<torch::Tensor, int64_t> cached_context(const WeightView& w, const Activation& inputs,
                                                   const torch::TensorOptions& options, int64_t key) const {
    if (key <= 0) return embedded_context(w, inputs, options);
    std::lock_guard<std::mutex> lock(kv_mutex_);
    start_job_locked(key);
    auto it = ctx_cache_.find(key);
    if (it != ctx_cache_.end()) return it->second;
    return ctx_cache_.emplace(key, embedded_context(w, inputs, options)).first->second;
  }

  // Keys carry their job's serial in the bits above 20 (pipeline/src/denoise_job.cpp): a key of another
  // job drops what the previous one kept.
  void start_job_locked(int64_t key) const {
    if ((key >> 20) == kv_job_) return;
    kv_cache_.clear();
    ctx_cache_.clear();
    kv_job_ = key >> 20;
  }

  torch::Tensor self_attention(const WeightView& w, const torch::Tensor& n, const std::vector<int64_t>& g) const {
    const int64_t b = n.size(0), l = n.size(1), heads = c_.num_heads, hd = c_.head_dim();
    auto q = dense(n, w, "self_attn.q.weight", w["self_attn.q.bias"]);
    auto k = dense(n, w, "self_attn.k.weight", w["self_attn.k.bias"]);
    auto v = dense(n, w, "self_attn.v.weight", w["self_attn.v.bias"]);
    const auto [cos, sin] = rope_tables(g[0], g[1], g[2], n.device());
    PS_CHECK(cos.size(0) == l, Error, "wan: the grid {}x{}x{} does not match {} tokens", g[0], g[1], g[2], l);
    const torch::Tensor none;
    q = fused::rms_norm_rope(q, c_.qk_norm ? w["self_attn.norm_q.weight"] : none, c_.eps, cos, sin, heads);
    k = fused::rms_norm_rope(k, c_.qk_norm ? w["self_attn.norm_k.weight"] : none, c_.eps, cos, sin, heads);
    v = v.view({b, l, heads, hd});
    auto o = compat::attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), /*causal=*/false,
                               1.0 / std::sqrt(static_cast<double>(hd)));
    o = o.transpose(1, 2).reshape({b, l, c_.dim});
    return dense(o, w, "self_attn.o.weight", w["self_attn.o.bias"]);
  }

  // K and V of the context for one block, [B, heads, tokens, head_dim] each: text, then the image's (I2V).
  struct ContextKV {
    torch::Tensor k, v, k_img, v_img;
  };
  ContextKV context_kv(const WeightView& w, const torch::Tensor& context, int64_t img_len) const {
    const int64_t b = context.size(0), heads = c_.num_heads, hd = c_.head_dim();
    auto split = [&](const torch::Tensor& t) { return t.view({b, t.size(1), heads, hd}).transpose(1, 2); };
    ContextKV kv;
    auto text = context.narrow(1, img_len, context.size(1) - img_len);
    auto k = dense(text, w, "cross_attn.k.weight", w["cross_attn.k.bias"]);
    if (c_.qk_norm) k = rms_norm(k, w["cross_attn.norm_k.weight"], c_.eps);
    kv.k = split(k);
    kv.v = split(dense(text, w, "cross_attn.v.weight", w["cross_attn.v.bias"]));
    if (c_.i2v() && img_len > 0) {
      auto img = context.narrow(1, 0, img_len);
      auto ki = dense(img, w, "cross_attn.k_img.weight", w["cross_attn.k_img.bias"]);
      if (c_.qk_norm) ki = rms_norm(ki, w["cross_attn.norm_k_img.weight"], c_.eps);
      kv.k_img = split(ki);
      kv.v_img = split(dense(img, w, "cross_attn.v_img.weight", w["cross_attn.v_img.bias"]));
    }
    return kv;
  }

  // The context is the same at every denoising step of a branch, so with a context key (g[4] > 0) its K/V
  // are computed at the first step and kept: one cache entry per block and key.
  ContextKV cached_context_kv(int block, const WeightView& w, const torch::Tensor& context, int64_t img_len,
                              int64_t key) const {
    if (key <= 0) return context_kv(w, context, img_len);
    std::lock_guard<std::mutex> lock(kv_mutex_);
    start_job_locked(key);
    auto it = kv_cache_.find({block, key});
    if (it != kv_cache_.end()) return it->second;
    return kv_cache_.emplace(std::make_pair(block, key), context_kv(w, context, img_len)).first->second;
  }

  torch::Tensor cross_attention(int block, const WeightView& w, const torch::Tensor& n, const torch::Tensor& context,
                                const std::vector<int64_t>& g) const {
    const int64_t b = n.size(0), l = n.size(1), heads = c_.num_heads, hd = c_.head_dim();
    const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
    const int64_t img_len = g[3];
    auto q = dense(n, w, "cross_attn.q.weight", w["cross_attn.q.bias"]);
    if (c_.qk_norm) q = rms_norm(q, w["cross_attn.norm_q.weight"], c_.eps);
    q = q.view({b, l, heads, hd}).transpose(1, 2);
    const ContextKV kv = cached_context_kv(block, w, context, img_len, g[4]);
    auto o = compat::attention(q, kv.k, kv.v, false, scale);
    if (kv.k_img.defined()) o = o + compat::attention(q, kv.k_img, kv.v_img, false, scale);
    o = o.transpose(1, 2).reshape({b, l, c_.dim});
    return dense(o, w, "cross_attn.o.weight", w["cross_attn.o.bias"]);
  }

  // 3D RoPE tables for an f x h x w grid: [L, head_dim/2] cos and sin in fp32. The head dimension's
  // rotation pairs split into frames / height / width as Wan2.1 does (c - 2(c/3), c/3, c/3 pairs).
  std::pair<torch::Tensor, torch::Tensor> rope_tables(int64_t f, int64_t h, int64_t w, torch::Device device) const {
    std::lock_guard<std::mutex> lock(rope_mutex_);
    const auto key = std::make_tuple(f, h, w, static_cast<int>(device.type()), static_cast<int>(device.index()));
    auto it = rope_cache_.find(key);
    if (it != rope_cache_.end()) return it->second;
    const int64_t hd = c_.head_dim();
    const int64_t hw_dim = 2 * (hd / 6);
    const int64_t t_dim = hd - 2 * hw_dim;
    auto axis = [](int64_t n, int64_t dim) {
      // angle[p, i] = p * 10000^(-2i/dim), in fp64 (rope_params / get_1d_rotary_pos_embed).
      auto inv = 1.0 / torch::pow(10000.0, torch::arange(0, dim, 2, torch::kFloat64) / static_cast<double>(dim));
      return torch::outer(torch::arange(n, torch::kFloat64), inv);
    };
    auto af = axis(f, t_dim).view({f, 1, 1, -1}).expand({f, h, w, -1});
    auto ah = axis(h, hw_dim).view({1, h, 1, -1}).expand({f, h, w, -1});
    auto aw = axis(w, hw_dim).view({1, 1, w, -1}).expand({f, h, w, -1});
    auto angles = torch::cat({af, ah, aw}, -1).reshape({f * h * w, hd / 2});
    std::pair<torch::Tensor, torch::Tensor> tables{angles.cos().to(torch::kFloat32).to(device),
                                                   angles.sin().to(torch::kFloat32).to(device)};
    if (rope_cache_.size() >= 8) rope_cache_.clear();
    rope_cache_.emplace(key, tables);
    return tables;
  }

  // The checkpoint's name for a Wan2.1-named tensor.
  std::string checkpoint_name(const std::string& local) const {
    if (!c_.diffusers_names) return local;
    static const std::pair<const char*, const char*> kMap[] = {
        // blocks (prefix "blocks.N." stays)
        {"modulation", "scale_shift_table"},
        {"self_attn.q.", "attn1.to_q."},
        {"self_attn.k.", "attn1.to_k."},
        {"self_attn.v.", "attn1.to_v."},
        {"self_attn.o.", "attn1.to_out.0."},
        {"self_attn.norm_q.", "attn1.norm_q."},
        {"self_attn.norm_k.", "attn1.norm_k."},
        {"norm3.", "norm2."},
        {"cross_attn.q.", "attn2.to_q."},
        {"cross_attn.k.", "attn2.to_k."},
        {"cross_attn.v.", "attn2.to_v."},
        {"cross_attn.o.", "attn2.to_out.0."},
        {"cross_attn.norm_q.", "attn2.norm_q."},
        {"cross_attn.norm_k.", "attn2.norm_k."},
        {"cross_attn.k_img.", "attn2.add_k_proj."},
        {"cross_attn.v_img.", "attn2.add_v_proj."},
        {"cross_attn.norm_k_img.", "attn2.norm_added_k."},
        {"ffn.0.", "ffn.net.0.proj."},
        {"ffn.2.", "ffn.net.2."},
        // non-block components
        {"patch_embedding.", "patch_embedding."},
        {"time_embedding.0.", "condition_embedder.time_embedder.linear_1."},
        {"time_embedding.2.", "condition_embedder.time_embedder.linear_2."},
        {"time_projection.1.", "condition_embedder.time_proj."},
        {"text_embedding.0.", "condition_embedder.text_embedder.linear_1."},
        {"text_embedding.2.", "condition_embedder.text_embedder.linear_2."},
        {"img_emb.proj.0.", "condition_embedder.image_embedder.norm1."},
        {"img_emb.proj.1.", "condition_embedder.image_embedder.ff.net.0.proj."},
        {"img_emb.proj.3.", "condition_embedder.image_embedder.ff.net.2."},
        {"img_emb.proj.4.", "condition_embedder.image_embedder.norm2."},
        {"head.head.", "proj_out."},
        {"head.modulation", "scale_shift_table"},
    };
    for (const auto& [from, to] : kMap) {
      const std::string f(from);
      if (local.compare(0, f.size(), f) == 0) return std::string(to) + local.substr(f.size());
    }
    PS_THROW(Error, "wan: no diffusers name for '{}' (architecture declaration bug)", local);
  }

  WanConfig c_;
  mutable std::mutex rope_mutex_;
  mutable std::mutex kv_mutex_;
  mutable int64_t kv_job_ = -1;
  mutable std::map<std::pair<int, int64_t>, ContextKV> kv_cache_;
  mutable std::map<int64_t, std::pair<torch::Tensor, int64_t>> ctx_cache_;
  mutable std::map<std::tuple<int64_t, int64_t, int64_t, int, int>, std::pair<torch::Tensor, torch::Tensor>>
      rope_cache_;
};

int64_t int_or(const json& c, const std::string& key, int64_t fallback) {
  return has(c, key) ? as_int(c.at(key), key) : fallback;
}

}  // namespace

bool is_wan_config(const json& c) {
  if (!c.is_object()) return false;
  const std::string cls = c.contains("_class_name") && c["_class_name"].is_string() ? c["_class_name"].get<std::string>() : "";
  if (cls == "WanModel" || cls == "WanTransformer3DModel") return true;
  const std::string type = c.contains("model_type") && c["model_type"].is_string() ? c["model_type"].get<std::string>() : "";
  return (type == "t2v" || type == "i2v") && c.contains("dim") && c.contains("num_heads");
}

WanConfig parse_wan_config(const json& c) {
  WanConfig m;
  const std::string cls = c.value("_class_name", std::string());
  m.diffusers_names = cls == "WanTransformer3DModel";
  const std::string family = "wan";
  if (m.diffusers_names) {
    m.num_heads = int_or(c, "num_attention_heads", 40);
    const int64_t head_dim = int_or(c, "attention_head_dim", 128);
    PS_CHECK(m.num_heads > 0 && head_dim > 0, CheckpointError,
             "config.json: num_attention_heads and attention_head_dim must be positive");
    m.dim = m.num_heads * head_dim;
    m.ffn_dim = int_or(c, "ffn_dim", 13824);
    m.num_layers = int_or(c, "num_layers", 40);
    m.in_dim = int_or(c, "in_channels", 16);
    m.out_dim = has(c, "out_channels") ? as_int(c.at("out_channels"), "out_channels") : m.in_dim;
    m.text_dim = int_or(c, "text_dim", 4096);
    m.freq_dim = int_or(c, "freq_dim", 256);
    m.image_dim = int_or(c, "image_dim", 0);
    m.rope_max_seq_len = int_or(c, "rope_max_seq_len", 1024);
    m.cross_attn_norm = optional_bool(c, "cross_attn_norm", true);
    if (has(c, "qk_norm")) {
      PS_CHECK(c.at("qk_norm").is_string() && c.at("qk_norm") == "rms_norm_across_heads", CheckpointError,
               "config.json: qk_norm {} is not supported (only \"rms_norm_across_heads\" or null)",
               c.at("qk_norm").dump());
      m.qk_norm = true;
    } else {
      m.qk_norm = false;
    }
    if (m.image_dim > 0) {
      const int64_t added = int_or(c, "added_kv_proj_dim", 0);
      PS_CHECK(added == m.dim, CheckpointError,
               "config.json: image_dim is set but added_kv_proj_dim is {} (pipeswap supports I2V with "
               "added_kv_proj_dim == dim {})",
               added, m.dim);
    }
    PS_CHECK(!has(c, "pos_embed_seq_len"), CheckpointError,
             "config.json: pos_embed_seq_len (Wan FLF2V) is not supported yet");
    m.model_type = m.image_dim > 0 ? "i2v" : "t2v";
  } else {
    m.model_type = c.value("model_type", std::string("t2v"));
    PS_CHECK(m.model_type == "t2v" || m.model_type == "i2v", CheckpointError,
             "config.json: Wan model_type '{}' is not supported (t2v, i2v)", m.model_type);
    m.dim = require_positive(c, "dim", family);
    m.ffn_dim = require_positive(c, "ffn_dim", family);
    m.num_heads = require_positive(c, "num_heads", family);
    m.num_layers = require_positive(c, "num_layers", family);
    m.in_dim = int_or(c, "in_dim", m.model_type == "i2v" ? 36 : 16);
    m.out_dim = int_or(c, "out_dim", 16);
    m.text_dim = int_or(c, "text_dim", 4096);
    m.freq_dim = int_or(c, "freq_dim", 256);
    m.text_len = int_or(c, "text_len", 512);
    m.image_dim = m.model_type == "i2v" ? 1280 : 0;
    m.cross_attn_norm = optional_bool(c, "cross_attn_norm", true);
    m.qk_norm = optional_bool(c, "qk_norm", true);
    if (has(c, "window_size")) {
      const auto& ws = c.at("window_size");
      PS_CHECK(ws.is_array() && ws.size() == 2 && ws[0] == -1 && ws[1] == -1, CheckpointError,
               "config.json: window_size {} is not supported (only [-1, -1], global attention)", ws.dump());
    }
  }
  if (has(c, "eps")) m.eps = as_number(c.at("eps"), "eps");
  if (has(c, "patch_size")) {
    const auto& p = c.at("patch_size");
    PS_CHECK(p.is_array() && p.size() == 3, CheckpointError, "config.json: patch_size must be [t, h, w], got {}",
             p.dump());
    for (int i = 0; i < 3; ++i) {
      m.patch[i] = as_int(p[i], "patch_size");
      PS_CHECK(m.patch[i] > 0, CheckpointError, "config.json: patch_size entries must be positive, got {}", p.dump());
    }
  }
  const std::pair<const char*, int64_t> positive[] = {{"dim", m.dim},           {"ffn_dim", m.ffn_dim},
                                                      {"num_layers", m.num_layers}, {"in_dim", m.in_dim},
                                                      {"out_dim", m.out_dim},   {"text_dim", m.text_dim},
                                                      {"freq_dim", m.freq_dim}};
  for (const auto& [key, v] : positive)
    PS_CHECK(v > 0, CheckpointError, "config.json: wan '{}' must be a positive integer, got {}", key, v);
  PS_CHECK(m.num_layers <= (1 << 20), CheckpointError, "config.json: num_layers {} is not plausible", m.num_layers);
  PS_CHECK(m.dim % m.num_heads == 0, CheckpointError, "config.json: dim {} is not divisible by num_heads {}", m.dim,
           m.num_heads);
  PS_CHECK(m.head_dim() % 2 == 0 && m.head_dim() >= 6, CheckpointError,
           "config.json: head dimension {} must be even and at least 6 for 3D RoPE", m.head_dim());
  PS_CHECK(m.freq_dim % 2 == 0, CheckpointError, "config.json: freq_dim {} must be even", m.freq_dim);
  return m;
}

std::unique_ptr<Architecture> make_wan(const json& config) { return std::make_unique<Wan>(parse_wan_config(config)); }

}  // namespace pipeswap::models
