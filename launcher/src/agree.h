// What every rank must agree on before a job, as typed values over the collectives of
// pipeline/collective.h (integers, never text to parse back): first the settings every rank must
// share (agree_settings, the first collective of a job), then the device of every rank (each resolves
// its own), free memory where the chain or the VRAM budget asks for it, each rank's own budgets, and
// the job's shape from rank 0. Collective: every rank calls the same ones in the same order.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "options.h"
#include "pipeswap/comm/transport.h"
#include "pipeswap/core/checkpoint.h"
#include "pipeswap/pipeline/device_chain.h"
#include "world.h"

namespace pipeswap::launcher {

// One setting every rank must share: its name in the user's words (the flag), its value as the
// user would write it (shown when ranks differ), and what is compared (the value, or for large
// things such as config.json a digest of their content).
struct SharedSetting {
  std::string name;
  std::string value;
  uint64_t digest = 0;
};
// The settings that must be the same on every rank, in a fixed order: the command, the model's
// config.json and tensor index (by content: the directory may differ per node), the device chain
// with its weights, dtype and weight dtype, micro-batches, the sampler (and for generate the video's
// size, seed and components), the swap and split flags, whether --trace is on. Per-rank ones
// (threads, log level, timeouts, paths, --max-memory, --vram-budget) are not in it; docs/reliability.md
// lists both.
std::vector<SharedSetting> shared_settings(const Options& o, const Checkpoint& ckpt);

// The first collective of a job: every rank's settings compared by digest. On a difference every
// rank throws ConfigError naming the first setting that differs and which ranks hold which value.
void agree_settings(const std::vector<SharedSetting>& mine, comm::Transport& t);

// What a job opens the model for: a plan (a preview that reads no weights and, run alone, takes the
// chain's devices as written) or a run on every rank.
enum class JobUse { kPlan, kRun };

// The device chain as one entry per rank, agreed by every rank: `chain` as the CLI parsed it (unset:
// every rank on cpu with equal weights); "auto" and auto_vram_balance weigh the ranks by their
// devices' free memory. Throws ConfigError for a chain that does not give one entry per rank, a
// device this node does not have, or two ranks on one GPU of one host.
std::vector<pipeline::ChainEntry> agree_chain(const std::optional<pipeline::DeviceChain>& chain, bool auto_vram_balance,
                                              const World& world, comm::Transport& t, JobUse use);

// Each rank's own budgets, learnt by every rank so that all build the same plan: the device budget
// of automatic VRAM mode (--vram-budget: bytes, or flags::kAutoBudget for the device's free memory;
// 0: off) and the host cache budget (--max-memory; 0: unlimited). A preview (plan alone) takes its
// own values for every rank.
struct RankBudgets {
  std::vector<int64_t> vram;        // empty when no rank is in automatic VRAM mode
  std::vector<int64_t> max_memory;  // one per rank
};
RankBudgets agree_budgets(const Options& o, const std::vector<pipeline::ChainEntry>& chain, const World& world,
                          comm::Transport& t, JobUse use);

// The job's shape, known to rank 0 (which reads the inputs and the checkpoint's headers).
struct JobShape {
  int64_t batch = 0;                            // samples (0: unknown, a plan without inputs)
  int64_t seq = 0;                              // tokens per sample
  std::optional<c10::ScalarType> stored_dtype;  // what most of block 0's bytes are stored in
  std::vector<int64_t> storage;                 // fp8 weights: offload::WeightStorage::encode (empty: none)
};
// Rank 0's shape on every rank (`mine` is read on rank 0 only).
JobShape agree_shape(comm::Transport& t, const JobShape& mine);

}  // namespace pipeswap::launcher
