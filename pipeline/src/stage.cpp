#include "stage.h"

#include "pipeswap/core/error.h"
#include "pipeswap/core/trace.h"
#include "pipeswap/pipeline/forward_job.h"

namespace pipeswap::pipeline {
namespace {

// Receives from `src` and checks it is the message of `kind` for (step, micro-batch); CommError
// otherwise (ranks that disagree on the plan). Traced as the wait (on NCCL ranks: for the header;
// the transfer itself runs on the comm stream).
comm::Message expect_message(comm::Transport& t, int src, comm::MessageKind kind, int step, int micro_batch,
                             torch::Device device) {
  trace::Args what;
  what.peer = src;
  what.micro_batch = micro_batch;
  trace::Range traced(trace::Kind::kRecv, kind == comm::MessageKind::kOutput ? "recv output" : "recv", what);
  comm::Message m = t.recv(src, device);
  if (trace::enabled()) traced.args().bytes = total_nbytes(m.tensors);
  PS_CHECK(m.kind == kind && m.micro_batch == micro_batch && m.step == step, CommError,
           "rank {} sent message kind {} for step {} micro-batch {} where kind {} for step {} micro-batch {} was "
           "expected (ranks disagree on the plan: are all ranks running the same pipeswap build and arguments?)",
           src, static_cast<int>(m.kind), m.step, m.micro_batch, static_cast<int>(kind), step, micro_batch);
  return m;
}

// Traced as the time this stage spent handing a message over; the transports put it on the wire behind.
void send_traced(comm::Transport& t, int dst, comm::Message msg, const char* name) {
  trace::Args what;
  what.peer = dst;
  what.bytes = total_nbytes(msg.tensors);
  trace::Range traced(trace::Kind::kSend, name, what);
  t.send(dst, std::move(msg));
}

}  // namespace

void run_blocks(const models::Architecture& arch, offload::BlockWeights& weights, int first, int end,
                models::Activation& act) {
  const std::vector<std::string> phases = arch.phase_names();
  const int nphases = static_cast<int>(phases.size());
  for (int b = first; b < end; ++b) {
    for (int p = 0; p < nphases; ++p) {
      const WeightView& w = weights.acquire(b, p);
      {
        trace::Args what;
        what.block = b;
        what.phase = p;
        trace::DeviceRange traced(trace::Kind::kCompute, phases[static_cast<size_t>(p)], what);
        arch.phase_forward(b, p, w, act);
      }
      weights.release(b, p);
    }
  }
}

Stage::Stage(const Plan& plan, int rank, const models::Architecture& arch, offload::BlockWeights& weights,
             comm::Transport& transport, torch::Device device)
    : me_(plan.ranks.at(rank)),
      rank_(rank),
      prev_(plan.prev_stage(rank)),
      next_(plan.next_stage(rank)),
      last_(plan.last_stage()),
      arch_(arch),
      weights_(weights),
      transport_(transport),
      device_(device),
      options_(torch::TensorOptions().dtype(plan.dtype).device(device)) {}

models::Activation Stage::enter(int step, int micro_batch, const std::function<models::Activation()>& inputs) {
  if (!me_.prologue) {
    return expect_message(transport_, prev_, comm::MessageKind::kActivation, step, micro_batch, device_).tensors;
  }
  const models::Activation in = inputs();
  const WeightView& w = weights_.acquire_prologue();
  models::Activation act;
  {
    trace::DeviceRange traced(trace::Kind::kCompute, "prologue");
    act = arch_.prologue(w, in, options_);
  }
  weights_.release_prologue();
  return act;
}

void Stage::run_blocks(models::Activation& act) {
  pipeline::run_blocks(arch_, weights_, me_.first_block, me_.end_block, act);
}

torch::Tensor Stage::leave(int step, int micro_batch, const models::Activation& act) {
  if (!me_.epilogue) {
    send_traced(transport_, next_, comm::Message{comm::MessageKind::kActivation, micro_batch, step, act}, "send");
    return {};
  }
  const WeightView& w = weights_.acquire_epilogue();
  torch::Tensor out;
  {
    trace::DeviceRange traced(trace::Kind::kCompute, "epilogue");
    out = arch_.epilogue(w, act);
  }
  weights_.release_epilogue();
  if (rank_ == 0) return out;
  send_traced(transport_, 0, comm::Message{comm::MessageKind::kOutput, micro_batch, step, {out}}, "send output");
  return {};
}

torch::Tensor Stage::pass(int step, int micro_batch, const std::function<models::Activation()>& inputs) {
  models::Activation act = enter(step, micro_batch, inputs);
  run_blocks(act);
  return leave(step, micro_batch, act);
}

std::vector<torch::Tensor> Stage::pass_group(int step, const std::vector<int>& units,
                                             const std::function<models::Activation(int)>& inputs) {
  auto tagged = [&](int u) {
    trace::Args tag;
    tag.micro_batch = u;
    tag.step = step;
    return tag;
  };
  std::vector<torch::Tensor> outs;
  if (!me_.shared_fills || units.size() < 2) {
    for (int u : units) {
      trace::Context traced(tagged(u));
      outs.push_back(pass(step, u, [&] { return inputs(u); }));
    }
    return outs;
  }
  std::vector<models::Activation> acts;
  for (int u : units) {
    trace::Context traced(tagged(u));
    acts.push_back(enter(step, u, [&] { return inputs(u); }));
  }
  const std::vector<std::string> phases = arch_.phase_names();
  const int nphases = static_cast<int>(phases.size());
  for (int b = me_.first_block; b < me_.end_block; ++b) {
    for (int p = 0; p < nphases; ++p) {
      const WeightView& w = weights_.acquire(b, p);
      for (size_t i = 0; i < units.size(); ++i) {
        trace::Context traced(tagged(units[i]));
        trace::Args what;
        what.block = b;
        what.phase = p;
        trace::DeviceRange timed(trace::Kind::kCompute, phases[static_cast<size_t>(p)], what);
        arch_.phase_forward(b, p, w, acts[i]);
      }
      weights_.release(b, p);
    }
  }
  for (size_t i = 0; i < units.size(); ++i) {
    trace::Context traced(tagged(units[i]));
    outs.push_back(leave(step, units[i], acts[i]));
  }
  return outs;
}

torch::Tensor Stage::output(int step, int micro_batch) {
  return expect_message(transport_, last_, comm::MessageKind::kOutput, step, micro_batch, torch::kCPU).tensors.at(0);
}

}  // namespace pipeswap::pipeline
