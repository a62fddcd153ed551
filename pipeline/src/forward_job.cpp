#include "pipeswap/pipeline/forward_job.h"

#include <chrono>

#include "pipeswap/core/error.h"
#include "pipeswap/core/log.h"
#include "pipeswap/core/torch_compat.h"
#include "pipeswap/core/trace.h"
#include "stage.h"

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
  Stage stage(plan, rank, arch, weights, transport, device);
  const RankPlan& me = stage.me();
  const int m = plan.micro_batches;
  at::NoGradGuard no_grad;

  std::vector<torch::Tensor> outputs(m);
  // Swapped blocks start streaming in while this stage waits for input.
  weights.expect_sweeps(stage.sweeps_per_pass(m));
  if (!stage.idle()) {
    std::vector<int64_t> rows(m + 1, 0);  // micro-batch j is input rows [rows[j], rows[j + 1])
    if (me.prologue) {
      const std::vector<int64_t> sizes = micro_batch_sizes(input_ids.size(0), m);
      for (int j = 0; j < m; ++j) rows[j + 1] = rows[j] + sizes[j];
    }
    std::vector<int> all(m);
    for (int j = 0; j < m; ++j) all[j] = j;
    outputs = stage.pass_group(0, all, [&](int j) {
      return models::Activation{input_ids.narrow(0, rows[j], rows[j + 1] - rows[j])};
    });
    log().debug("{} micro-batch(es) done on blocks {}..{}", m, me.first_block, me.end_block - 1);
  }
  if (rank == 0 && !stage.keeps_outputs()) {
    for (int j = 0; j < m; ++j) outputs[j] = stage.output(0, j);
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

std::vector<int64_t> micro_batch_sizes(int64_t batch, int m) {
  PS_CHECK(m >= 1, ConfigError, "--micro-batches must be at least 1 (got {})", m);
  PS_CHECK(m <= batch, ConfigError,
           "--micro-batches {} is more than the {} sequence(s) in the input: use at most {} micro-batches", m, batch,
           batch);
  std::vector<int64_t> sizes(m, batch / m);
  for (int64_t i = 0; i < batch % m; ++i) sizes[i] += 1;
  return sizes;
}

}  // namespace pipeswap::pipeline
