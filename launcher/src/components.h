// What `pipeswap plan` and `pipeswap generate` say about a Wan repo's components beside the DiT's plan: the
// text encoder and the VAE decoder, each with its device, placement and the bytes of its phase (weights from
// the safetensors headers, working memory estimated), so that the job's peak per phase is known before
// anything loads.
#pragma once

#include <nlohmann/json.hpp>

#include <string>

#include "options.h"
#include "pipeswap/comm/transport.h"
#include "pipeswap/models/wan_repo.h"
#include "pipeswap/pipeline/generate_job.h"
#include "pipeswap/pipeline/plan.h"
#include "world.h"

namespace pipeswap::launcher {

struct ComponentPlan {
  std::string text;    // the table, one line a phase
  nlohmann::json json; // the same as data
};

// `batch` samples of `size`, guidance on or off (the negative prompts' batch); the text encoder on
// `te_device` in `te_dtype`, the VAE decoder on `vae_device` in float32, tiled or not; `dit` the DiT's plan.
ComponentPlan plan_components(const models::WanRepo& repo, int64_t batch, const pipeline::VideoSize& size, bool cfg,
                              const std::string& te_device, c10::ScalarType te_dtype, const std::string& vae_device,
                              bool vae_tiling, const pipeline::Plan& dit);

// `pipeswap plan --model REPO` for a diffusers Wan repo (generate.cpp): the DiT's plan for --frames, --height,
// --width and --guidance, and the components' table.
int cmd_plan_repo(const Options& o, const World& world, comm::Transport& t);

}  // namespace pipeswap::launcher
