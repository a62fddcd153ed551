#include "agree.h"

#include <sys/sysinfo.h>
#include <torch/cuda.h>

#include <algorithm>
#include <map>
#include <utility>

#include "notices.h"
#include "pipeswap/core/cuda_info.h"
#include "pipeswap/core/error.h"
#include "pipeswap/core/identity.h"
#include "pipeswap/offload/residency.h"
#include "pipeswap/pipeline/collective.h"

namespace pipeswap::launcher {
namespace {

using pipeline::DeviceSpec;

// Free memory of this rank's device (auto_vram_balance). CPU: MemAvailable / ranks on this node.
int64_t free_bytes(const DeviceSpec& dev, const World& world) {
  if (dev.is_cuda()) {
    auto info = cuda_mem_info(dev.index < 0 ? 0 : dev.index);
    PS_CHECK(info.has_value(), ConfigError, "cannot read the free memory of {} for auto_vram_balance", dev.str());
    return info->free_bytes;
  }
  struct sysinfo si {};
  if (sysinfo(&si) != 0) return 1;
  return static_cast<int64_t>(si.freeram + si.bufferram) * si.mem_unit / std::max(1, world.local_size);
}

// Every rank's free memory, in rank order.
std::vector<int64_t> all_free_bytes(const DeviceSpec& mine, const World& world, comm::Transport& t) {
  std::vector<int64_t> out;
  for (const auto& v : pipeline::allgather(t, {free_bytes(mine, world)})) out.push_back(v.at(0));
  return out;
}

// This rank's device: "cuda" is the GPU of its local rank (CUDA_VISIBLE_DEVICES and Slurm's
// per-task GPU binding already narrowed what it sees); "cuda:N" must exist on this node.
DeviceSpec resolve_device(const DeviceSpec& d, const World& world) {
  if (!d.is_cuda()) return d;
  const int n = cuda_device_count();
  PS_CHECK(n > 0, ConfigError,
           "Invalid device: {} (no CUDA GPU is visible on host {}: check nvidia-smi and CUDA_VISIBLE_DEVICES, or use "
           "cpu)",
           d.str(), rank_identity().host);
  const int index = d.index < 0 ? world.local_rank % n : d.index;
  PS_CHECK(index < n, ConfigError, "Invalid device: cuda:{} (this node has {})", index, n);
  PS_CHECK(torch::cuda::is_available(), ConfigError,
           "Invalid device: cuda:{} (this pipeswap was built against a CPU-only LibTorch: rebuild against PyTorch's "
           "LibTorch, see README 'GPUs')",
           index);
  return DeviceSpec{DeviceSpec::Kind::kCuda, index};
}

// Every rank's resolved device, learnt from all ranks; two ranks on one GPU of one host are an error
// naming both.
void agree_devices(std::vector<pipeline::ChainEntry>& entries, int rank, comm::Transport& t) {
  const DeviceSpec mine = entries.at(rank).device;
  const auto all = pipeline::allgather(t, {static_cast<int64_t>(mine.kind), mine.index});
  std::map<std::pair<std::string, int>, int> owner;  // (host, GPU) -> rank
  for (size_t r = 0; r < entries.size(); ++r) {
    DeviceSpec& d = entries[r].device;
    d = DeviceSpec{static_cast<DeviceSpec::Kind>(all.at(r).at(0)), static_cast<int>(all.at(r).at(1))};
    if (!d.is_cuda()) continue;
    const std::string& host = t.hosts().at(r);
    auto [it, fresh] = owner.emplace(std::make_pair(host, d.index), static_cast<int>(r));
    PS_CHECK(fresh, ConfigError,
             "ranks {} and {} both use {} on host {}: give each rank its own GPU (e.g. --device-chain "
             "cuda:0=1,cuda:1=1, or plain 'cuda' so each rank takes its local GPU)",
             it->second, r, d.str(), host);
  }
}

}  // namespace

std::vector<pipeline::ChainEntry> agree_chain(const std::optional<pipeline::DeviceChain>& given, bool auto_vram_balance,
                                              const World& world, comm::Transport& t, JobUse use) {
  pipeline::DeviceChain chain;
  if (given) chain = *given;
  if (!given || chain.automatic) chain.entries.assign(world.size, pipeline::ChainEntry{});  // cpu, equal weights
  const int n = static_cast<int>(chain.entries.size());
  const bool preview = use == JobUse::kPlan && world.size == 1;
  if (!preview) {
    PS_CHECK(n == world.size, ConfigError,
             "--device-chain has {} entr{} but {} rank(s) are running: give one entry per rank, or start {} rank(s): "
             "leave out mpirun and pipeswap starts one per entry itself, or mpirun -np {} pipeswap ... (as root, or "
             "with more ranks than cores, Open MPI needs the settings in README.md, Running)",
             n, n == 1 ? "y" : "ies", world.size, n, n);
  }
  if (preview) return chain.entries;  // devices as written
  if (chain.automatic) {
    for (auto& e : chain.entries) e.device = cuda_device_count() > 0 ? pipeline::parse_device("cuda") : e.device;
  }
  // Each rank resolves its own entry ("cuda" is its local GPU) and checks it; then all ranks learn
  // every rank's device.
  DeviceSpec& mine = chain.entries.at(world.rank).device;
  mine = resolve_device(mine, world);
  if (world.size > 1) agree_devices(chain.entries, world.rank, t);
  // --auto-vram-balance weighs GPUs; a chain of CPUs keeps its weights (notices.h says so).
  if (chain.automatic || (auto_vram_balance && balances_anything(chain.entries))) {
    // Every rank's free memory, gathered so that all ranks build the same plan.
    const std::vector<int64_t> free =
        world.size > 1 ? all_free_bytes(mine, world, t) : std::vector<int64_t>{free_bytes(mine, world)};
    for (int r = 0; r < n; ++r) chain.entries[r].weight = static_cast<double>(free.at(r));
  }
  return chain.entries;
}

std::vector<int64_t> agree_vram_budgets(const std::string& vram_budget, const std::vector<pipeline::ChainEntry>& chain,
                                        const World& world, comm::Transport& t) {
  if (vram_budget.empty()) return {};
  if (vram_budget != "auto")
    return std::vector<int64_t>(chain.size(), offload::parse_bytes(vram_budget, "--vram-budget"));
  const DeviceSpec& mine = chain.at(std::min<size_t>(world.rank, chain.size() - 1)).device;
  if (world.size == 1) return std::vector<int64_t>(chain.size(), free_bytes(mine, world));
  return all_free_bytes(mine, world, t);
}

JobShape agree_shape(comm::Transport& t, const JobShape& mine) {
  const int64_t stored = mine.stored_dtype ? static_cast<int64_t>(*mine.stored_dtype) : -1;
  std::vector<int64_t> mine_v{mine.batch, mine.seq, stored};
  mine_v.insert(mine_v.end(), mine.storage.begin(), mine.storage.end());
  const std::vector<int64_t> v = pipeline::broadcast(t, mine_v);
  PS_CHECK(v.size() >= 3, CommError, "rank 0 sent a job shape of {} values where at least 3 were expected", v.size());
  JobShape out{v[0], v[1], std::nullopt, std::vector<int64_t>(v.begin() + 3, v.end())};
  if (v[2] >= 0) out.stored_dtype = static_cast<c10::ScalarType>(v[2]);
  return out;
}

}  // namespace pipeswap::launcher
