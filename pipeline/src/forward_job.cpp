#include "pipeswap/pipeline/forward_job.h"

#include <chrono>

#include "pipeswap/core/error.h"
#include "pipeswap/core/log.h"
#include "pipeswap/core/trace.h"

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

int64_t nbytes(const std::vector<torch::Tensor>& tensors) {
  int64_t n = 0;
  for (const auto& t : tensors) n += t.nbytes();
  return n;
}

// Traced as the time this stage waited for the message (on NCCL ranks: for its header; the
// transfer itself runs on the comm stream).
comm::Message expect(comm::Transport& t, int src, comm::MessageKind kind, int mb) {
  trace::Args what;
  what.peer = src;
  what.micro_batch = mb;
  trace::Range traced(trace::Kind::kRecv, kind == comm::MessageKind::kOutput ? "recv output" : "recv", what);
  comm::Message m = t.recv(src);
  if (trace::enabled()) traced.args().bytes = nbytes(m.tensors);
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
      trace::Args tag;
      tag.micro_batch = j;
      trace::Context traced_mb(tag);
      models::Activation act;
      if (me.prologue) {
        torch::Tensor ids = input_ids.narrow(0, row, sizes[j]);
        row += sizes[j];
        const models::WeightView& w = weights.acquire_prologue();
        {
          trace::DeviceRange traced(trace::Kind::kCompute, "prologue");
          act = arch.prologue(w, {ids}, options);
        }
        weights.release_prologue();
      } else {
        act = to_device(expect(transport, prev, comm::MessageKind::kActivation, j).tensors, device);
      }
      run_blocks(arch, weights, me.first_block, me.end_block, act);
      if (me.epilogue) {
        const models::WeightView& w = weights.acquire_epilogue();
        torch::Tensor logits;
        {
          trace::DeviceRange traced(trace::Kind::kCompute, "epilogue");
          logits = arch.epilogue(w, act);
        }
        logits = logits.to(torch::kCPU).contiguous();
        weights.release_epilogue();
        if (rank == 0) {
          outputs[j] = logits;
        } else {
          trace::Args what;
          what.peer = 0;
          what.bytes = logits.nbytes();
          trace::Range traced(trace::Kind::kSend, "send output", what);
          transport.send(0, comm::Message{comm::MessageKind::kOutput, j, 0, {logits}});
        }
      } else {
        // Traced as the time this stage spent handing the activation over (host copy and enqueue;
        // the transports put it on the wire in the background).
        trace::Args what;
        what.peer = next;
        what.bytes = nbytes(act);
        trace::Range traced(trace::Kind::kSend, "send", what);
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
