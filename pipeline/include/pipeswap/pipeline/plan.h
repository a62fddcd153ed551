// The plan is data: which rank runs which blocks on which device, and the memory that implies.
// `pipeswap plan` prints it (and writes it as JSON) before anything loads; `run` uses the same
// object. Built identically on every rank from config.json and the resolved device chain; it reads
// no weights.
#pragma once

#include <c10/core/ScalarType.h>
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "pipeswap/models/architecture.h"
#include "pipeswap/offload/residency.h"
#include "pipeswap/pipeline/device_chain.h"

namespace pipeswap::pipeline {

struct RankPlan {
  int rank = 0;
  int group = 0;  // CFG-parallel: the guidance group (branch) this rank runs; 0 otherwise
  DeviceSpec device;
  double weight = 0;
  int first_block = 0;  // [first_block, end_block); empty for idle ranks
  int end_block = 0;
  bool prologue = false;  // first stage: embeddings
  bool epilogue = false;  // last stage: final norm + head
  int64_t weight_bytes = 0;      // every part this rank owns, as it rests (compute dtype; fp8 bytes + scales)
  int64_t activation_bytes = 0;  // one micro-batch's activation (in + out) and the architecture's caches (Wan:
                                 // context K/V per block and branch), when the input shape is known
  int64_t kv_cache_bytes = 0;    // generation: the K/V cache of this rank's blocks (PlanInputs::kv_batch x kv_seq)
  int64_t workspace_bytes = 0;   // transient: a block's, the prologue's or the epilogue's, whichever is largest,
                                 // and on GPUs the libraries' workspaces (cuBLAS, cuDNN)
  // Which blocks stay and which stream in from host memory or disk, decided once for this rank; the
  // rank's block store is built from it (offload::make_block_weights).
  offload::SwapLayout layout;
  // Predicted peaks: device (components + resident slabs + slots + activations), host memory held
  // for swapped units, and bytes read from disk while the job runs (lazy_load).
  int64_t device_bytes = 0;
  int64_t host_bytes = 0;
  int64_t disk_read_bytes = 0;
  // ... per pass (every micro-batch once through the rank's blocks: a forward, a denoising step): the
  // first reads the units the host cache keeps once and the rest, each later one the rest again.
  // `run --repeat` measures the same figures pass by pass.
  int64_t disk_read_first_pass_bytes = 0;
  int64_t disk_read_pass_bytes = 0;
  // The order of this rank's micro-batches through its swapped blocks (offload::SwapOrder): shared fills
  // run a pass's micro-batches block-outer, so each swapped unit is filled once per pass; the cost
  // model's predicted seconds per pass for each order (0 when it has nothing to go on).
  bool shared_fills = false;
  double per_micro_batch_seconds = 0;
  double shared_seconds = 0;
  int64_t fills_per_pass = 0;  // slot fills per pass (a denoising step, a forward) the run should count
  // Predicted seconds of one pass through this rank's blocks in the swap order chosen, its stage's share of
  // the pipeline's fill and drain included (0 when the input shape is unknown).
  double pass_seconds = 0;
  bool idle() const { return end_block <= first_block; }
  int num_blocks() const { return end_block - first_block; }
  // Global indices of the blocks that swap.
  std::vector<int> swapped_blocks() const { return layout.swapped_block_ids(); }
};

struct PlanInputs {
  std::string model_dir;
  std::vector<ChainEntry> chain;  // resolved: one entry per rank
  bool workload_split = true;     // false: every block on the first entry
  c10::ScalarType dtype = c10::ScalarType::Float;
  std::string dtype_source;  // why this dtype ("stored bfloat16 in the safetensors files", "--dtype bf16")
  std::string weight_dtype = "auto";  // --weight-dtype (offload.storage says what it decided)
  int micro_batches = 1;
  int64_t batch = 0;  // sequences per micro-batch (0 when unknown: plan without --input)
  int64_t seq = 0;
  offload::OffloadOptions offload;
  // Automatic VRAM mode: per-rank device budget in bytes (0: off). The plan then picks each rank's
  // swapped blocks, the fewest that fit, and ignores blocks_to_swap / offload_ratio.
  std::vector<int64_t> vram_budget;
  // Each rank's own host cache budget (--max-memory may differ per node; 0: unlimited); empty:
  // offload.max_memory for every rank.
  std::vector<int64_t> max_memory;
  int sweeps = 1;  // passes of each micro-batch through the blocks (disk-read prediction)
  // CFG-parallel: the chain split into this many guidance groups of equal length (G x p stages). Each
  // group holds (or swaps) every block over its p ranks and runs one guidance branch; micro_batches is
  // then per group.
  int guidance_groups = 1;
  // Generation: every rank keeps K/V for kv_batch sequences of kv_seq tokens (0: no cache).
  int64_t kv_batch = 0;
  int64_t kv_seq = 0;
};

// Generation's cost model (`pipeswap plan --max-seq-len N --max-batch B` on a Llama-family checkpoint, and
// generate's plan): what one micro-batch of decode rows (one new token each) costs on a rank, in seconds.
struct DecodeStage {
  int rank = 0;
  double compute = 0;   // the rows' FLOPs (blocks, attention over the context, the head) at the device's rate
  double memory = 0;    // every weight the rank holds and the rows' K/V read once, at its memory bandwidth
  double transfer = 0;  // one fill of the rank's swapped bytes over the link (the disk for streamed units)
};

// A decode step is one new token for each of `batch` sequences, in micro-batches of batch / M rows. Each micro-batch
// reads the rank's weights and its rows' K/V (work = max(compute, memory)). Shared fills (M > 1 with the shared
// swap order): one group of M micro-batches moves from stage to stage whole and each swapped unit is filled once
// per step, so a stage takes max(M x work, transfer) and the step is their sum. Cycling micro-batches: a stage
// takes max(work, transfer) per micro-batch; the busiest stage serves M per step and one micro-batch's round trip
// passes every stage, so the step is max(M x the busiest, the sum over the stages). tokens/s = batch / step.
// `bound` names what sets the step: "compute", "memory bandwidth", "swap transfers" (with the rank), or "pipeline
// latency" (stages wait for one micro-batch's round trip: more --micro-batches keep them busy).
struct GenerationEstimate {
  int64_t batch = 0;    // sequences decoding together (--max-batch)
  int64_t context = 0;  // tokens each attends to, on average (half of --max-seq-len)
  int micro_batches = 1;
  bool shared = false;
  std::vector<DecodeStage> stages;
  double step_seconds = 0;
  double tokens_per_second = 0;
  std::string bound;
  int bound_rank = -1;  // -1: pipeline latency (every stage)
  // One prompt of prompt_tokens (the plan's input length, or a prefill chunk) through every stage.
  int64_t prompt_tokens = 0;
  double prefill_tokens_per_second = 0;
  bool known() const { return step_seconds > 0; }
};
GenerationEstimate estimate_decode(const std::vector<DecodeStage>& stages, int64_t batch, int micro_batches,
                                   bool shared);

struct Plan {
  std::string model_dir;
  std::string family;
  int num_blocks = 0;
  c10::ScalarType dtype = c10::ScalarType::Float;
  std::string dtype_source;
  // How the weights rest: "" when all in the compute dtype, else which are fp8 and how (plan and summary).
  std::string weight_storage;
  int micro_batches = 1;
  offload::OffloadOptions offload;
  std::vector<RankPlan> ranks;
  // CFG-parallel: G groups of group_size() consecutive ranks; group g's first rank is its leader (it holds
  // the latents). 1: every rank is one pipeline.
  int guidance_groups = 1;
  // Predicted seconds of one pass (a denoising step, a forward): the slowest rank's pass_seconds, plus
  // the exchange of the branches' outputs between groups (0 when the input shape is unknown).
  double step_seconds = 0;
  GenerationEstimate generation;  // with a K/V cache (PlanInputs::kv_batch, kv_seq); else unknown

  int group_size() const { return static_cast<int>(ranks.size()) / guidance_groups; }
  int group_of(int rank) const { return rank / group_size(); }
  int leader(int group) const { return group * group_size(); }
  // Ranks of `group` that hold blocks, in pipeline order (its leader first).
  std::vector<int> stages(int group = 0) const;
  int first_stage(int group = 0) const { return stages(group).front(); }
  int last_stage(int group = 0) const { return stages(group).back(); }
  // Previous / next stage of a rank within its group, -1 at the ends.
  int prev_stage(int rank) const;
  int next_stage(int rank) const;

  nlohmann::json to_json() const;
  std::string to_text() const;
};

// The swap order's cost model (offload::SwapOrder::kAuto), per rank: `compute` seconds of one micro-batch
// through the rank's blocks, `transfer` seconds of one sweep of its swapped bytes over the link, M
// micro-batches per pass, p stages. Per micro-batch, each micro-batch refills the slots and stages
// pipeline: (M + p - 1) x max(compute, transfer). Shared, one fill serves all M and a pass's group moves
// from stage to stage whole: p x max(M x compute, transfer). Shared is picked when it is predicted at
// least 2% faster (it also holds M activations at once).
struct SwapOrderChoice {
  bool shared = false;
  double per_micro_batch_seconds = 0;
  double shared_seconds = 0;
};
SwapOrderChoice choose_swap_order(double compute, double transfer, int micro_batches, int stages,
                                  offload::SwapOrder requested);

// Throws ConfigError when the chain does not fit the model (more ranks than blocks, empty chain, a chain
// that does not split into in.guidance_groups groups).
Plan make_plan(const models::Architecture& arch, const PlanInputs& in);

// CFG-parallel (issue 21): the arrangements a job with guidance can take on the chain, G guidance groups x
// p stages (G = 1: every rank one pipeline, both branches as micro-batches; G = 2: the chain's halves run
// the conditional and the unconditional branch), each planned with the same offload options and
// --vram-budget, and its step predicted. `in.micro_batches` counts the micro-batches of both branches (a
// group of G runs 1/G of them). `requested` 0 picks the fastest arrangement that fits (G = 1 on a tie or
// when nothing is predicted); 1 or 2 takes that one, ConfigError when it cannot be (no guidance, a chain
// that does not split, a budget it does not fit).
struct Arrangement {
  int guidance_groups = 1;
  int stages = 0;    // per group
  std::string error;  // non-empty: does not fit (why); plan is then empty
  Plan plan;
};
struct ArrangementChoice {
  std::vector<Arrangement> candidates;  // G = 1 first
  int chosen = 0;                       // index into candidates
  const Plan& plan() const { return candidates.at(static_cast<size_t>(chosen)).plan; }
  std::string to_text() const;  // one line per candidate, the chosen one marked
  std::string to_text_if_compared() const { return candidates.size() > 1 ? to_text() : ""; }
  nlohmann::json to_json() const;
};
ArrangementChoice choose_arrangement(const models::Architecture& arch, const PlanInputs& in, bool guidance,
                                     int requested);

std::string format_bytes(int64_t bytes);

}  // namespace pipeswap::pipeline
