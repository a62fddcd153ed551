// The denoising job: flow-matching sampling of a diffusion transformer (Wan), with the conditional and
// unconditional passes of classifier-free guidance as separate micro-batches. The sampler is a hook
// (sampler.h): `pipeswap denoise` steps with Euler on its own schedule, `pipeswap generate` with UniPC or
// diffusers' Euler.
//
// Units: each sample of the batch gives one micro-batch per branch (cond, and uncond when guidance is
// on). Every rank walks the same static order, step by step and unit by unit. Rank 0 is the first
// stage and holds the latents; the last stage sends each unit's velocity to rank 0, which applies the
// Euler update of a sample as soon as all of its branches for that step are back. So a unit's next
// step enters the first stage as soon as its sample's previous step has left the last one: with
// several samples in flight the pipeline stays full across steps. With one sample, the cond and
// uncond passes of step s+1 both need both passes of step s (the guidance mixes them), and a p-stage
// pipeline can keep at most 2/(p+1) of its stages busy: that is the arithmetic of exact CFG, not of
// the schedule (see docs/design-notes.md).
//
// The sampler's step and the guidance mix run on rank 0's CPU in float32 whatever the split, so every
// split and swap setting gives the same arithmetic as a single-rank run.
#pragma once

#include <functional>
#include <memory>

#include <torch/types.h>

#include "pipeswap/comm/transport.h"
#include "pipeswap/models/architecture.h"
#include "pipeswap/offload/block_weights.h"
#include "pipeswap/pipeline/plan.h"
#include "pipeswap/pipeline/sampler.h"

namespace pipeswap::pipeline {

struct DenoiseInputs {    // rank 0 only; all float32 on the CPU, batch B first
  torch::Tensor latents;       // [B, C, F, H, W] initial noise
  torch::Tensor image_cond;    // optional [B, Cy, F, H, W]: concatenated after the latents on channels (I2V "y")
  torch::Tensor context;       // [B, L, text_dim]
  torch::Tensor context_null;  // optional [B, L', text_dim] (guidance needs it)
  torch::Tensor clip_fea;      // optional [B, Li, image_dim] (I2V)
};

struct DenoiseSettings {
  int steps = 50;
  double guidance = 5.0;
  double shift = 5.0;
  int batch = 1;            // samples (all ranks know it)
  bool cfg = true;          // guidance on: two branches per sample
  // Rank 0 clones one per sample; its steps() must equal `steps`. Unset: Euler on flow_sigmas(steps, shift)
  // (make_flow_euler), `pipeswap denoise`'s sampler. Only rank 0 steps; the other ranks need only `steps`.
  std::shared_ptr<const Sampler> sampler;
};

struct StepReport {
  int step = 0;        // 1-based
  double sigma = 0;    // before the step
  double seconds = 0;  // since the previous report (or the job's start)
};

struct DenoiseResult {
  torch::Tensor latents;  // rank 0 only: float32 [B, C, F, H, W]
  double seconds = 0;
  std::vector<double> step_seconds;  // rank 0 only
};

// sigma_i = shift * s_i / (1 + (shift - 1) * s_i), s_i = 1 - i/steps, i = 0..steps (float64).
torch::Tensor flow_sigmas(int steps, double shift);

// Micro-batches per step: batch x (2 with guidance, else 1).
int denoise_units(const DenoiseSettings& s);

DenoiseResult run_denoise(const Plan& plan, int rank, const models::Architecture& arch,
                          offload::BlockWeights& weights, comm::Transport& transport, const DenoiseInputs& in,
                          const DenoiseSettings& settings, torch::Device device,
                          const std::function<void(const StepReport&)>& on_step = {});

}  // namespace pipeswap::pipeline
