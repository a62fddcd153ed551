#include "pipeswap/pipeline/forward_job.h"

#include <chrono>

#include "pipeswap/core/error.h"
#include "pipeswap/core/log.h"
#include "pipeswap/core/trace.h"
#include "stage_io.h"

namespace pipeswap::pipeline {
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
      trace::Args tag;
      tag.micro_batch = j;
      trace::Context traced_mb(tag);
      models::Activation act;
      if (me.prologue) {
        torch::Tensor ids = input_ids.narrow(0, row, sizes[j]);
        row += sizes[j];
        act = run_prologue(arch, weights, {ids}, options);
      } else {
        act = receive_activation(transport, prev, 0, j, device);
      }
      run_blocks(arch, weights, me.first_block, me.end_block, act);
      if (me.epilogue) {
        torch::Tensor logits = run_epilogue(arch, weights, act);
        if (rank == 0) {
          outputs[j] = logits;
        } else {
          send_output(transport, 0, j, logits);
        }
      } else {
        send_activation(transport, next, 0, j, act);
      }
      log().debug("micro-batch {} done on blocks {}..{}", j, me.first_block, me.end_block - 1);
    }
  }
  if (rank == 0 && last != 0) {
    for (int j = 0; j < m; ++j) outputs[j] = expect_message(transport, last, comm::MessageKind::kOutput, 0, j).tensors.at(0);
  }
  transport.flush();
  if (rank == 0) result.logits = torch::cat(outputs, 0);
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return result;
}

}  // namespace pipeswap::pipeline
