// The built-in demo model: a small Llama-architecture checkpoint that pipeswap writes itself,
// deterministically, as a real config.json + model.safetensors in a cache directory.
#pragma once

#include <torch/types.h>

#include <string>

namespace pipeswap::launcher {

// Directory for pipeswap's caches: $PIPESWAP_CACHE, else $XDG_CACHE_HOME/pipeswap, else
// ~/.cache/pipeswap.
std::string cache_dir();

// Returns the demo model's directory, writing it first if absent. Safe when several ranks on one
// node call it at once: each writes a private temporary directory and renames it into place.
std::string ensure_demo_model();

// The demo job's input: 8 sequences of 64 token ids (deterministic).
torch::Tensor demo_input_ids();

}  // namespace pipeswap::launcher
