// One rank's stage of a job, the body every schedule (forward, denoise, and generate to come) runs
// for each micro-batch that reaches this rank: enter (the prologue on the first stage, else the
// previous stage's activation), the blocks, leave (the epilogue on the last stage, its output to
// rank 0; else the activation on to the next stage). Schedules only choose the order of the
// (step, micro-batch) pairs and what to do with rank 0's outputs. Every step is traced.
#pragma once

#include <torch/types.h>

#include <functional>

#include "pipeswap/comm/transport.h"
#include "pipeswap/models/architecture.h"
#include "pipeswap/offload/block_weights.h"
#include "pipeswap/pipeline/plan.h"

namespace pipeswap::pipeline {

class Stage {
 public:
  Stage(const Plan& plan, int rank, const models::Architecture& arch, offload::BlockWeights& weights,
        comm::Transport& transport, torch::Device device);

  const RankPlan& me() const { return me_; }
  bool idle() const { return me_.idle(); }
  // Rank 0 is the last stage: it keeps its outputs instead of receiving them.
  bool keeps_outputs() const { return rank_ == 0 && last_ == 0; }

  // The activation that starts this stage's work on (step, micro_batch): the prologue over
  // `inputs()` (called on the first stage only), else the previous stage's activation, on this
  // stage's device.
  models::Activation enter(int step, int micro_batch, const std::function<models::Activation()>& inputs);
  // This stage's blocks on `act`.
  void run_blocks(models::Activation& act);
  // The last stage: the epilogue's output on the compute device (Llama: logits in the compute dtype;
  // Wan: the velocity in float32), nothing waiting for it; sent to rank 0 unless this is rank 0, which
  // gets it back. Other stages: `act` on to the next stage; an undefined tensor back.
  torch::Tensor leave(int step, int micro_batch, const models::Activation& act);
  // enter, run_blocks, leave.
  torch::Tensor pass(int step, int micro_batch, const std::function<models::Activation()>& inputs);
  // The micro-batches `units` of one pass (in this order on every rank), each traced with its
  // (step, micro-batch). With the plan's shared fills (RankPlan::shared_fills) all of them enter, go
  // through the blocks block-outer (one acquire per unit serves them all: a swapped unit is filled once
  // per pass) and leave; else each is a pass of its own. Either way each micro-batch's arithmetic is the
  // same, so outputs are bit-identical. Returns leave()'s result per unit.
  std::vector<torch::Tensor> pass_group(int step, const std::vector<int>& units,
                                        const std::function<models::Activation(int)>& inputs);
  // Sweeps of the block store one pass of `micro_batches` takes: 1 with shared fills, else one each.
  int sweeps_per_pass(int micro_batches) const { return me_.shared_fills ? 1 : micro_batches; }

  // Rank 0: the last stage's output for (step, micro_batch), received from it (on the CPU).
  torch::Tensor output(int step, int micro_batch);

 private:
  const RankPlan& me_;
  const int rank_;
  const int prev_, next_, last_;
  const models::Architecture& arch_;
  offload::BlockWeights& weights_;
  comm::Transport& transport_;
  const torch::Device device_;
  const torch::TensorOptions options_;
};

}  // namespace pipeswap::pipeline
