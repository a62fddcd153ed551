#include "pipeswap/pipeline/forward_job.h"

#include <chrono>

#include "pipeswap/core/error.h"
#include "pipeswap/core/log.h"

namespace pipeswap::pipeline {
namespace {

models::Activation to_device(std::vector<torch::Tensor> tensors, torch::Device device) {
  for (auto& t : tensors) t = t.to(device);
  return tensors;
}

std::vector<torch::Tensor> to_host(const models::Activation& act) {
  std::vector<torch::Tensor> out;
  for (const auto& t : act) out.push_back(t.to(torch::kCPU).contiguous());
  return out;
}

comm::Message expect(comm::Transport& t, int src, comm::MessageKind kind, int mb) {
  comm::Message m = t.recv(src);
  PS_CHECK(m.kind == kind && m.micro_batch == mb, CommError,
           "rank {} sent message kind {} for micro-batch {} where kind {} for micro-batch {} was expected "
           "(ranks disagree on the plan: are all ranks running the same pipeswap build and arguments?)",
           src, static_cast<int>(m.kind), m.micro_batch, static_cast<int>(kind), mb);
  return m;
}

}  // namespace

ForwardResult run_forward(const Plan& plan, int rank, const models::Architecture& arch, offload::BlockWeights& weights,
                          comm::Transport& transport, const torch::Tensor& input_ids, torch::Device device) {
  const auto t0 = std::chrono::steady_clock::now();
  ForwardResult result;
  const RankPlan& me = plan.ranks.at(rank);
  const int m = plan.micro_batches;
  const int prev = plan.prev_stage(rank);
  const int next = plan.next_stage(rank);
  const int last = plan.last_stage();
  const auto options = torch::TensorOptions().dtype(plan.dtype).device(device);
  at::NoGradGuard no_grad;

  std::vector<torch::Tensor> outputs(m);
  weights.expect_sweeps(m);  // swapped blocks start streaming in while this stage waits for input
  if (!me.idle()) {
    std::vector<int64_t> sizes;
    if (me.prologue) sizes = micro_batch_sizes(input_ids.size(0), m);
    int64_t row = 0;
    for (int j = 0; j < m; ++j) {
      models::Activation act;
      if (me.prologue) {
        torch::Tensor ids = input_ids.narrow(0, row, sizes[j]);
        row += sizes[j];
        act = arch.prologue(weights.acquire_prologue(), {ids}, options);
        weights.release_prologue();
      } else {
        act = to_device(expect(transport, prev, comm::MessageKind::kActivation, j).tensors, device);
      }
      run_blocks(arch, weights, me.first_block, me.end_block, act);
      if (me.epilogue) {
        torch::Tensor logits = arch.epilogue(weights.acquire_epilogue(), act).to(torch::kCPU).contiguous();
        weights.release_epilogue();
        if (rank == 0) {
          outputs[j] = logits;
        } else {
          transport.send(0, comm::Message{comm::MessageKind::kOutput, j, 0, {logits}});
        }
      } else {
        transport.send(next, comm::Message{comm::MessageKind::kActivation, j, 0,
                                           transport.device_native() ? act : to_host(act)});
      }
      log().debug("micro-batch {} done on blocks {}..{}", j, me.first_block, me.end_block - 1);
    }
  }
  if (rank == 0 && last != 0) {
    for (int j = 0; j < m; ++j) outputs[j] = expect(transport, last, comm::MessageKind::kOutput, j).tensors.at(0);
  }
  transport.flush();
  if (rank == 0) result.logits = torch::cat(outputs, 0);
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return result;
}

}  // namespace pipeswap::pipeline
