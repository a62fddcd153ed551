#include "pipeswap/pipeline/generate_job.h"

#include <ATen/CPUGeneratorImpl.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "pipeswap/core/error.h"
#include "pipeswap/core/files.h"
#include "pipeswap/core/json.h"
#include "pipeswap/core/log.h"
#include "pipeswap/core/safetensors.h"
#include "pipeswap/core/weights.h"
#include "pipeswap/models/umt5.h"
#include "pipeswap/offload/block_weights.h"

namespace pipeswap::pipeline {
namespace {

constexpr int64_t kSpatial = 8, kTemporal = 4, kMultiple = 16;

int64_t nearest_multiple(int64_t v, int64_t m) { return std::max<int64_t>(m, (v + m / 2) / m * m); }

models::PromptTokens tokens_from(const SafetensorsFile& file, const std::string& path, const std::string& ids_name,
                                 const std::string& mask_name) {
  models::PromptTokens t;
  for (const std::string& name : {ids_name, mask_name}) {
    const TensorInfo* info = file.find(name);
    PS_CHECK(info != nullptr, ConfigError, "--prompt-ids {} has no tensor '{}' (it needs input_ids and attention_mask "
             "[B, T], and negative_input_ids and negative_attention_mask with guidance)", path, name);
    PS_CHECK(info->dtype == DType::I64 || info->dtype == DType::I32, ConfigError,
             "--prompt-ids {}: {} is {}, expected integer ids", path, name, dtype_name(info->dtype));
    PS_CHECK(info->shape.size() == 2, ConfigError, "--prompt-ids {}: {} must be [B, T]", path, name);
  }
  t.input_ids = file.read(ids_name).to(torch::kInt64).contiguous();
  t.attention_mask = file.read(mask_name).to(torch::kInt64).contiguous();
  PS_CHECK(t.input_ids.sizes() == t.attention_mask.sizes(), ConfigError,
           "--prompt-ids {}: {} {} and {} {} differ in shape", path, ids_name, shape_str(t.input_ids), mask_name,
           shape_str(t.attention_mask));
  PS_CHECK(t.input_ids.min().item<int64_t>() >= 0, ConfigError, "--prompt-ids {}: {} holds negative ids", path,
           ids_name);
  const torch::Tensor lengths = t.attention_mask.sum(1);
  for (int64_t b = 0; b < lengths.size(0); ++b) {
    t.lengths.push_back(lengths[b].item<int64_t>());
    t.dropped.push_back(0);
  }
  return t;
}

}  // namespace

void check_video_size(const VideoSize& s) {
  PS_CHECK(s.frames >= 1 && (s.frames - 1) % kTemporal == 0, ConfigError,
           "--frames {} is not of the form 4k+1 (the VAE decodes each latent frame after the first to 4 frames): use "
           "{} or {}",
           s.frames, std::max<int64_t>(1, (s.frames - 1) / kTemporal * kTemporal + 1),
           (std::max<int64_t>(0, s.frames - 1) / kTemporal + 1) * kTemporal + 1);
  PS_CHECK(s.height > 0 && s.height % kMultiple == 0, ConfigError,
           "--height {} is not a positive multiple of 16 (the VAE's 8x and the DiT's 2x2 patches): use {}", s.height,
           nearest_multiple(s.height, kMultiple));
  PS_CHECK(s.width > 0 && s.width % kMultiple == 0, ConfigError,
           "--width {} is not a positive multiple of 16 (the VAE's 8x and the DiT's 2x2 patches): use {}", s.width,
           nearest_multiple(s.width, kMultiple));
}

std::vector<int64_t> latent_shape(int64_t batch, int64_t channels, const VideoSize& s) {
  return {batch, channels, (s.frames - 1) / kTemporal + 1, s.height / kSpatial, s.width / kSpatial};
}

torch::Tensor initial_noise(const std::vector<int64_t>& shape, uint64_t seed) {
  // torch.Generator("cpu").manual_seed(seed): a CPU generator (mt19937) seeded so; randn draws through it as
  // torch's randn does on the CPU.
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::randn(shape, gen, torch::TensorOptions().dtype(torch::kFloat32));
}

std::vector<PromptPair> read_prompts_jsonl(const std::string& path, const std::string& default_negative) {
  // A regular file only: a FIFO or a directory given as --prompts is named, never waited on.
  std::istringstream in(read_regular_file(path, "--prompts file"));
  std::vector<PromptPair> out;
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j;
    try {
      j = parse_json(line);
    } catch (const JsonError& e) {
      PS_THROW(ConfigError, "--prompts {} line {} is not JSON ({}): give one {{\"prompt\": ..., \"negative_prompt\": "
               "...}} a line", path, n, e.what());
    }
    PS_CHECK(j.is_object() && j.contains("prompt") && j["prompt"].is_string(), ConfigError,
             "--prompts {} line {}: expected {{\"prompt\": \"...\"}} (negative_prompt optional)", path, n);
    PromptPair p{j["prompt"].get<std::string>(), default_negative};
    if (j.contains("negative_prompt") && !j["negative_prompt"].is_null()) {
      PS_CHECK(j["negative_prompt"].is_string(), ConfigError, "--prompts {} line {}: negative_prompt is not a string",
               path, n);
      p.negative = j["negative_prompt"].get<std::string>();
    }
    out.push_back(std::move(p));
  }
  PS_CHECK(!out.empty(), ConfigError, "--prompts {} holds no prompts", path);
  return out;
}

PromptIds read_prompt_ids(const std::string& path, bool need_negative) {
  PS_CHECK(std::filesystem::exists(path), IoError, "--prompt-ids file {} does not exist", path);
  auto file = SafetensorsFile::open(path);
  PromptIds ids;
  ids.cond = tokens_from(*file, path, "input_ids", "attention_mask");
  if (need_negative) {
    ids.uncond = tokens_from(*file, path, "negative_input_ids", "negative_attention_mask");
    PS_CHECK(ids.uncond->input_ids.size(0) == ids.cond.input_ids.size(0), ConfigError,
             "--prompt-ids {}: {} prompts but {} negative prompts", path, ids.cond.input_ids.size(0),
             ids.uncond->input_ids.size(0));
  }
  return ids;
}

TextEncoderPlacement parse_text_encoder_placement(const std::string& word) {
  if (word == "on-demand") return TextEncoderPlacement::kOnDemand;
  if (word == "resident") return TextEncoderPlacement::kResident;
  if (word == "swapped") return TextEncoderPlacement::kSwapped;
  PS_THROW(ConfigError, "--text-encoder '{}' is not a placement: use on-demand, resident or swapped", word);
}

const char* to_string(TextEncoderPlacement p) {
  switch (p) {
    case TextEncoderPlacement::kResident: return "resident";
    case TextEncoderPlacement::kSwapped: return "swapped";
    default: return "on-demand";
  }
}

namespace {

// The swapped placement's offload options: every layer swapped unless told fewer, and the embedding (the
// encoder's one large component: 250112 x d_model) kept on the host and moved in for the prologue.
offload::OffloadOptions swapped_options(const models::Architecture& arch, const TextEncoderSettings& s) {
  offload::OffloadOptions o = s.swap;
  if (!o.blocks_to_swap && !o.offload_ratio) o.blocks_to_swap = arch.num_blocks();
  for (const auto& part : arch.prologue_parts()) o.offload_components.push_back(part.name);
  offload::check_offload_options(o);
  return o;
}

void check_ids(const models::PromptTokens& t, int64_t vocab) {
  PS_CHECK(t.input_ids.max().item<int64_t>() < vocab, ConfigError,
           "token id {} is outside the text encoder's vocabulary of {}: the ids are not this repo's tokenizer's",
           t.input_ids.max().item<int64_t>(), vocab);
}

// The encoder's layers through the offload store: the same prologue, phases and epilogue as
// UMT5Encoder::forward, each unit acquired just before its use and released after it.
EncodedPrompts encode_swapped(const std::string& dir, const models::PromptTokens& cond,
                              const std::optional<models::PromptTokens>& uncond, const TextEncoderSettings& s) {
  models::UMT5Checkpoint u = models::open_umt5(dir, s.dtype);
  const models::Architecture& arch = *u.arch;
  check_ids(cond, u.config.vocab_size);
  if (uncond) check_ids(*uncond, u.config.vocab_size);
  const int n = arch.num_blocks();
  const offload::OffloadOptions opts = swapped_options(arch, s);
  const offload::SwapLayout layout = offload::plan_swapping(arch, 0, n, s.dtype, opts);
  auto weights = offload::make_block_weights(arch, u.ckpt, {0, n, true, true}, layout, s.device, opts);
  weights->expect_sweeps(uncond ? 2 : 1);
  const auto options = torch::TensorOptions().device(s.device).dtype(s.dtype);
  auto run = [&](const models::PromptTokens& t) {
    const models::Activation inputs{t.input_ids.to(torch::kCPU),
                                    t.attention_mask.defined() ? t.attention_mask.to(torch::kCPU) : torch::Tensor()};
    models::Activation act = arch.prologue(weights->acquire_prologue(), inputs, options);
    weights->release_prologue();
    for (int b = 0; b < n; ++b) {
      for (int p = 0; p < static_cast<int>(arch.phase_names().size()); ++p) {
        arch.phase_forward(b, p, weights->acquire(b, p), act);
        weights->release(b, p);
      }
    }
    torch::Tensor hidden = arch.epilogue(weights->acquire_epilogue(), act);
    weights->release_epilogue();
    return models::wan_prompt_embeds(hidden, t.attention_mask).to(torch::kCPU, torch::kFloat32).contiguous();
  };
  EncodedPrompts out;
  out.context = run(cond);
  if (uncond) out.context_null = run(*uncond);
  out.weight_bytes = model_bytes(arch, s.dtype);
  out.fills = weights->stats().copies;
  return out;  // the store, its slots and host copies freed here
}

}  // namespace

offload::SwapLayout text_encoder_swap_layout(const models::UMT5Checkpoint& u, const TextEncoderSettings& s) {
  return offload::plan_swapping(*u.arch, 0, u.arch->num_blocks(), s.dtype, swapped_options(*u.arch, s));
}

EncodedPrompts encode_prompts(const std::string& text_encoder_dir, const models::PromptTokens& cond,
                              const std::optional<models::PromptTokens>& uncond, const TextEncoderSettings& s) {
  at::NoGradGuard no_grad;
  if (s.placement == TextEncoderPlacement::kSwapped) return encode_swapped(text_encoder_dir, cond, uncond, s);
  EncodedPrompts out;
  std::shared_ptr<models::UMT5Encoder> encoder = models::UMT5Encoder::load(text_encoder_dir, s.device, s.dtype);
  check_ids(cond, encoder->config().vocab_size);
  if (uncond) check_ids(*uncond, encoder->config().vocab_size);
  out.context = encoder->encode(cond).to(torch::kCPU, torch::kFloat32).contiguous();
  if (uncond) out.context_null = encoder->encode(*uncond).to(torch::kCPU, torch::kFloat32).contiguous();
  out.weight_bytes = encoder->weight_bytes();
  // Resident: the caller holds it for the job; on demand: freed here, before the DiT loads.
  if (s.placement == TextEncoderPlacement::kResident) out.kept = std::move(encoder);
  return out;
}

DecodedFrames decode_on_demand(const std::string& vae_dir, const torch::Tensor& latents, const DecodeSettings& s) {
  at::NoGradGuard no_grad;
  DecodedFrames out;
  auto vae = models::WanVaeDecoder::load(vae_dir, s.device, s.dtype);
  if (s.tiling) vae.enable_tiling(*s.tiling);
  out.weight_bytes = vae.weight_bytes();
  out.frames = vae.decode(latents, torch::Device(torch::kCPU)).to(torch::kFloat32);
  return out;
}

}  // namespace pipeswap::pipeline
