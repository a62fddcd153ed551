#include "pipeswap/pipeline/denoise_job.h"

#include <atomic>
#include <chrono>

#include "pipeswap/core/error.h"
#include "pipeswap/core/log.h"
#include "pipeswap/core/torch_compat.h"
#include "pipeswap/core/trace.h"
#include "stage.h"

namespace pipeswap::pipeline {
namespace {

using Clock = std::chrono::steady_clock;

// Sample `i` of a batch-first tensor, keeping the batch axis (a tensor with one row serves every sample).
torch::Tensor row(const torch::Tensor& t, int64_t i) { return t.size(0) == 1 ? t : t.narrow(0, i, 1); }

}  // namespace

torch::Tensor flow_sigmas(int steps, double shift) {
  PS_CHECK(steps >= 1, ConfigError, "--steps must be at least 1 (got {})", steps);
  PS_CHECK(shift > 0, ConfigError, "--shift must be positive (got {})", shift);
  auto s = torch::linspace(1.0, 0.0, steps + 1, torch::TensorOptions().dtype(torch::kFloat64));
  return shift * s / (1 + (shift - 1) * s);
}

int denoise_units(const DenoiseSettings& s) { return s.batch * (s.cfg ? 2 : 1); }

DenoiseResult run_denoise(const Plan& plan, int rank, const models::Architecture& arch,
                          offload::BlockWeights& weights, comm::Transport& transport, const DenoiseInputs& in,
                          const DenoiseSettings& settings, torch::Device device,
                          const std::function<void(const StepReport&)>& on_step) {
  const auto t0 = Clock::now();
  DenoiseResult result;
  Stage stage(plan, rank, arch, weights, transport, device);
  PS_CHECK(plan.first_stage() == 0, ConfigError,
           "denoise needs rank 0 to hold the first blocks (it keeps the latents): give the first --device-chain "
           "entry a non-zero weight");
  const int branches = settings.cfg ? 2 : 1;
  const int units = denoise_units(settings);
  const int steps = settings.steps;
  const std::shared_ptr<const Sampler> schedule =
      settings.sampler ? settings.sampler : std::shared_ptr<const Sampler>(make_flow_euler(steps, settings.shift));
  PS_CHECK(schedule->steps() == steps, ConfigError, "the {} sampler has {} steps where the job has {}",
           schedule->name(), schedule->steps(), steps);
  auto sigma = [&](int i) { return schedule->sigma(i); };
  at::NoGradGuard no_grad;
  // A unit's context is the same at every step: its key (unique to this job in this process) lets each
  // block keep the context's cross-attention K/V from the first step (models/src/wan.cpp).
  static std::atomic<int64_t> jobs{0};
  const int64_t serial = ++jobs;
  auto context_key = [&](int u) { return torch::full({}, (serial << 20) | u, torch::kInt64); };

  // Rank 0's state: the latents of every sample, each sample's sampler, and each unit's velocity of the
  // current step.
  torch::Tensor x;
  std::vector<std::unique_ptr<Sampler>> samplers;
  std::vector<torch::Tensor> velocity(units);
  std::vector<int> done_step(settings.batch, 0);  // steps applied to each sample
  auto last_report = t0;
  // The latents, the velocities and the sampler's update stay on rank 0's device: a step makes no
  // host-to-device or device-to-host copy (on a GPU, small pageable copies would wait behind the copy
  // stream's slot fills on the copy engine), and the latents come to the host once, at the end.
  if (rank == 0) {
    x = in.latents.to(device, torch::kFloat32).clone();
    for (int i = 0; i < settings.batch; ++i) samplers.push_back(schedule->clone());
  }
  const torch::Tensor image_cond =
      rank == 0 && in.image_cond.defined() ? in.image_cond.to(device, torch::kFloat32) : torch::Tensor();

  // Rank 0: take the velocities of sample i's step s (from the last stage unless rank 0 is it) and
  // apply the guidance mix and the sampler's step, as the fixture scripts' loops do.
  auto finish_sample_step = [&](int s, int i) {
    for (int b = 0; b < branches; ++b) {
      const int u = i * branches + b;
      if (!stage.keeps_outputs()) velocity[u] = stage.output(s, u);
      velocity[u] = velocity[u].to(x.device(), torch::kFloat32);
    }
    torch::Tensor v = velocity[i * branches];
    if (settings.cfg) {
      const torch::Tensor& uncond = velocity[i * branches + 1];
      v = uncond + settings.guidance * (v - uncond);
    }
    samplers[static_cast<size_t>(i)]->step(v, x.narrow(0, i, 1));
    done_step[i] = s + 1;
    if (i == settings.batch - 1) {
      compat::synchronize_stream(device);  // the step's time is its compute's, not its launch's
      const auto now = Clock::now();
      const double dt = std::chrono::duration<double>(now - last_report).count();
      last_report = now;
      result.step_seconds.push_back(dt);
      if (on_step) on_step(StepReport{s + 1, sigma(s), dt});
    }
  };

  weights.expect_sweeps(steps * stage.sweeps_per_pass(units));
  if (!stage.idle()) {
    std::vector<int> all(units);
    for (int u = 0; u < units; ++u) all[u] = u;
    for (int s = 0; s < steps; ++s) {
      const auto t =
          torch::full({1}, schedule->timestep(s), torch::TensorOptions(torch::kFloat32).device(device));
      const std::vector<torch::Tensor> outs = stage.pass_group(s, all, [&](int u) {
        const int i = u / branches;
        const bool uncond = settings.cfg && u % branches == 1;
        if (done_step[i] < s) finish_sample_step(s - 1, i);
        torch::Tensor lat = x.narrow(0, i, 1);
        if (image_cond.defined()) lat = torch::cat({lat, row(image_cond, i)}, 1);
        return models::Activation{lat, t, row(uncond ? in.context_null : in.context, i),
                                  in.clip_fea.defined() ? row(in.clip_fea, i) : torch::Tensor(), context_key(u)};
      });
      for (int u = 0; u < units; ++u)
        if (outs[u].defined()) velocity[u] = outs[u];  // rank 0 is the last stage
    }
  }
  if (rank == 0) {
    for (int i = 0; i < settings.batch; ++i) finish_sample_step(steps - 1, i);
    result.latents = x.to(torch::kCPU);
  }
  transport.flush();
  result.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return result;
}

}  // namespace pipeswap::pipeline
