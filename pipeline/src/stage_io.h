// What a stage does with messages, shared by the forward and denoise jobs: receive and check the
// expected one, hand an activation or an output on, and run the prologue and epilogue; each traced.
#pragma once

#include <torch/types.h>

#include "pipeswap/comm/transport.h"
#include "pipeswap/models/architecture.h"
#include "pipeswap/offload/block_weights.h"

namespace pipeswap::pipeline {

// Receives from `src` and checks it is the message of `kind` for (step, micro-batch); CommError
// otherwise (ranks that disagree on the plan). Traced as the wait (on NCCL ranks: for the header;
// the transfer itself runs on the comm stream).
comm::Message expect_message(comm::Transport& t, int src, comm::MessageKind kind, int step, int micro_batch);
// An activation from the previous stage, on this stage's device.
models::Activation receive_activation(comm::Transport& t, int src, int step, int micro_batch, torch::Device device);
// Hands an activation to the next stage (over the host unless the transport is device-native).
// Traced as the time this stage spent handing it over; the transports put it on the wire behind.
void send_activation(comm::Transport& t, int dst, int step, int micro_batch, const models::Activation& act);
// The last stage's output to rank 0 (a CPU tensor).
void send_output(comm::Transport& t, int step, int micro_batch, const torch::Tensor& output);

// The prologue and epilogue with their weights acquired and released around them, traced as compute.
models::Activation run_prologue(const models::Architecture& arch, offload::BlockWeights& weights,
                                const models::Activation& inputs, const torch::TensorOptions& options);
// The epilogue's output, on the compute device (Llama: logits in the compute dtype; Wan: the velocity in
// float32). Nothing waits for it here.
torch::Tensor run_epilogue(const models::Architecture& arch, offload::BlockWeights& weights,
                           const models::Activation& act);

}  // namespace pipeswap::pipeline
