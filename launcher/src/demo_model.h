// The built-in demo models, which pipeswap writes itself, deterministically, as real checkpoints in a
// cache directory on first use: a small Llama (config.json + model.safetensors) for `run` and `plan`,
// and a tiny Wan2.1 DiT (Wan2.1's own layout) for `denoise`, each with built-in inputs.
#pragma once

#include <torch/types.h>

#include <string>

namespace pipeswap::launcher {

// Directory for pipeswap's caches: $PIPESWAP_CACHE, else $XDG_CACHE_HOME/pipeswap, else
// ~/.cache/pipeswap.
std::string cache_dir();

// Where the demos live (whether or not written yet).
std::string demo_model_dir();
std::string demo_wan_dir();

// Returns the demo model's directory, writing it first if absent. Safe when several ranks on one
// node call it at once: each writes a private temporary directory and renames it into place.
std::string ensure_demo_model();
std::string ensure_demo_wan();

// The demo job's input: 8 sequences of 64 token ids (deterministic).
torch::Tensor demo_input_ids();

// The demo Wan's inputs (deterministic): one sample of noise latents [1, 16, 3, 8, 8] (48 tokens),
// a prompt's and a negative prompt's text embeddings [1, 16, 64].
struct DemoDenoiseInputs {
  torch::Tensor latents, context, context_null;
};
DemoDenoiseInputs demo_denoise_inputs();

}  // namespace pipeswap::launcher
