// Wan2.1-architecture video DiT (text-to-video and image-to-video), in the original Wan2.1 naming
// (`blocks.N.self_attn.q.weight`, config.json with "dim", "num_heads", ...) or diffusers'
// WanTransformer3DModel naming (`blocks.N.attn1.to_q.weight`, config.json with "_class_name":
// "WanTransformer3DModel"). Model code uses Wan2.1's names; the checkpoint names are mapped.
//
// Numerics follow diffusers' WanTransformer3DModel (which matches Wan2.1's WanModel): layer norms and
// modulation in fp32, residual adds in fp32 rounded to the compute dtype, the time embedding and its
// projection in fp32, RoPE tables computed in fp64 and applied in fp32.
//
// One forward pass (one denoising step of one micro-batch):
//   inputs      {latents [B, in_dim, F, H, W] (I2V: noise latents and the image condition already
//                concatenated on channels), timestep float [B] (0..1000), context [B, Lt, text_dim],
//                I2V only: clip image features [B, Li, 1280]}
//   activation  {x [B, L, dim] compute dtype, e [B, dim] fp32, e0 [B, 6, dim] fp32,
//                context [B, Li + Lt', dim] compute dtype, grid: an empty int64
//                tensor of shape [0, f, h, w, Li] (sizes without a device read)}
//                and, inside a block between its self_attn and ffn phases, the ffn modulation [B, 3, dim].
//   output      float32 [B, out_dim, F, H, W] (the flow-matching velocity)
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>

#include "pipeswap/models/architecture.h"

namespace pipeswap::models {

struct WanConfig {
  bool diffusers_names = false;  // checkpoint in WanTransformer3DModel naming
  std::string model_type = "t2v";  // t2v | i2v
  int64_t dim = 0;
  int64_t ffn_dim = 0;
  int64_t num_heads = 0;
  int64_t num_layers = 0;
  int64_t in_dim = 16;
  int64_t out_dim = 16;
  int64_t text_dim = 4096;
  int64_t freq_dim = 256;
  int64_t text_len = 0;       // Wan2.1 pads the text context to this many tokens (0: no padding)
  int64_t image_dim = 0;      // CLIP feature size for I2V (1280), 0 for T2V
  std::array<int64_t, 3> patch{1, 2, 2};
  double eps = 1e-6;
  bool cross_attn_norm = true;
  bool qk_norm = true;
  int64_t rope_max_seq_len = 1024;

  bool i2v() const { return image_dim > 0; }
  int64_t head_dim() const { return dim / num_heads; }
};

// True when config.json describes a Wan DiT in either naming.
bool is_wan_config(const nlohmann::json& config);
WanConfig parse_wan_config(const nlohmann::json& config);
std::unique_ptr<Architecture> make_wan(const nlohmann::json& config);

}  // namespace pipeswap::models
