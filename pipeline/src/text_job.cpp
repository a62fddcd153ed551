#include "pipeswap/pipeline/text_job.h"

#include <algorithm>
#include <chrono>
#include <deque>
#include <limits>
#include <random>

#include "pipeswap/core/error.h"
#include "pipeswap/core/log.h"
#include "pipeswap/core/torch_compat.h"
#include "pipeswap/core/weights.h"
#include "stage.h"

namespace pipeswap::pipeline {
namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// One micro-batch of a step: `tokens` new tokens for each row; row r writes cache slot slots[r] from position
// starts[r] on.
struct Unit {
  int64_t tokens = 0;
  std::vector<int64_t> slots, starts;
  std::vector<size_t> seqs;    // rank 0: the sequences of the rows
  torch::Tensor ids;           // rank 0: int64 [rows, tokens]
  bool prefill = false;        // rank 0: prompt tokens (else one decode token per row)
  bool samples = true;         // rank 0: the rows' next tokens are sampled from its logits (false: a prompt's
                               // chunk before its last)
  torch::Tensor rows() const {  // int64 [rows, 2]: (slot, start)
    auto t = torch::empty({static_cast<int64_t>(slots.size()), 2}, torch::kInt64);
    auto a = t.accessor<int64_t, 2>();
    for (size_t r = 0; r < slots.size(); ++r) {
      a[static_cast<int64_t>(r)][0] = slots[r];
      a[static_cast<int64_t>(r)][1] = starts[r];
    }
    return t;
  }
};

// The step as rank 0 broadcasts it: [units, then per unit: rows, tokens, (slot, start) per row].
std::vector<int64_t> encode_step(const std::vector<Unit>& units) {
  std::vector<int64_t> v{static_cast<int64_t>(units.size())};
  for (const auto& u : units) {
    v.push_back(static_cast<int64_t>(u.slots.size()));
    v.push_back(u.tokens);
    for (size_t r = 0; r < u.slots.size(); ++r) {
      v.push_back(u.slots[r]);
      v.push_back(u.starts[r]);
    }
  }
  return v;
}

std::vector<Unit> decode_step(const std::vector<int64_t>& v) {
  std::vector<Unit> units(static_cast<size_t>(v.at(0)));
  size_t i = 1;
  for (auto& u : units) {
    const int64_t rows = v.at(i++);
    u.tokens = v.at(i++);
    for (int64_t r = 0; r < rows; ++r) {
      u.slots.push_back(v.at(i++));
      u.starts.push_back(v.at(i++));
    }
  }
  return units;
}

// Per sequence on rank 0.
struct Running {
  int64_t slot = -1;
  int64_t sent = 0;    // prompt tokens sent into the pipeline (chunked prefill: the next chunk starts here)
  int64_t cached = 0;  // tokens in the cache (those whose micro-batch came back)
  bool done = false;
  std::mt19937_64 rng;
};

}  // namespace

int64_t sample_token(const torch::Tensor& logits_in, const std::vector<int64_t>& seen, const SamplingOptions& s,
                     double uniform) {
  torch::Tensor logits = logits_in.to(torch::kFloat32).contiguous().clone();
  if (s.repetition_penalty != 1.0 && !seen.empty()) {
    auto idx = torch::tensor(seen, torch::kInt64);
    auto picked = logits.index_select(0, idx);
    picked = torch::where(picked < 0, picked * s.repetition_penalty, picked / s.repetition_penalty);
    logits.index_put_({idx}, picked);
  }
  if (s.temperature <= 0) return logits.argmax().item<int64_t>();
  logits = logits / s.temperature;
  const float neg_inf = -std::numeric_limits<float>::infinity();
  if (s.top_k > 0 && s.top_k < logits.size(0)) {
    auto kth = std::get<0>(logits.topk(s.top_k)).index({-1});
    logits = logits.masked_fill(logits < kth, neg_inf);
  }
  if (s.top_p < 1.0) {
    // transformers' TopPLogitsWarper: ascending sort, drop the tokens whose cumulative probability stays within
    // 1 - top_p, keep at least the most likely one.
    auto [sorted, order] = logits.sort(0, /*descending=*/false);
    auto cum = sorted.softmax(0).cumsum(0);
    auto remove = cum <= (1.0 - s.top_p);
    remove.index_put_({-1}, false);
    auto mask = torch::empty_like(remove);
    mask.index_put_({order}, remove);
    logits = logits.masked_fill(mask, neg_inf);
  }
  auto probs = logits.softmax(0).to(torch::kFloat64);
  auto p = probs.accessor<double, 1>();
  double acc = 0;
  int64_t last = 0;
  for (int64_t i = 0; i < probs.size(0); ++i) {
    if (p[i] <= 0) continue;
    acc += p[i];
    last = i;
    if (uniform < acc) return i;
  }
  return last;
}

TextJobResult run_text_job(const Plan& plan, int rank, const models::Architecture& arch, offload::BlockWeights& weights,
                           comm::Transport& transport, const std::vector<std::vector<int64_t>>& prompts,
                           const TextJobOptions& o, torch::Device device, const TokenCallback& on_token) {
  const auto t0 = Clock::now();
  TextJobResult result;
  Stage stage(plan, rank, arch, weights, transport, device);
  const RankPlan& me = stage.me();
  at::NoGradGuard no_grad;
  PS_CHECK(o.max_batch >= 1 && o.max_seq_len >= 1, ConfigError, "--max-batch and --max-seq-len must be positive");
  // Two schedules, one for every rank (the plan is the same everywhere):
  //  - cycling (the default): up to --micro-batches micro-batches in flight, each a group of its own; a
  //    micro-batch's next decode step enters the first stage as soon as rank 0 has sampled its tokens, while the
  //    others are still in later stages. A swapped unit is filled once per micro-batch.
  //  - shared fills (the plan's swap order is shared on some rank): one group of up to --micro-batches micro-batches
  //    in flight, run block-outer on every rank, so a swapped unit is filled once per decode step for all of them.
  const int m = std::max(o.micro_batches, 1);
  bool shared = false;
  for (const auto& r : plan.ranks) shared = shared || (r.shared_fills && m > 1);
  const size_t groups_max = shared ? 1 : static_cast<size_t>(m);
  const size_t units_per_group = shared ? static_cast<size_t>(m) : 1;
  const size_t rows_per_unit =
      static_cast<size_t>((o.max_batch + static_cast<int64_t>(m) - 1) / static_cast<int64_t>(m));

  // This rank's part of a group of micro-batches (the group's serial number is their step, their index in it the
  // micro-batch). Only the hidden state travels: every stage has the rows from rank 0's control message.
  auto run_group = [&](const std::vector<Unit>& units, int serial) {
    std::vector<torch::Tensor> outs(units.size());
    if (stage.idle()) return outs;
    const int n = static_cast<int>(units.size());
    auto enter = [&](int u) {
      const Unit& unit = units[static_cast<size_t>(u)];
      const torch::Tensor rows = unit.rows();
      models::Activation act = stage.enter(serial, u, [&] { return models::Activation{unit.ids, rows}; });
      if (!me.prologue) act.push_back(rows);
      return act;
    };
    auto leave = [&](int u, const models::Activation& act) {
      outs[static_cast<size_t>(u)] = stage.leave(serial, u, me.epilogue ? act : models::Activation{act[0]});
    };
    if (!shared || n < 2) {
      weights.expect_sweeps(n);
      for (int u = 0; u < n; ++u) {
        models::Activation act = enter(u);
        stage.run_blocks(act);
        leave(u, act);
      }
      return outs;
    }
    weights.expect_sweeps(1);
    std::vector<models::Activation> acts;
    for (int u = 0; u < n; ++u) acts.push_back(enter(u));
    const int nphases = static_cast<int>(arch.phase_names().size());
    for (int b = me.first_block; b < me.end_block; ++b) {
      for (int p = 0; p < nphases; ++p) {
        const WeightView& w = weights.acquire(b, p);
        for (auto& act : acts) arch.phase_forward(b, p, w, act);
        weights.release(b, p);
      }
    }
    for (int u = 0; u < n; ++u) leave(u, acts[static_cast<size_t>(u)]);
    return outs;
  };

  if (rank != 0) {
    // Follow rank 0: a control message per group (sent before its activations), an empty one at the end.
    for (;;) {
      comm::Message msg = transport.recv(0);
      PS_CHECK(msg.kind == comm::MessageKind::kControl && msg.tensors.size() == 1, CommError,
               "rank 0 sent message kind {} where generation's control message was expected (ranks disagree on the "
               "job: are all ranks running the same pipeswap build and arguments?)",
               static_cast<int>(msg.kind));
      const torch::Tensor c = msg.tensors[0].to(torch::kCPU, torch::kInt64).contiguous();
      const std::vector<int64_t> v(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
      if (v.empty() || v[0] == 0) break;
      const std::vector<Unit> units = decode_step(v);
      run_group(units, msg.step);
      result.steps += static_cast<int>(units.size());
    }
    transport.flush();
    result.total_seconds = since(t0);
    return result;
  }

  std::vector<Running> run(prompts.size());
  std::deque<size_t> waiting, ready;  // prompts without a slot; sequences whose last token awaits decoding
  std::vector<int64_t> free_slots;
  result.sequences.resize(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    result.sequences[i].prompt = prompts[i];
    run[i].rng.seed(o.sampling.seed * 1000003ULL + i);
    waiting.push_back(i);
  }
  for (int64_t s = o.max_batch - 1; s >= 0; --s) free_slots.push_back(s);
  auto finish = [&](size_t i, const char* why) {
    run[i].done = true;
    result.sequences[i].finish_reason = why;
    free_slots.push_back(run[i].slot);
  };
  auto send_control = [&](const std::vector<int64_t>& v, int serial) {
    for (int r = 1; r < transport.world_size(); ++r)
      transport.send(r, comm::Message{comm::MessageKind::kControl, 0, serial, {torch::tensor(v, torch::kInt64)}});
  };

  struct Flight {
    std::vector<Unit> units;
    int serial = 0;
    std::vector<torch::Tensor> outs;
    Clock::time_point launched;
  };
  std::deque<Flight> flight;
  int serial = 0;
  Clock::time_point last_back = t0;
  std::deque<size_t> prefilling;  // sequences with a slot and prompt tokens still to send (chunked prefill)
  bool mid_prefill = false;       // the last micro-batch launched was a chunk with more of its prompt to come
  auto can_launch = [&] { return !prefilling.empty() || (!waiting.empty() && !free_slots.empty()) || !ready.empty(); };
  // The next chunk of sequence i's prompt (all of it without --prefill-chunk).
  auto prefill_unit = [&](size_t i) {
    const auto len = static_cast<int64_t>(prompts[i].size());
    const int64_t from = run[i].sent;
    const int64_t n = o.prefill_chunk > 0 ? std::min(o.prefill_chunk, len - from) : len - from;
    Unit u;
    u.tokens = n;
    u.slots = {run[i].slot};
    u.starts = {from};
    u.seqs = {i};
    u.ids = torch::tensor(std::vector<int64_t>(prompts[i].begin() + from, prompts[i].begin() + from + n), torch::kInt64)
                .unsqueeze(0);
    u.prefill = true;
    run[i].sent = from + n;
    u.samples = run[i].sent == len;
    if (!u.samples) prefilling.push_back(i);
    mid_prefill = !u.samples;
    return u;
  };
  auto decode_unit = [&] {
    Unit u;
    u.tokens = 1;
    std::vector<int64_t> ids;
    while (!ready.empty() && u.seqs.size() < rows_per_unit) {
      const size_t i = ready.front();
      ready.pop_front();
      u.slots.push_back(run[i].slot);
      u.starts.push_back(run[i].cached);
      u.seqs.push_back(i);
      ids.push_back(result.sequences[i].generated.back());
    }
    u.ids = torch::tensor(ids, torch::kInt64).unsqueeze(1);
    mid_prefill = false;
    return u;
  };
  for (;;) {
    if (flight.size() < groups_max && can_launch()) {
      // A prompt being prefilled in chunks first, with a decode step of the ready sequences between two of its
      // chunks; then waiting prompts (one micro-batch each), then the sequences ready to decode, up to a share of
      // the batch.
      Flight f;
      f.serial = serial++;
      f.launched = Clock::now();
      while (f.units.size() < units_per_group && can_launch()) {
        if (mid_prefill && !ready.empty()) {
          f.units.push_back(decode_unit());
        } else if (!prefilling.empty()) {
          const size_t i = prefilling.front();
          prefilling.pop_front();
          f.units.push_back(prefill_unit(i));
        } else if (!waiting.empty() && !free_slots.empty()) {
          const size_t i = waiting.front();
          waiting.pop_front();
          run[i].slot = free_slots.back();
          free_slots.pop_back();
          f.units.push_back(prefill_unit(i));
        } else {
          f.units.push_back(decode_unit());
        }
      }
      for (const Unit& u : f.units) {
        if (u.prefill)
          log().trace("generation micro-batch {}: prefill prompt {} tokens {}..{}{}", f.serial, u.seqs[0], u.starts[0],
                      u.starts[0] + u.tokens - 1, u.samples ? "" : " (a chunk)");
        else
          log().trace("generation micro-batch {}: decode prompts {}", f.serial, fmt::join(u.seqs, ","));
      }
      send_control(encode_step(f.units), f.serial);
      f.outs = run_group(f.units, f.serial);
      flight.push_back(std::move(f));
      continue;
    }
    if (flight.empty()) break;
    Flight f = std::move(flight.front());
    flight.pop_front();
    for (size_t k = 0; k < f.units.size(); ++k) {
      const Unit& unit = f.units[k];
      torch::Tensor logits =
          stage.keeps_outputs() ? f.outs[k] : stage.output(f.serial, static_cast<int>(k));
      logits = logits.to(torch::kCPU, torch::kFloat32);  // [rows, 1, vocab]
      for (size_t r = 0; r < unit.seqs.size() && !unit.samples; ++r) run[unit.seqs[r]].cached += unit.tokens;
      for (size_t r = 0; r < unit.seqs.size() && unit.samples; ++r) {
        const size_t i = unit.seqs[r];
        TextSequence& seq = result.sequences[i];
        run[i].cached += unit.tokens;
        std::vector<int64_t> seen;
        if (o.sampling.repetition_penalty != 1.0) {
          seen = seq.prompt;
          seen.insert(seen.end(), seq.generated.begin(), seq.generated.end());
        }
        const double uniform = std::uniform_real_distribution<double>(0.0, 1.0)(run[i].rng);
        const int64_t token = sample_token(logits[static_cast<int64_t>(r)][0], seen, o.sampling, uniform);
        seq.generated.push_back(token);
        if (seq.generated.size() == 1) seq.first_token_seconds = since(t0);
        const bool stop = on_token ? on_token(i, token) : false;
        if (std::find(o.eos_ids.begin(), o.eos_ids.end(), token) != o.eos_ids.end()) {
          finish(i, "eos");
        } else if (std::find(o.stop_ids.begin(), o.stop_ids.end(), token) != o.stop_ids.end()) {
          finish(i, "stop_token");
        } else if (stop) {
          finish(i, "stop");
        } else if (static_cast<int64_t>(seq.generated.size()) >= o.max_new_tokens) {
          finish(i, "length");
        } else if (run[i].cached + 1 > o.max_seq_len) {
          finish(i, "max_seq_len");
        } else {
          ready.push_back(i);
        }
      }
      // The time since the last micro-batch came back (or this group left, if none was out): consecutive
      // intervals, so micro-batches in flight together are not counted twice.
      const auto now = Clock::now();
      const double seconds = std::chrono::duration<double>(now - std::max(last_back, f.launched)).count();
      last_back = now;
      const int64_t tokens = unit.tokens * static_cast<int64_t>(unit.slots.size());
      (unit.prefill ? result.prefill_seconds : result.decode_seconds) += seconds;
      (unit.prefill ? result.prefill_tokens : result.decode_tokens) += tokens;
      ++result.steps;
    }
  }
  send_control({0}, serial);
  transport.flush();
  result.total_seconds = since(t0);
  log().debug("generation: {} micro-batches, {} prefill and {} decode tokens", result.steps, result.prefill_tokens,
              result.decode_tokens);
  return result;
}

}  // namespace pipeswap::pipeline
