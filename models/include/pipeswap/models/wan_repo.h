// A Wan2.1 text-to-video repo in diffusers' layout, as users download it (Wan-AI/Wan2.1-T2V-1.3B-Diffusers,
// Wan-AI/Wan2.1-T2V-14B-Diffusers), and what other --model folders are, told apart from their small files
// (no weights read) so that a command can say what to do with the one it was given.
//
//   model_index.json  {"_class_name": "WanPipeline", "tokenizer": [...], "text_encoder": [...],
//                      "transformer": [...], "vae": [...], "scheduler": [...], ...}
//   tokenizer/        umT5's SentencePiece model (spiece.model) and its configs      tokenizer.h
//   text_encoder/     UMT5EncoderModel (config.json, safetensors shards)             umt5.h
//   transformer/      WanTransformer3DModel (config.json, safetensors shards)        wan.h
//   vae/              AutoencoderKLWan (config.json, safetensors)                    wan_vae.h
//   scheduler/        scheduler_config.json (UniPCMultistepScheduler)                pipeline/unipc.h
// Wan2.2's two-expert and TI2V pipelines (transformer_2, boundary_ratio, expand_timesteps) and the
// image-to-video pipeline are told apart and refused with what to use instead.
#pragma once

#include <nlohmann/json.hpp>

#include <string>

namespace pipeswap::models {

struct WanRepo {
  std::string dir;
  std::string tokenizer, text_encoder, transformer, vae, scheduler;  // the component folders
  nlohmann::json model_index;

  // Checks model_index.json and that every component folder is there and holds no pickles in place of
  // safetensors. Throws CheckpointError naming what is missing or wrong and what to use instead (Wan2.1's
  // original layout with .pth files, a DiT folder alone, an image-to-video or Wan2.2 repo).
  static WanRepo open(const std::string& dir);
};

// What a --model folder holds, from its file names and small JSON files.
enum class ModelFolder {
  kMissing,             // no such folder
  kWanDiffusersRepo,    // model_index.json (whatever its pipeline class: WanRepo::open checks it)
  kWanOriginalRepo,     // Wan2.1's own release: pickled .pth text encoder / VAE beside the DiT
  kDiffusionTransformer,  // config.json of a Wan DiT alone (`pipeswap denoise` takes it)
  kLanguageModel,       // config.json of a language model (`pipeswap run` takes it)
  kOther,
};
ModelFolder classify_model_folder(const std::string& dir);

}  // namespace pipeswap::models
