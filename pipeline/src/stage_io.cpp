#include "stage_io.h"

#include "pipeswap/core/error.h"
#include "pipeswap/core/trace.h"

namespace pipeswap::pipeline {
namespace {

int64_t nbytes(const std::vector<torch::Tensor>& tensors) {
  int64_t n = 0;
  for (const auto& t : tensors) n += t.nbytes();
  return n;
}

}  // namespace

comm::Message expect_message(comm::Transport& t, int src, comm::MessageKind kind, int step, int micro_batch) {
  trace::Args what;
  what.peer = src;
  what.micro_batch = micro_batch;
  trace::Range traced(trace::Kind::kRecv, kind == comm::MessageKind::kOutput ? "recv output" : "recv", what);
  comm::Message m = t.recv(src);
  if (trace::enabled()) traced.args().bytes = nbytes(m.tensors);
  PS_CHECK(m.kind == kind && m.micro_batch == micro_batch && m.step == step, CommError,
           "rank {} sent message kind {} for step {} micro-batch {} where kind {} for step {} micro-batch {} was "
           "expected (ranks disagree on the plan: are all ranks running the same pipeswap build and arguments?)",
           src, static_cast<int>(m.kind), m.step, m.micro_batch, static_cast<int>(kind), step, micro_batch);
  return m;
}

models::Activation receive_activation(comm::Transport& t, int src, int step, int micro_batch, torch::Device device) {
  models::Activation act = expect_message(t, src, comm::MessageKind::kActivation, step, micro_batch).tensors;
  for (auto& a : act) a = a.to(device);
  return act;
}

void send_activation(comm::Transport& t, int dst, int step, int micro_batch, const models::Activation& act) {
  trace::Args what;
  what.peer = dst;
  what.bytes = nbytes(act);
  trace::Range traced(trace::Kind::kSend, "send", what);
  std::vector<torch::Tensor> tensors = act;
  if (!t.device_native()) {
    for (auto& a : tensors) a = a.to(torch::kCPU).contiguous();
  }
  t.send(dst, comm::Message{comm::MessageKind::kActivation, micro_batch, step, std::move(tensors)});
}

void send_output(comm::Transport& t, int step, int micro_batch, const torch::Tensor& output) {
  trace::Args what;
  what.peer = 0;
  what.bytes = output.nbytes();
  trace::Range traced(trace::Kind::kSend, "send output", what);
  t.send(0, comm::Message{comm::MessageKind::kOutput, micro_batch, step,
                          {t.device_native() ? output : output.to(torch::kCPU).contiguous()}});
}

models::Activation run_prologue(const models::Architecture& arch, offload::BlockWeights& weights,
                                const models::Activation& inputs, const torch::TensorOptions& options) {
  const models::WeightView& w = weights.acquire_prologue();
  models::Activation act;
  {
    trace::DeviceRange traced(trace::Kind::kCompute, "prologue");
    act = arch.prologue(w, inputs, options);
  }
  weights.release_prologue();
  return act;
}

torch::Tensor run_epilogue(const models::Architecture& arch, offload::BlockWeights& weights,
                           const models::Activation& act) {
  const models::WeightView& w = weights.acquire_epilogue();
  torch::Tensor out;
  {
    trace::DeviceRange traced(trace::Kind::kCompute, "epilogue");
    out = arch.epilogue(w, act);
  }
  weights.release_epilogue();
  return out;
}

}  // namespace pipeswap::pipeline
