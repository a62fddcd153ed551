// The samplers a denoising job steps with, behind one small interface, so that the job's loop (which
// micro-batch runs when, guidance, rank 0's update) is written once (denoise_job.cpp):
//   - flow-matching Euler on `pipeswap denoise`'s schedule (make_flow_euler: sigma = shift s / (1 + (shift-1) s),
//     s = 1 - i/steps, timestep 1000 sigma), the one `denoise` has always used;
//   - flow-matching Euler on diffusers' FlowMatchEulerDiscreteScheduler schedule (make_diffusers_flow_euler),
//     what WanPipeline runs when given that scheduler (`generate --sampler euler`);
//   - flow-matching UniPC (unipc.h), what the Wan2.1 diffusers repos ship (`generate --sampler unipc`).
// A Sampler belongs to one sample: UniPC keeps the sample's history, so a job clones one per sample. Every
// update runs where the sample lives (rank 0's CPU, float32, in the denoise job), so all splits agree.
#pragma once

#include <torch/types.h>

#include <memory>
#include <string>
#include <vector>

#include "pipeswap/pipeline/unipc.h"

namespace pipeswap::pipeline {

class Sampler {
 public:
  virtual ~Sampler() = default;
  virtual int steps() const = 0;
  // What the DiT is given as its timestep at step s (0-based), as the reference passes it: 1000 sigma for the
  // Euler schedules, diffusers' integer for UniPC.
  virtual double timestep(int s) const = 0;
  // The noise level before step s (s = 0..steps(); the last is 0).
  virtual double sigma(int s) const = 0;
  // The next step: writes the sample at the next sigma into `sample` (a float tensor, a view is fine) from
  // the velocity there. Steps are taken in order, one call each.
  virtual void step(const torch::Tensor& velocity, const torch::Tensor& sample) = 0;
  virtual std::unique_ptr<Sampler> clone() const = 0;
  // "euler" or "unipc" (the summary and the output's metadata).
  virtual std::string name() const = 0;
};

// Euler on a given schedule: sample += (sigma[s+1] - sigma[s]) velocity, with the difference taken in double
// (for sigmas that are float32 values, the same value float32 arithmetic gives). `timesteps` has one entry per
// step, `sigmas` one more. Throws ConfigError for sizes that do not fit.
std::unique_ptr<Sampler> make_euler(std::vector<double> sigmas, std::vector<double> timesteps);

// `pipeswap denoise`'s schedule (flow_sigmas in denoise_job.h, float64), timestep 1000 sigma.
std::unique_ptr<Sampler> make_flow_euler(int steps, double shift);

// diffusers' FlowMatchEulerDiscreteScheduler(num_train_timesteps, shift) (defaults otherwise) after
// set_timesteps(steps): its training sigmas are shifted once in float32 to give sigma_max and sigma_min;
// timesteps linspace(1000 sigma_max, 1000 sigma_min, steps) in float64 are divided by 1000 and shifted
// again (diffusers applies the shift twice to the last value, as written); the sigmas are rounded to float32,
// the timesteps are 1000 sigma in float32, and a final sigma of 0 is appended. Throws ConfigError for
// steps < 1 or shift <= 0.
std::unique_ptr<Sampler> make_diffusers_flow_euler(int steps, double shift, int num_train_timesteps = 1000);

// UniPC (unipc.h) behind the interface.
std::unique_ptr<Sampler> make_unipc(int steps, const UniPCConfig& config);

}  // namespace pipeswap::pipeline
