#include "pipeswap/pipeline/forward_job.h"

#include <chrono>

#include "pipeswap/core/error.h"
#include "pipeswap/core/log.h"
#include "pipeswap/core/torch_compat.h"
#include "pipeswap/core/trace.h"
#include "stage_io.h"

namespace pipeswap::pipeline {
namespace {

// Logits as the output file holds them: float32 on the CPU (from GPUs through page-locked memory).
torch::Tensor to_host_float(const torch::Tensor& t) {
  if (!t.is_cuda()) return t.to(torch::kFloat32);
  const auto f = t.to(torch::kFloat32);
  auto host = torch::empty(f.sizes(), f.options().device(torch::kCPU).pinned_memory(true));
  host.copy_(f);
  return host;
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
  // The forward's time ends when the logits are on rank 0's device (as transformers' is timed); the
  // float32 copy to the host that the output file needs is counted apart.
  if (rank == 0) compat::synchronize_device(device);
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (rank == 0) {
    const auto t1 = std::chrono::steady_clock::now();
    for (auto& o : outputs) o = to_host_float(o);
    result.logits = torch::cat(outputs, 0);
    result.copy_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
  }
  return result;
}

}  // namespace pipeswap::pipeline
