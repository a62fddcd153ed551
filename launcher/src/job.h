// What the commands that run a job share (launcher/src/run.cpp, plan.cpp, denoise.cpp): the model
// opened and checked, the plan and its inputs (plan_inputs.cpp), and each rank's device, transport
// and weights (rank.cpp).
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "agree.h"
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
  JobUse use = JobUse::kRun;
  std::string model_dir;
  std::shared_ptr<Checkpoint> ckpt;
  std::unique_ptr<models::Architecture> arch;
  std::vector<pipeline::ChainEntry> chain;  // agreed by every rank
  torch::Tensor input_ids;  // run: rank 0 only
  pipeline::Plan plan;
};

// ----- plan_inputs.cpp

// The device chain agreed, the checkpoint opened and its tensor names checked against the
// architecture. Collective for JobUse::kRun.
Job open_model(const Options& o, const World& world, comm::Transport& t, JobUse use);
// What most of block 0's bytes are stored in (the compute dtype under --dtype auto, the plan's
// disk-read figures), from the safetensors headers (rank 0 owns block 0); unset when unknown.
std::optional<c10::ScalarType> stored_dtype(const Job& job);
// How the weights rest (fp8 or not, offload::WeightStorage::encode), from the headers of block 0 and the
// non-block parts, and --weight-dtype (rank 0; a header read). Throws CheckpointError for fp8 variants
// pipeswap cannot handle.
std::vector<int64_t> weight_storage(const Options& o, const Job& job);
// The plan for micro-batches of shape.batch samples of shape.seq tokens (0: unknown); `sweeps` passes
// of each micro-batch (denoising steps). Collective for automatic VRAM budgets of "auto".
// `guidance`: a denoising job with both guidance branches; micro_batches then counts both, and
// --cfg-parallel picks the arrangement (pipeline::choose_arrangement; `choice` receives every candidate).
pipeline::Plan make_job_plan(const Options& o, const World& world, comm::Transport& t, const Job& job,
                             const JobShape& shape, int micro_batches, int sweeps, bool guidance = false,
                             pipeline::ArrangementChoice* choice = nullptr);

// ----- guard.cpp

// The plan guards the machine: each rank's predicted host and device bytes for this job (weights,
// activations, workspace, slots, host-kept blocks; rank 0 also `io_bytes`, the inputs it read and the
// output it gathers) against what its machine has (MemAvailable, its cgroup's limit, ulimit -v, the
// GPU's free memory; ranks of one host share its memory). Over it, every rank throws ConfigError naming
// the first rank over, the plan's numbers and what to change; with --force rank 0 warns instead.
// Collective; called before any weight loads.
void check_machine_memory(const Options& o, const World& world, comm::Transport& t, const Job& job, int64_t io_bytes);

// ----- run.cpp

// `pipeswap run` and `plan`: the model opened, rank 0's token input read and checked, the shape
// agreed (kRun) and the plan made.
Job prepare_forward(const Options& o, const World& world, comm::Transport& t, JobUse use);

// ----- rank.cpp

void set_threads(const Options& o, const World& world);

struct RankRuntime {
  torch::Device device{torch::kCPU};
  std::unique_ptr<pipeline::JobTrace> trace;  // --trace (off when the path is empty)
  std::unique_ptr<offload::BlockWeights> weights;
};
// This rank's device made current, the NCCL transport in place when every rank is a GPU, --trace
// started, and its weights loaded as its plan's layout says; ends with a barrier. Collective.
RankRuntime start_rank(const Options& o, const World& world, std::unique_ptr<comm::Transport>& transport,
                       const Job& job);
// Measured memory beside the plan's prediction (and the CUDA allocator's peak on GPU ranks).
// `passes`: forward passes or denoising steps the job ran (slot fills are reported per pass).
void log_memory(const pipeline::RankPlan& me, const offload::BlockWeights& weights, torch::Device device,
                int passes);

// The summary's line per rank: device, blocks, prologue/epilogue, swapped blocks.
std::string rank_lines(const pipeline::Plan& plan);
// The summary's warning for an output tensor holding NaN or infinite values, counted (also logged as a
// warning); "" when every value is finite.
std::string nonfinite_line(const std::string& name, const torch::Tensor& t);

// ----- the commands, one file each: the process exit code; throw on error.

int cmd_run(const Options& o, const World& world, std::unique_ptr<comm::Transport>& transport);
int cmd_plan(const Options& o, const World& world, comm::Transport& t);
int cmd_denoise(const Options& o, const World& world, std::unique_ptr<comm::Transport>& transport);
// generate.cpp: `generate` picks by --model's architecture: text (Llama family) or video (a Wan repo).
int cmd_generate(const Options& o, const World& world, std::unique_ptr<comm::Transport>& transport);
int cmd_generate_video(const Options& o, const World& world, std::unique_ptr<comm::Transport>& transport);
// generate_text.cpp: `generate` for Llama-family checkpoints.
int cmd_generate_text(const Options& o, const World& world, std::unique_ptr<comm::Transport>& transport);
// config.json's model_type when `model_dir` holds a Llama-family checkpoint (llama, qwen2, mistral: text
// generation); "" for anything else (a Wan repo, a DiT, no config.json).
std::string text_model_type(const std::string& model_dir);

}  // namespace pipeswap::launcher
