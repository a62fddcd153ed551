#include "pipeswap/pipeline/plan.h"

#include <c10/util/typeid.h>

#include <set>

#include "pipeswap/core/error.h"

namespace pipeswap::pipeline {

int64_t part_bytes(const models::PartSpec& part, c10::ScalarType dtype) {
  int64_t bytes = 0;
  for (const auto& t : part.tensors) {
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    bytes += n * static_cast<int64_t>(c10::elementSize(dtype));
  }
  return bytes;
}

std::string format_bytes(int64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  return u == 0 ? fmt::format("{} B", bytes) : fmt::format("{:.1f} {}", v, units[u]);
}

std::vector<int> Plan::stages() const {
  std::vector<int> s;
  for (const auto& r : ranks)
    if (!r.idle()) s.push_back(r.rank);
  return s;
}

int Plan::prev_stage(int rank) const {
  auto s = stages();
  for (size_t i = 1; i < s.size(); ++i)
    if (s[i] == rank) return s[i - 1];
  return -1;
}

int Plan::next_stage(int rank) const {
  auto s = stages();
  for (size_t i = 0; i + 1 < s.size(); ++i)
    if (s[i] == rank) return s[i + 1];
  return -1;
}

Plan make_plan(const models::Architecture& arch, const PlanInputs& in) {
  PS_CHECK(!in.chain.empty(), ConfigError,
           "Model is None or device_chain is empty: give --model DIR and a --device-chain with one entry per rank");
  Plan plan;
  plan.model_dir = in.model_dir;
  plan.family = arch.family();
  plan.num_blocks = arch.num_blocks();
  plan.dtype = in.dtype;
  plan.micro_batches = in.micro_batches;

  const int p = static_cast<int>(in.chain.size());
  std::vector<int> counts(p, 0);
  if (in.workload_split) {
    std::vector<double> weights;
    for (const auto& e : in.chain) weights.push_back(e.weight);
    counts = partition_blocks(plan.num_blocks, weights);
  } else {
    counts[0] = plan.num_blocks;  // workload_split=false: the first device runs everything
  }

  // Bytes of every prologue / epilogue tensor, counted once per rank even when shared (tied
  // embeddings on a single rank).
  auto component_bytes = [&](const std::vector<models::PartSpec>& parts, std::set<std::string>& seen) {
    int64_t bytes = 0;
    for (const auto& part : parts) {
      for (const auto& t : part.tensors) {
        if (!seen.insert(t.checkpoint).second) continue;
        bytes += part_bytes(models::PartSpec{part.name, {t}}, in.dtype);
      }
    }
    return bytes;
  };

  int start = 0;
  int last_busy = 0;
  for (int r = 0; r < p; ++r)
    if (counts[r] > 0) last_busy = r;
  const int64_t act = (in.batch > 0 && in.seq > 0) ? arch.activation_bytes(in.batch, in.seq, in.dtype) : 0;
  for (int r = 0; r < p; ++r) {
    RankPlan rp;
    rp.rank = r;
    rp.device = in.chain[r].device;
    rp.weight = in.chain[r].weight;
    rp.first_block = start;
    rp.end_block = start + counts[r];
    start = rp.end_block;
    rp.prologue = (r == 0);
    rp.epilogue = (r == last_busy);
    std::set<std::string> seen;
    if (rp.prologue) rp.weight_bytes += component_bytes(arch.prologue_parts(), seen);
    for (int b = rp.first_block; b < rp.end_block; ++b)
      for (const auto& part : models::block_parts(arch, b)) rp.weight_bytes += part_bytes(part, in.dtype);
    if (rp.epilogue) rp.weight_bytes += component_bytes(arch.epilogue_parts(), seen);
    if (!rp.idle()) rp.activation_bytes = 2 * act;
    plan.ranks.push_back(rp);
  }
  return plan;
}

nlohmann::json Plan::to_json() const {
  nlohmann::json j;
  j["model"] = model_dir;
  j["family"] = family;
  j["num_blocks"] = num_blocks;
  j["dtype"] = c10::toString(dtype);
  j["micro_batches"] = micro_batches;
  j["ranks"] = nlohmann::json::array();
  for (const auto& r : ranks) {
    nlohmann::json jr;
    jr["rank"] = r.rank;
    jr["device"] = r.device.str();
    jr["weight"] = r.weight;
    jr["blocks"] = {r.first_block, r.end_block};
    jr["num_blocks"] = r.num_blocks();
    jr["prologue"] = r.prologue;
    jr["epilogue"] = r.epilogue;
    jr["idle"] = r.idle();
    jr["weight_bytes"] = r.weight_bytes;
    jr["activation_bytes"] = r.activation_bytes;
    j["ranks"].push_back(jr);
  }
  return j;
}

std::string Plan::to_text() const {
  std::string s = fmt::format("plan: {} ({}), {} blocks, {}, {} micro-batch(es), {} rank(s)\n", model_dir, family,
                              num_blocks, c10::toString(dtype), micro_batches, ranks.size());
  s += fmt::format("  {:>4}  {:<8} {:>7}  {:<13} {:<20} {:>10}\n", "rank", "device", "weight", "blocks", "components",
                   "weights");
  for (const auto& r : ranks) {
    std::string comps;
    if (r.prologue) comps += "prologue";
    if (r.epilogue) comps += comps.empty() ? "epilogue" : "+epilogue";
    if (comps.empty()) comps = "-";
    std::string blocks = r.idle() ? "idle" : fmt::format("{}..{} ({})", r.first_block, r.end_block - 1, r.num_blocks());
    s += fmt::format("  {:>4}  {:<8} {:>7.4g}  {:<13} {:<20} {:>10}\n", r.rank, r.device.str(), r.weight, blocks, comps,
                     format_bytes(r.weight_bytes));
  }
  return s;
}

}  // namespace pipeswap::pipeline
