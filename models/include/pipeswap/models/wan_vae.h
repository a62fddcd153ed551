// The decoder of Wan2.1's video VAE, as diffusers' AutoencoderKLWan decodes (diffusers 0.42), read from a
// diffusers `vae/` folder (config.json + diffusion_pytorch_model.safetensors). It owns the decoder's
// weights on one device in one dtype and turns DiT latents into frames; it knows nothing of ranks or
// swapping (the job places it, loads it on demand and drops it).
//
// What decode() does, step by step, as WanPipeline + AutoencoderKLWan do:
//   1. un-normalise: z = latents / (1 / latents_std) + latents_mean (config.json's lists, in the VAE dtype);
//   2. post_quant_conv (1x1x1);
//   3. the decoder over time in chunks of one latent frame with a feature cache: the first latent frame
//      decodes alone to one video frame, every later one to 4 (two temporal 2x upsamplings). Each causal
//      3x3x3 convolution pads two frames in front: zeros for the first chunk, then the last two frames
//      its input had in the chunks before (the cache). Each temporal upsampling lets the first chunk's
//      single frame through and doubles every later chunk's frames;
//   4. clamp to [-1, 1]. Frames: [B, out_channels (3), 1 + 4 (F - 1), 8 h, 8 w] in the VAE dtype.
// Samples of a batch are decoded one after another (diffusers' enable_slicing; the same values).
//
// Tiling (diffusers' enable_tiling): when the latents are wider or taller than a tile, each sample is
// decoded in overlapping spatial tiles of min_height x min_width output pixels, every `stride` pixels, each
// over all frames with a cache of its own; a tile is blended with the tile above and the one to its left
// over (min - stride) pixels with linear weights, after both of them were blended themselves, and its
// first stride x stride pixels are kept. Where diffusers decodes every tile and then blends, this keeps only
// the strips that the next tiles blend with (the values are the same).
//
// Memory (decode, one sample). Besides the weights (Wan2.1: the decoder and post_quant_conv are 74 M
// parameters, 147 MB in bf16; the encoder is never read) and the output frames (3 x T x H x W elements,
// written chunk by chunk into one tensor, on frames_device), the peak is
//   the feature cache, kept between chunks: the last two input frames of each of the 32 causal 3x3x3
//     convolutions, at that convolution's resolution. Wan2.1 at H x W output pixels: 672 channels at full
//     resolution, 1152 at 1/2, 2496 at 1/4, 4240 at 1/8 (per side), so 2 x 1182 H W elements: 4729 H W bytes
//     in bf16 (4.4 GB at 720 x 1280, 1.9 GB at 480 x 832), twice that in float32;
//   plus one chunk's working set at the full resolution, where a chunk has 4 frames of 96 channels
//     (A = 768 H W bytes in bf16): during a convolution of the last up block, the block's input (kept for
//     the residual), the convolution's input with the two cached frames in front (1.5 A) and its output,
//     3.5 A (2.5 GB at 720p in bf16) plus the convolution's own workspace. On the CPU, oneDNN's layout
//     copies of input and output come on top: measured about 8 A there.
//   Each chunk's intermediates are freed as soon as the next layer has read them; the spatial upsamplings
//   run frame by frame (one upsampled frame at a time). Tiling bounds both terms by the tile (256 x 256 by
//   default: about 0.5 GB in bf16) instead of the frame; only the strips the next tiles blend with are kept.
// Measured (VaeMemory.RealSize with bench/vae_peer.py, CPU, float32, Wan2.1 config, 3 latent frames, peak
// resident memory above weights and latents): 192 x 192: 0.94 GB (diffusers 1.32 GB), 256 x 256: 1.54 GB
// (diffusers 1.90), 384 x 384: 3.16 GB (diffusers 3.70), 384 x 384 tiled: 1.52 GB (diffusers 1.96). The
// GPU figures (bf16, 480p and 720p) are not measured yet: the same test prints them on a GPU.
#pragma once

#include <torch/types.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace pipeswap::models {

struct WanVaeConfig {
  int64_t z_dim = 16;
  int64_t base_dim = 96;  // the decoder's (decoder_base_dim, else base_dim)
  std::vector<int64_t> dim_mult{1, 2, 4, 4};
  int64_t num_res_blocks = 2;
  std::vector<bool> temporal_upsample{true, true, false};  // temperal_downsample reversed
  int64_t out_channels = 3;
  int64_t spatial_ratio = 8;         // scale_factor_spatial (2^(len(dim_mult) - 1))
  std::vector<double> latents_mean;  // z_dim each
  std::vector<double> latents_std;

  // Video frames each latent frame after the first decodes to (4 for Wan2.1).
  int64_t temporal_ratio() const;
  int64_t frames_for(int64_t latent_frames) const { return 1 + temporal_ratio() * (latent_frames - 1); }
};

// Parses a diffusers AutoencoderKLWan config.json (missing keys take diffusers' defaults, except
// latents_mean and latents_std, which are required). Throws CheckpointError naming the key for what is not
// Wan2.1's VAE (is_residual: the Wan2.2 VAE; patch_size) or is inconsistent.
WanVaeConfig parse_wan_vae_config(const nlohmann::json& config);

// diffusers' enable_tiling arguments, in output pixels (its defaults). Each a positive multiple of the
// spatial ratio (8), stride <= min.
struct WanVaeTiling {
  int64_t min_height = 256;
  int64_t min_width = 256;
  int64_t stride_height = 192;
  int64_t stride_width = 192;
};

class WanVaeDecoder {
 public:
  // Reads config.json and only the decoder's and post_quant_conv's tensors (the encoder stays on disk),
  // converted to `dtype` (float32 or bfloat16, or float16) on `device`. Throws CheckpointError naming the
  // file or tensor that is missing or has the wrong shape.
  static WanVaeDecoder load(const std::string& vae_dir, torch::Device device, torch::ScalarType dtype);

  // latents: [B, z_dim, F, h, w] as the DiT leaves them (normalised), any float dtype and device.
  // Returns [B, out_channels, frames_for(F), 8 h, 8 w] in [-1, 1], in the VAE dtype, on frames_device
  // (default: the VAE's device). Throws ConfigError for a wrong shape.
  torch::Tensor decode(const torch::Tensor& latents, std::optional<torch::Device> frames_device = {}) const;

  // Throws ConfigError for sizes that are not positive multiples of the spatial ratio, or stride > min.
  void enable_tiling(const WanVaeTiling& tiling = {});
  void disable_tiling() { tiling_.reset(); }
  const std::optional<WanVaeTiling>& tiling() const { return tiling_; }

  const WanVaeConfig& config() const;
  torch::Device device() const;
  torch::ScalarType dtype() const;
  int64_t weight_bytes() const;  // the decoder's weights as held (device, dtype)
  // The checkpoint tensors the decoder read (tests check that none of the decoder's is left out).
  std::vector<std::string> tensor_names() const;

  struct Weights;  // the decoder's layers (wan_vae.cpp)

 private:
  explicit WanVaeDecoder(std::shared_ptr<const Weights> w) : w_(std::move(w)) {}
  std::shared_ptr<const Weights> w_;
  std::optional<WanVaeTiling> tiling_;
};

}  // namespace pipeswap::models
