// The parts of `pipeswap generate` (Wan2.1 text-to-video) around the denoise job (denoise_job.h), each a
// component with a device of its own, loaded on demand and freed when done, as WanPipeline runs them
// (diffusers 0.42, pipeline_wan.py):
//   prompts   -> tokens       the umT5 tokenizer (tokenizer.h), or token ids read from a file
//   tokens    -> embeddings   the umT5 encoder (umt5.h): read, encode the prompts and the negative prompts in one
//                             batch each, trimmed and zero-padded to 512 rows, freed before the DiT loads (on
//                             demand; or kept for the whole job, or swapped layer by layer: TextEncoderPlacement)
//   noise                     randn of [B, z_dim, (F - 1) / 4 + 1, H / 8, W / 8] float32 from
//                             torch.Generator("cpu").manual_seed(seed), as prepare_latents draws it
//   latents   -> frames       the Wan VAE decoder (wan_vae.h), read after the DiT is freed
//   frames    -> file         video_output.h
// This file knows no ranks: the launcher (launcher/src/generate.cpp) runs these on rank 0 while the others wait.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "pipeswap/models/tokenizer.h"
#include "pipeswap/models/umt5.h"
#include "pipeswap/offload/residency.h"
#include "pipeswap/models/wan_vae.h"

namespace pipeswap::pipeline {

struct VideoSize {
  int64_t frames = 81;
  int64_t height = 480;
  int64_t width = 832;
};
// Throws ConfigError for frames not of the form 4k + 1 or sizes that are not positive multiples of 16
// (WanPipeline's check_inputs), naming the nearest sizes that are.
void check_video_size(const VideoSize& size);
// [batch, channels, (frames - 1) / 4 + 1, height / 8, width / 8].
std::vector<int64_t> latent_shape(int64_t batch, int64_t channels, const VideoSize& size);
// float32 CPU noise as torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed)) draws it.
torch::Tensor initial_noise(const std::vector<int64_t>& shape, uint64_t seed);

struct PromptPair {
  std::string prompt;
  std::string negative;
};
// --prompts FILE: one JSON object a line, {"prompt": "...", "negative_prompt": "..."} (the negative prompt
// optional: `default_negative` then); blank lines skipped. Throws IoError / ConfigError naming the line.
std::vector<PromptPair> read_prompts_jsonl(const std::string& path, const std::string& default_negative);

// --prompt-ids FILE (for builds without SentencePiece, or ids made elsewhere): safetensors with int64
// input_ids and attention_mask [B, T], and negative_input_ids, negative_attention_mask for guidance.
struct PromptIds {
  models::PromptTokens cond;
  std::optional<models::PromptTokens> uncond;
};
PromptIds read_prompt_ids(const std::string& path, bool need_negative);

struct EncodedPrompts {
  torch::Tensor context;       // float32 CPU [B, 512, d_model]
  torch::Tensor context_null;  // the same for the negative prompts (guidance), else undefined
  int64_t weight_bytes = 0;    // the encoder's weights as held while it ran (all of them; the device holds
                               // only its slots and moved-in embedding when swapped)
  int64_t fills = 0;           // swapped: slot fills (one per layer per encoded batch)
  std::shared_ptr<const void> kept;  // resident: the encoder, alive while this is held
};

// Where the text encoder lives (the seeds' component placements, OneTrainer's on-demand and LightX2V's
// per-block T5 offload):
//   on-demand  read onto its device, encode, freed before the DiT loads (the default)
//   resident   read onto its device and kept there for the whole job (EncodedPrompts::kept)
//   swapped    its layers rest in host memory and stream through device slots as the DiT's swapped
//              blocks do (the offload store, `swap` its options: all layers swapped unless
//              swap.blocks_to_swap says fewer; the embedding kept on the host and moved in when used),
//              for a device that cannot hold it (UMT5-XXL is 11 GB in bf16). Same arithmetic as the
//              other two: the embeddings are bit-identical.
enum class TextEncoderPlacement { kOnDemand, kResident, kSwapped };
TextEncoderPlacement parse_text_encoder_placement(const std::string& word);  // ConfigError naming the choices
const char* to_string(TextEncoderPlacement p);
struct TextEncoderSettings {
  torch::Device device{torch::kCPU};
  c10::ScalarType dtype = torch::kFloat32;
  TextEncoderPlacement placement = TextEncoderPlacement::kOnDemand;
  offload::OffloadOptions swap;  // kSwapped only
};
// Reads the text encoder from `text_encoder_dir` as `s` places it and encodes `cond` (and `uncond` when
// given); frees it before returning unless it is resident.
EncodedPrompts encode_prompts(const std::string& text_encoder_dir, const models::PromptTokens& cond,
                              const std::optional<models::PromptTokens>& uncond, const TextEncoderSettings& s);
// The swapped placement's store as the plan sees it: slot bytes x slots, the moved-in embedding.
offload::SwapLayout text_encoder_swap_layout(const models::UMT5Checkpoint& text_encoder, const TextEncoderSettings& s);

struct DecodeSettings {
  torch::Device device{torch::kCPU};
  c10::ScalarType dtype = torch::kFloat32;
  std::optional<models::WanVaeTiling> tiling;
};
struct DecodedFrames {
  torch::Tensor frames;  // float32 CPU [B, 3, F, H, W] in [-1, 1]
  int64_t weight_bytes = 0;
};
// Reads the VAE decoder from `vae_dir`, decodes float32 latents [B, z, f, h, w], frees it.
DecodedFrames decode_on_demand(const std::string& vae_dir, const torch::Tensor& latents, const DecodeSettings& s);

}  // namespace pipeswap::pipeline
