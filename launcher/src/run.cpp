// `pipeswap run`: the forward job over token ids, logits to a safetensors file.
#include <algorithm>
#include <iostream>

#include "demo_model.h"
#include "job.h"
#include "outputs.h"
#include "progress.h"
#include "pipeswap/core/error.h"
#include "pipeswap/core/log.h"
#include "pipeswap/core/safetensors.h"
#include "pipeswap/pipeline/forward_job.h"
#include "pipeswap/pipeline/inputs.h"

namespace pipeswap::launcher {

Job prepare_forward(const Options& o, const World& world, comm::Transport& t, JobUse use) {
  const bool plan_only = use == JobUse::kPlan;
  Job job = open_model(o, world, t, use);
  PS_CHECK(job.arch->kind() == "llm" || (plan_only && o.input.empty()), ConfigError,
           "{} is a {} diffusion transformer: `pipeswap run` takes token ids; use `pipeswap denoise --model {} "
           "--latents FILE --context FILE ...`",
           job.model_dir, job.arch->family(), job.model_dir);

  // Rank 0 reads the input and the checkpoint's headers; in a run every rank learns the shape, so that
  // all ranks build the same plan.
  JobShape shape;
  if (world.rank == 0 && (!plan_only || !o.input.empty())) {
    if (!o.input.empty()) {
      job.input_ids = pipeline::read_token_input(o.input);
    } else {
      PS_CHECK(o.model.empty(), ConfigError, "--input is required with --model (token ids, JSON or safetensors)");
      job.input_ids = demo_input_ids();
    }
    const int64_t vocab = job.arch->vocab_size();
    const int64_t max_id = job.input_ids.max().item<int64_t>();
    PS_CHECK(max_id < vocab, ConfigError, "input token id {} is out of range: the model's vocabulary has {} tokens",
             max_id, vocab);
    pipeline::micro_batch_sizes(job.input_ids.size(0), o.micro_batches);  // validates --micro-batches
    shape.batch = job.input_ids.size(0);
    shape.seq = job.input_ids.size(1);
  }
  if (world.rank == 0) {
    try {
      shape.stored_dtype = stored_dtype(job);
      shape.storage = weight_storage(o, job);
    } catch (const CheckpointError& e) {
      if (!plan_only) throw;
      // A plan needs no weights: a shard not (yet) readable leaves the dtype to config.json.
      log().warn("{}; the plan takes the dtype from config.json", e.what());
    }
  }
  if (!plan_only && world.size > 1) shape = agree_shape(t, shape);
  // The plan sizes one micro-batch: ceil(batch / micro-batches) sequences.
  JobShape micro = shape;
  micro.batch = shape.batch > 0 ? (shape.batch + o.micro_batches - 1) / o.micro_batches : 0;
  job.plan = make_job_plan(o, world, t, job, micro, o.micro_batches, o.repeat);  // --repeat N: N passes read from disk
  return job;
}

int cmd_run(const Options& o, const World& world, std::unique_ptr<comm::Transport>& transport) {
  const auto t_start = Clock::now();
  if (world.rank == 0) {
    pipeline::check_output_path(o.output);
    check_job_files(o, o.model.empty() ? demo_model_dir() : o.model);
  }
  set_threads(o, world);
  Job job = prepare_forward(o, world, *transport, JobUse::kRun);
  const pipeline::RankPlan& me = job.plan.ranks.at(world.rank);
  RankRuntime rt = start_rank(o, world, transport, job);
  comm::Transport& t = *transport;
  const torch::Device device = rt.device;
  offload::BlockWeights* weights = rt.weights.get();

  // --repeat N: the same forward N times (benchmarks time warm passes); the last pass's logits are
  // written, and the summary reports the median pass (the first, cold one only when it is the only one).
  // Each pass's disk reads (lazy_load) beside the plan's figure for that pass, on every rank.
  std::vector<double> passes;
  pipeline::ForwardResult result;
  Progress bar("forward pass", o.repeat, Progress::Unit::kItems);
  const bool streams = job.plan.offload.lazy_load && !me.swapped_blocks().empty();
  for (int k = 0; k < o.repeat; ++k) {
    const int64_t read_before = weights->stats().disk_bytes_read;
    result = pipeline::run_forward(job.plan, world.rank, *job.arch, *weights, t, job.input_ids, device);
    passes.push_back(result.seconds);
    if (world.rank == 0) bar.update(k + 1, fmt::format("{:.6f} s", result.seconds));
    if (streams) {
      log().info("pass {}/{} read {} bytes from disk (plan {})", k + 1, o.repeat,
                 weights->stats().disk_bytes_read - read_before,
                 k == 0 ? me.disk_read_first_pass_bytes : me.disk_read_pass_bytes);
    }
  }
  if (passes.size() > 1) {
    std::vector<double> warm(passes.begin() + 1, passes.end());
    std::sort(warm.begin(), warm.end());
    const size_t n = warm.size();
    result.seconds = n % 2 ? warm[n / 2] : (warm[n / 2 - 1] + warm[n / 2]) / 2;
  }
  rt.trace->finish(t);
  log_memory(me, *weights, device, o.repeat);
  if (world.rank == 0) {
    write_safetensors(o.output, {{"logits", result.logits}}, {{"producer", "pipeswap"}});
  }
  t.barrier();
  if (world.rank == 0) {
    const int64_t tokens = job.input_ids.numel();
    std::string s = fmt::format("pipeswap run: {} ({}), {} blocks on {} rank(s), {} micro-batch(es)\n", job.model_dir,
                                job.plan.family, job.plan.num_blocks, world.size, o.micro_batches);
    s += rank_lines(job.plan);
    s += fmt::format("  tokens {} ({} x {}), forward {:.6f} s{} ({:.0f} tokens/s), total {:.2f} s\n", tokens,
                     job.input_ids.size(0), job.input_ids.size(1), result.seconds,
                     o.repeat > 1 ? fmt::format(" (median of {} warm passes)", o.repeat - 1) : "",
                     tokens / result.seconds, since(t_start));
    s += fmt::format("  logits {} float32 -> {} (to the host in {:.3f} s)\n", fmt::join(result.logits.sizes(), "x"),
                     o.output, result.copy_seconds);
    std::cout << s << std::flush;
  }
  return 0;
}

}  // namespace pipeswap::launcher
