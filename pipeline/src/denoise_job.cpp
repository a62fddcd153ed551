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

// CFG-parallel: rank 0 sends every other group's leader the inputs its branch needs (the latents, the image
// condition and CLIP features, and that branch's context); a leader receives them into `out`. Absent
// inputs travel as empty tensors.
void share_inputs(comm::Transport& t, const Plan& plan, int rank, const DenoiseInputs& in, DenoiseInputs& out) {
  auto or_empty = [](const torch::Tensor& x) { return x.defined() ? x.contiguous() : torch::empty({0}); };
  auto defined_or_not = [](torch::Tensor x) { return x.numel() == 0 ? torch::Tensor() : x; };
  for (int g = 1; g < plan.guidance_groups; ++g) {
    const int leader = plan.leader(g);
    if (rank == 0) {
      const torch::Tensor& context = g == 1 ? in.context_null : in.context;
      t.send(leader, comm::Message{comm::MessageKind::kControl, 0, 0,
                                   {or_empty(in.latents), or_empty(in.image_cond), or_empty(context),
                                    or_empty(in.clip_fea)}});
    } else if (rank == leader) {
      comm::Message m = t.recv(0);
      PS_CHECK(m.kind == comm::MessageKind::kControl && m.tensors.size() == 4, CommError,
               "rank 0 sent a message of kind {} with {} tensor(s) where the denoising inputs were expected (ranks "
               "are out of step: are all running the same build and arguments?)",
               static_cast<int>(m.kind), m.tensors.size());
      out.latents = m.tensors[0];
      out.image_cond = defined_or_not(m.tensors[1]);
      // The branch's context sits where that branch reads it.
      (g == 1 ? out.context_null : out.context) = m.tensors[2];
      out.clip_fea = defined_or_not(m.tensors[3]);
    }
  }
}

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
  const int groups = plan.guidance_groups;
  const int group = plan.group_of(rank);
  for (int g = 0; g < groups; ++g)
    PS_CHECK(plan.first_stage(g) == plan.leader(g), ConfigError,
             "denoise needs the first rank of each group to hold the first blocks (it keeps the latents): give the "
             "first --device-chain entry {}a non-zero weight",
             groups > 1 ? "of each guidance group " : "");
  PS_CHECK(groups == 1 || (groups == 2 && settings.cfg), ConfigError,
           "CFG-parallel with {} guidance groups needs guidance with its 2 branches", groups);
  const int branches = settings.cfg ? 2 : 1;
  const int units = denoise_units(settings);
  const int steps = settings.steps;
  // The guidance group that runs unit u: its branch with CFG-parallel, else the only one.
  auto group_of_unit = [&](int u) { return groups > 1 ? u % branches : 0; };
  const std::shared_ptr<const Sampler> schedule =
      settings.sampler ? settings.sampler : std::shared_ptr<const Sampler>(make_flow_euler(steps, settings.shift));
  PS_CHECK(schedule->steps() == steps, ConfigError, "the {} sampler has {} steps where the job has {}",
           schedule->name(), schedule->steps(), steps);
  auto sigma = [&](int i) { return schedule->sigma(i); };
  const bool leads = stage.leads();
  // CFG-parallel: rank 0 read the inputs; each other group's leader gets them (its branch needs the latents
  // and its own context), before any step.
  DenoiseInputs shared;
  const DenoiseInputs& inputs = groups > 1 && rank != 0 ? shared : in;
  if (groups > 1) share_inputs(transport, plan, rank, in, shared);
  at::NoGradGuard no_grad;
  // A unit's context is the same at every step: its key (unique to this job in this process) lets each
  // block keep the context's cross-attention K/V from the first step (models/src/wan.cpp).
  static std::atomic<int64_t> jobs{0};
  const int64_t serial = ++jobs;
  auto context_key = [&](int u) { return torch::full({}, (serial << 20) | u, torch::kInt64); };

  // Each group leader's state (rank 0's without CFG-parallel): the latents of every sample, each sample's
  // sampler, and each unit's velocity of the current step.
  torch::Tensor x;
  std::vector<std::unique_ptr<Sampler>> samplers;
  std::vector<torch::Tensor> velocity(units);
  std::vector<int> done_step(settings.batch, 0);  // steps applied to each sample
  auto last_report = t0;
  // The latents, the velocities and the sampler's update stay on rank 0's device: a step makes no
  // host-to-device or device-to-host copy (on a GPU, small pageable copies would wait behind the copy
  // stream's slot fills on the copy engine), and the latents come to the host once, at the end.
  // With CFG-parallel every leader keeps identical latents: each applies the same guidance mix and sampler
  // step to the same velocities, in the same float32 arithmetic.
  if (leads) {
    x = inputs.latents.to(device, torch::kFloat32).clone();
    for (int i = 0; i < settings.batch; ++i) samplers.push_back(schedule->clone());
  }
  const torch::Tensor image_cond =
      leads && inputs.image_cond.defined() ? inputs.image_cond.to(device, torch::kFloat32) : torch::Tensor();

  // A leader: take the velocities of sample i's step s (its own branch from its group's last stage unless
  // it is that stage; the other branch from the other group's last stage) and apply the guidance mix and
  // the sampler's step, as the fixture scripts' loops do.
  auto finish_sample_step = [&](int s, int i) {
    for (int b = 0; b < branches; ++b) {
      const int u = i * branches + b;
      const int g = group_of_unit(u);
      if (!(g == group && stage.keeps_outputs())) velocity[u] = stage.output(s, u, g);
      velocity[u] = velocity[u].to(x.device(), torch::kFloat32);
    }
    torch::Tensor v = velocity[i * branches];
    if (settings.cfg) {
      const torch::Tensor& uncond = velocity[i * branches + 1];
      v = uncond + settings.guidance * (v - uncond);
    }
    samplers[static_cast<size_t>(i)]->step(v, x.narrow(0, i, 1));
    done_step[i] = s + 1;
    if (i == settings.batch - 1 && rank == 0) {
      compat::synchronize_stream(device);  // the step's time is its compute's, not its launch's
      const auto now = Clock::now();
      const double dt = std::chrono::duration<double>(now - last_report).count();
      last_report = now;
      result.step_seconds.push_back(dt);
      if (on_step) on_step(StepReport{s + 1, sigma(s), dt});
    }
  };

  // This rank's micro-batches: every unit, or with CFG-parallel its group's branch of every sample.
  std::vector<int> mine;
  for (int u = 0; u < units; ++u)
    if (group_of_unit(u) == group) mine.push_back(u);
  const int my_units = static_cast<int>(mine.size());
  weights.expect_sweeps(steps * stage.sweeps_per_pass(my_units));
  if (!stage.idle()) {
    for (int s = 0; s < steps; ++s) {
      const auto t =
          torch::full({1}, schedule->timestep(s), torch::TensorOptions(torch::kFloat32).device(device));
      const std::vector<torch::Tensor> outs = stage.pass_group(s, mine, [&](int u) {
        const int i = u / branches;
        const bool uncond = settings.cfg && u % branches == 1;
        if (done_step[i] < s) finish_sample_step(s - 1, i);
        torch::Tensor lat = x.narrow(0, i, 1);
        if (image_cond.defined()) lat = torch::cat({lat, row(image_cond, i)}, 1);
        return models::Activation{lat, t, row(uncond ? inputs.context_null : inputs.context, i),
                                  inputs.clip_fea.defined() ? row(inputs.clip_fea, i) : torch::Tensor(),
                                  context_key(u)};
      });
      for (int k = 0; k < my_units; ++k)
        if (outs[k].defined()) velocity[mine[k]] = outs[k];  // this leader is its group's last stage
    }
  }
  if (leads) {
    for (int i = 0; i < settings.batch; ++i) finish_sample_step(steps - 1, i);
    if (rank == 0) result.latents = x.to(torch::kCPU);
  }
  transport.flush();
  result.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return result;
}

}  // namespace pipeswap::pipeline
