// What every rank must agree on before a job, as typed values over the collectives of
// pipeline/collective.h (integers, never text to parse back): the device of every rank (each resolves
// its own), free memory where the chain or the VRAM budget asks for it, and the job's shape from
// rank 0. Collective: every rank calls the same ones in the same order.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "pipeswap/comm/transport.h"
#include "pipeswap/pipeline/device_chain.h"
#include "world.h"

namespace pipeswap::launcher {

// What a job opens the model for: a plan (a preview that reads no weights and, run alone, takes the
// chain's devices as written) or a run on every rank.
enum class JobUse { kPlan, kRun };

// The device chain as one entry per rank, agreed by every rank: `chain` as the CLI parsed it (unset:
// every rank on cpu with equal weights); "auto" and auto_vram_balance weigh the ranks by their
// devices' free memory. Throws ConfigError for a chain that does not give one entry per rank, a
// device this node does not have, or two ranks on one GPU of one host.
std::vector<pipeline::ChainEntry> agree_chain(const std::optional<pipeline::DeviceChain>& chain, bool auto_vram_balance,
                                              const World& world, comm::Transport& t, JobUse use);

// Automatic VRAM mode: every rank's device budget in bytes (`vram_budget`: bytes, or "auto" for each
// device's free memory); empty when `vram_budget` is.
std::vector<int64_t> agree_vram_budgets(const std::string& vram_budget, const std::vector<pipeline::ChainEntry>& chain,
                                        const World& world, comm::Transport& t);

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
