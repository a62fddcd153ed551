// The forward job: token batches split into micro-batches flow through the stages; the last
// stage's logits come back to rank 0.
//
// Schedule (forward only, GPipe fill): stage k takes micro-batch j from stage k-1, runs its blocks
// and hands it on with a non-blocking send, so while stage k+1 works on j, stage k already works on
// j+1. The last stage sends each micro-batch's logits to rank 0 as soon as they exist; rank 0 takes
// them after its own micro-batches are sent, so no stage ever waits on rank 0's bookkeeping.
#pragma once

#include <torch/types.h>

#include "pipeswap/comm/transport.h"
#include "pipeswap/models/architecture.h"
#include "pipeswap/offload/block_weights.h"
#include "pipeswap/pipeline/plan.h"

namespace pipeswap::pipeline {

struct ForwardResult {
  torch::Tensor logits;  // rank 0 only: float32 [B, T, vocab] on the CPU
  double seconds = 0;    // this rank's wall time in the job, to the logits on rank 0's device
  double copy_seconds = 0;  // rank 0: the logits to float32 on the host after that
};

// Runs this rank's stage over `input_ids` (rank 0: CPU int64 [B, T]; others: ignored).
ForwardResult run_forward(const Plan& plan, int rank, const models::Architecture& arch, offload::BlockWeights& weights,
                          comm::Transport& transport, const torch::Tensor& input_ids, torch::Device device);

// Rows of each micro-batch: B split into m contiguous chunks whose sizes differ by at most one.
std::vector<int64_t> micro_batch_sizes(int64_t batch, int m);

// Runs blocks [first, end) of a stage on one activation.
void run_blocks(const models::Architecture& arch, offload::BlockWeights& weights, int first, int end,
                models::Activation& act);

}  // namespace pipeswap::pipeline
