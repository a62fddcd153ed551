// `pipeswap denoise`: flow-matching sampling of a diffusion transformer across the ranks.
#include <iostream>

#include "demo_model.h"
#include "job.h"
#include "outputs.h"
#include "pipeswap/core/error.h"
#include "pipeswap/core/log.h"
#include "pipeswap/core/safetensors.h"
#include "pipeswap/core/weights.h"
#include "pipeswap/pipeline/denoise_job.h"
#include "pipeswap/pipeline/inputs.h"
#include "progress.h"

namespace pipeswap::launcher {
namespace {

// A per-sample input with one row (shared by every sample) or one row per sample.
void check_batch(const torch::Tensor& t, int64_t batch, const std::string& flag) {
  if (!t.defined()) return;
  PS_CHECK(t.size(0) == 1 || t.size(0) == batch, ConfigError,
           "{} holds {} samples but --latents holds {}: give one (shared by every sample) or {}", flag, t.size(0),
           batch, batch);
}

// What one micro-batch's forward pass sees: the first sample's latents (with its image condition),
// a timestep, `context`'s first row and the CLIP features.
models::Activation first_sample(const pipeline::DenoiseInputs& in, const torch::Tensor& context) {
  torch::Tensor lat = in.latents.narrow(0, 0, 1);
  if (in.image_cond.defined()) lat = torch::cat({lat, in.image_cond.narrow(0, 0, 1)}, 1);
  models::Activation probe{lat, torch::zeros({1}), context.narrow(0, 0, 1)};
  if (in.clip_fea.defined()) probe.push_back(in.clip_fea.narrow(0, 0, 1));
  return probe;
}

// Rank 0: reads and checks every input before any weights load (the demo Wan's built-in ones when no
// input is given).
pipeline::DenoiseInputs read_inputs(const Options& o, const models::Architecture& arch) {
  pipeline::DenoiseInputs in;
  if (o.latents.empty()) {
    const DemoDenoiseInputs demo = demo_denoise_inputs();
    in.latents = demo.latents;
    in.context = demo.context;
    in.context_null = demo.context_null;
    arch.check_inputs(first_sample(in, in.context));
    return in;
  }
  in.latents = pipeline::read_tensor_input(o.latents, "--latents", "latents", 5);
  in.context = pipeline::read_tensor_input(o.context, "--context", "context", 3);
  if (!o.context_null.empty())
    in.context_null = pipeline::read_tensor_input(o.context_null, "--context-null", "context_null", 3);
  if (!o.image_cond.empty()) in.image_cond = pipeline::read_tensor_input(o.image_cond, "--image-cond", "image_cond", 5);
  if (!o.clip_fea.empty()) in.clip_fea = pipeline::read_tensor_input(o.clip_fea, "--clip-fea", "clip_fea", 3);
  const int64_t b = in.latents.size(0);
  check_batch(in.context, b, "--context");
  check_batch(in.context_null, b, "--context-null");
  check_batch(in.image_cond, b, "--image-cond");
  check_batch(in.clip_fea, b, "--clip-fea");
  if (in.image_cond.defined()) {
    for (int d = 2; d < 5; ++d)
      PS_CHECK(in.image_cond.size(d) == in.latents.size(d), ConfigError,
               "--image-cond {} and --latents {} differ in frames, height or width", shape_str(in.image_cond),
               shape_str(in.latents));
  }
  // The architecture names anything a forward pass cannot take.
  arch.check_inputs(first_sample(in, in.context));
  if (in.context_null.defined()) arch.check_inputs(first_sample(in, in.context_null));
  return in;
}

}  // namespace

int cmd_denoise(const Options& o, const World& world, std::unique_ptr<comm::Transport>& transport) {
  const auto t_start = Clock::now();
  if (world.rank == 0) {
    pipeline::check_output_path(o.output);
    check_job_files(o, o.model.empty() ? demo_wan_dir() : o.model);
  }
  set_threads(o, world);
  Job job = open_model(o, world, *transport, JobUse::kRun);
  PS_CHECK(job.arch->kind() == "dit", ConfigError,
           "{} is a {} language model: `pipeswap denoise` samples diffusion transformers; use `pipeswap run --model "
           "{} --input FILE`",
           job.model_dir, job.arch->family(), job.model_dir);

  pipeline::DenoiseSettings settings;
  settings.steps = o.steps;
  settings.guidance = o.guidance;
  settings.shift = o.shift;
  settings.cfg = o.guidance != 1.0;
  pipeline::DenoiseInputs in;
  // Rank 0 reads the inputs; every rank learns the batch and the tokens per sample (the plan needs them).
  JobShape shape;
  if (world.rank == 0) {
    in = read_inputs(o, *job.arch);
    shape = JobShape{in.latents.size(0), job.arch->sequence_length(first_sample(in, in.context)), stored_dtype(job),
                     weight_storage(o, job)};
  }
  if (world.size > 1) shape = agree_shape(*transport, shape);
  PS_CHECK(shape.batch > 0, CommError, "rank 0 could not read the inputs (see its error)");
  settings.batch = static_cast<int>(shape.batch);
  const int units = pipeline::denoise_units(settings);
  JobShape one = shape;
  one.batch = 1;
  job.plan = make_job_plan(o, world, *transport, job, one, units, settings.steps);

  RankRuntime rt = start_rank(o, world, transport, job);
  comm::Transport& t = *transport;
  Progress bar("step", settings.steps, Progress::Unit::kItems);
  auto progress = [&](const pipeline::StepReport& r) {
    bar.update(r.step, fmt::format("sigma {:.4f}: {:.6f} s", r.sigma, r.seconds));
  };
  auto result = pipeline::run_denoise(job.plan, world.rank, *job.arch, *rt.weights, t, in, settings, rt.device,
                                      progress);
  rt.trace->finish(t);
  log_memory(job.plan.ranks.at(world.rank), *rt.weights, rt.device, settings.steps);
  if (world.rank == 0) {
    write_safetensors(o.output, {{"latents", result.latents}},
                      {{"producer", "pipeswap denoise"},
                       {"steps", std::to_string(settings.steps)},
                       {"guidance", fmt::format("{}", settings.guidance)},
                       {"shift", fmt::format("{}", settings.shift)}});
  }
  t.barrier();
  if (world.rank == 0) {
    std::string s = fmt::format(
        "pipeswap denoise: {} ({}), {} blocks on {} rank(s), {} sample(s) x {} tokens, {} "
        "micro-batches per step\n",
        job.model_dir, job.plan.family, job.plan.num_blocks, world.size, shape.batch, shape.seq, units);
    s += rank_lines(job.plan);
    const double per_step = result.seconds / settings.steps;
    s += fmt::format("  {} steps in {:.3f} s ({:.3f} s/step), guidance {}, shift {}, total {:.2f} s\n", settings.steps,
                     result.seconds, per_step, settings.guidance, settings.shift, since(t_start));
    s += fmt::format("  latents {} float32 -> {}\n", fmt::join(result.latents.sizes(), "x"), o.output);
    std::cout << s << std::flush;
  }
  return 0;
}

}  // namespace pipeswap::launcher
