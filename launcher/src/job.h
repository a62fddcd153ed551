// What the commands that run a job share: the model opened and checked, the plan, and each rank's
// device, transport and weights.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "options.h"
#include "pipeswap/comm/transport.h"
#include "pipeswap/core/checkpoint.h"
#include "pipeswap/models/architecture.h"
#include "pipeswap/offload/block_weights.h"
#include "pipeswap/pipeline/job_trace.h"
#include "pipeswap/pipeline/plan.h"
#include "world.h"

namespace pipeswap::launcher {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t);

struct Job {
  std::string model_dir;
  std::shared_ptr<Checkpoint> ckpt;
  std::unique_ptr<models::Architecture> arch;
  std::vector<pipeline::ChainEntry> chain;  // agreed by every rank
  torch::Tensor input_ids;  // run: rank 0 only
  pipeline::Plan plan;
};

// The device chain resolved and agreed, the checkpoint opened and its tensor names checked against
// the architecture. Collective when plan_only is false.
Job open_model(const Options& o, const World& world, comm::Transport& t, bool plan_only);
// The plan for micro-batches of `batch` sequences of `seq` tokens (0: unknown); `sweeps` passes of
// each micro-batch (denoising steps). Collective for automatic VRAM budgets.
pipeline::Plan make_job_plan(const Options& o, const World& world, comm::Transport& t, const Job& job, int64_t batch,
                             int64_t seq, int micro_batches, int sweeps, int stored_dtype);
// What the checkpoint stores (the compute dtype under --dtype auto, the plan's disk-read figures), as an
// int c10::ScalarType for the strings ranks agree on: the dtype of most of block 0's bytes, from the
// safetensors header (rank 0 owns block 0); -1 when unknown.
int stored_dtype_code(const Job& job);
void set_threads(const Options& o, const World& world);

struct RankRuntime {
  torch::Device device{torch::kCPU};
  std::unique_ptr<pipeline::JobTrace> trace;  // --trace (off when the path is empty)
  std::unique_ptr<offload::BlockWeights> weights;
};
// This rank's device made current, the NCCL transport in place when every rank is a GPU, --trace
// started, and its weights loaded; ends with a barrier. Collective.
RankRuntime start_rank(const Options& o, const World& world, std::unique_ptr<comm::Transport>& transport,
                       const Job& job);
// Measured memory beside the plan's prediction (and the CUDA allocator's peak on GPU ranks).
void log_memory(const pipeline::RankPlan& me, const offload::BlockWeights& weights, torch::Device device);

// The summary's line per rank: device, blocks, prologue/epilogue, swapped blocks.
std::string rank_lines(const pipeline::Plan& plan);

int cmd_denoise(const Options& o, const World& world, std::unique_ptr<comm::Transport>& transport);

}  // namespace pipeswap::launcher
