#include "notices.h"

#include <algorithm>

#include "pipeswap/core/cuda_info.h"
#include "pipeswap/core/log.h"

namespace pipeswap::launcher {
namespace {

// The flag that made blocks swap, in the user's words.
std::string swap_flag(const Options& o) {
  if (o.vram_budget != 0) return "--vram-budget " + o.vram_budget_text;
  if (o.offload_ratio >= 0) return fmt::format("--offload-ratio {}", o.offload_ratio);
  return fmt::format("--blocks-to-swap {}", o.blocks_to_swap);
}

}  // namespace

bool balances_anything(const std::vector<pipeline::ChainEntry>& chain) {
  return std::any_of(chain.begin(), chain.end(), [](const pipeline::ChainEntry& e) { return e.device.is_cuda(); });
}

void warn_idle_settings(const Options& o, const pipeline::Plan& plan) {
  std::vector<int> swapping, cpu_swapping, cache_empty;
  for (const pipeline::RankPlan& r : plan.ranks) {
    if (r.swapped_blocks().empty()) continue;
    swapping.push_back(r.rank);
    if (!r.device.is_cuda()) cpu_swapping.push_back(r.rank);
    if (r.layout.sticky_bytes == 0) cache_empty.push_back(r.rank);
  }
  if (o.max_memory != 0 && !o.lazy_load) {
    log().warn(
        "--max-memory {} does nothing without --lazy-load: swapped blocks are all kept in host memory; add "
        "--lazy-load to read them from disk through a host cache of that size",
        o.max_memory_text);
  }
  if (o.lazy_load && swapping.empty()) {
    log().warn(
        "--lazy-load does nothing: no block swaps; give --blocks-to-swap N or --offload-ratio F to stream blocks "
        "from disk");
  }
  if (o.lazy_load && o.max_memory != 0 && !swapping.empty() && cache_empty.size() == swapping.size()) {
    const pipeline::RankPlan& r = plan.ranks.at(static_cast<size_t>(swapping.front()));
    int64_t smallest = 0;
    for (const auto& u : r.layout.units)
      if (u.swapped && (smallest == 0 || u.bytes < smallest)) smallest = u.bytes;
    log().warn(
        "--max-memory {} holds none of the swapped blocks (the smallest swapped unit is {}): every one is read from "
        "disk on every pass",
        o.max_memory_text, pipeline::format_bytes(smallest));
  }
  const bool any_gpu = std::any_of(plan.ranks.begin(), plan.ranks.end(),
                                   [](const pipeline::RankPlan& r) { return r.device.is_cuda(); });
  if (o.auto_vram_balance && !any_gpu) {
    log().warn(
        "--auto-vram-balance does nothing on CPU ranks: it weighs GPUs by their free memory; the chain's own "
        "weights split the blocks");
  }
  if (!cpu_swapping.empty() && !o.lazy_load) {
    log().warn(
        "{} saves no memory on CPU rank(s) {}: a CPU rank computes from host memory, where its swapped blocks are "
        "kept as well; add --lazy-load --max-memory SIZE to read them from disk instead",
        swap_flag(o), fmt::join(cpu_swapping, ", "));
  }
}

void warn_idle_generate_flags(const Options& o, bool text, const std::string& architecture) {
  const std::string idle_group = text ? kVideoGroup : kTextGroup;
  std::vector<std::string> idle;
  for (const auto& g : o.given)
    if (g.group == idle_group) idle.push_back(g.flag);
  if (idle.empty()) return;
  log().warn("{} {} nothing for {}: {} generate's {} flags ({}; see pipeswap generate --help)", fmt::join(idle, ", "),
             idle.size() == 1 ? "does" : "do", architecture, idle.size() == 1 ? "it is one of" : "they are",
             text ? "video" : "text", text ? "Wan2.1 T2V repos" : "Llama, Qwen2 and Mistral checkpoints");
}

void warn_absent_gpus(const pipeline::Plan& plan) {
  const bool wants_gpu = std::any_of(plan.ranks.begin(), plan.ranks.end(),
                                     [](const pipeline::RankPlan& r) { return r.device.is_cuda(); });
  if (wants_gpu && cuda_device_count() == 0) {
    log().warn(
        "no CUDA GPU is visible on this host: the plan shows the device chain as written, but a run here would "
        "stop with 'Invalid device: cuda' (check nvidia-smi and CUDA_VISIBLE_DEVICES, or plan for cpu)");
  }
}

}  // namespace pipeswap::launcher
