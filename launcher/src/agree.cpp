#include "agree.h"

#include <sys/stat.h>
#include <sys/sysinfo.h>
#include <torch/cuda.h>

#include <algorithm>
#include <map>
#include <set>
#include <utility>

#include "flags.h"
#include "notices.h"
#include "pipeswap/core/cuda_info.h"
#include "pipeswap/core/error.h"
#include "pipeswap/core/hash.h"
#include "pipeswap/core/identity.h"
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

// Bumped whenever shared_settings changes, so that two builds that compare different lists say so
// instead of comparing them.
constexpr int64_t kSettingsVersion = 2;

std::string exact(double v) { return fmt::format("{}", v); }  // shortest text that reads back the same
std::string yes_no(bool b) { return b ? "true" : "false"; }

// The chain as given, weights exactly (DeviceChain::str rounds them for the plan's text).
std::string chain_text(const std::optional<pipeline::DeviceChain>& chain) {
  if (!chain) return "(not given: every rank on cpu, equal weights)";
  if (chain->automatic) return "auto";
  std::string s;
  for (const auto& e : chain->entries) s += (s.empty() ? "" : ",") + e.device.str() + "=" + exact(e.weight);
  return s;
}

// "0-2, 5" for ranks {0, 1, 2, 5}.
std::string rank_list(const std::vector<int>& ranks) {
  std::string s;
  for (size_t i = 0; i < ranks.size(); ++i) {
    size_t j = i;
    while (j + 1 < ranks.size() && ranks[j + 1] == ranks[j] + 1) ++j;
    s += (s.empty() ? "" : ", ") + (j == i ? std::to_string(ranks[i]) : fmt::format("{}-{}", ranks[i], ranks[j]));
    i = j;
  }
  return s;
}

// "rank 0 has 'auto'; ranks 1-3 have 'bf16'", values in the order their first rank comes.
std::string holders(const std::vector<std::string>& values, const std::vector<int64_t>& digests) {
  std::vector<std::pair<int64_t, std::vector<int>>> groups;  // digest -> ranks
  for (int r = 0; r < static_cast<int>(digests.size()); ++r) {
    auto it = std::find_if(groups.begin(), groups.end(), [&](const auto& g) { return g.first == digests[r]; });
    if (it == groups.end()) it = groups.insert(groups.end(), {digests[r], {}});
    it->second.push_back(r);
  }
  std::string s;
  for (const auto& [digest, ranks] : groups) {
    s += fmt::format("{}{} {} {} '{}'", s.empty() ? "" : "; ", ranks.size() == 1 ? "rank" : "ranks", rank_list(ranks),
                     ranks.size() == 1 ? "has" : "have", values.at(ranks.front()));
  }
  return s;
}

}  // namespace

std::vector<SharedSetting> shared_settings(const Options& o, const Checkpoint& ckpt) {
  std::vector<SharedSetting> s;
  auto add = [&](std::string name, std::string value) {
    const uint64_t d = stable_hash(value);
    s.push_back({std::move(name), std::move(value), d});
  };
  add("command", o.command);
  // By content: each node may keep the model in a directory of its own.
  const std::string config = ckpt.config().dump();
  s.push_back({"--model (config.json)", fmt::format("config.json of {}, digest {:016x}", ckpt.dir(), stable_hash(config)),
               stable_hash(config)});
  uint64_t index = stable_hash("");
  std::set<std::string> files;
  for (const auto& [tensor, file] : ckpt.weight_map()) {
    index = stable_hash(file, stable_hash(tensor + '\0', index));
    files.insert(file);
  }
  // Each shard's size too (a stat, no read): another download of the same layout, cut short or of
  // another dtype, differs there.
  for (const std::string& file : files) {
    struct stat st {};
    const int64_t size = ::stat((ckpt.dir() + "/" + file).c_str(), &st) == 0 ? st.st_size : -1;
    index = stable_hash(fmt::format("{}={};", file, size), index);
  }
  s.push_back({"--model (tensor index)",
               fmt::format("{} tensors in {}, digest {:016x}", ckpt.weight_map().size(), ckpt.dir(), index), index});
  add("--device-chain", chain_text(o.device_chain));
  add("--workload-split", yes_no(o.workload_split));
  add("--auto-vram-balance", yes_no(o.auto_vram_balance));
  add("--dtype", o.dtype);
  add("--weight-dtype", o.weight_dtype);
  add("--fp8-gemm", o.fp8_gemm);
  add("--fp8-dequantise", o.fp8_dequantise);
  add("--micro-batches", std::to_string(o.micro_batches));
  add("--transport", o.transport);
  add("--repeat", std::to_string(o.repeat));
  add("--trace", o.trace.empty() ? "off" : "on");  // collecting the trace is collective; its path is rank 0's
  add("--steps", std::to_string(o.steps));
  add("--guidance", exact(o.guidance));
  add("--shift", exact(o.shift));
  if (o.command == "generate") {
    add("--frames", std::to_string(o.frames));
    add("--height", std::to_string(o.height));
    add("--width", std::to_string(o.width));
    add("--seed", std::to_string(o.seed));
    add("--sampler", o.sampler);
    add("--flow-shift", o.flow_shift < 0 ? "(the repo's)" : exact(o.flow_shift));
    add("--text-encoder", o.text_encoder);
    add("--vae-tiling", yes_no(o.vae_tiling));
  }
  add("--blocks-to-swap", o.blocks_to_swap < 0 ? "(not given)" : std::to_string(o.blocks_to_swap));
  add("--offload-ratio", o.offload_ratio < 0 ? "(not given)" : exact(o.offload_ratio));
  add("--resident-policy", o.resident_policy);
  add("--offload-granularity", o.offload_granularity);
  add("--swap-order", o.swap_order);
  add("--prefetch-depth", std::to_string(o.prefetch_depth));
  add("--use-non-blocking", yes_no(o.use_non_blocking));
  add("--lazy-load", yes_no(o.lazy_load));
  add("--num-disk-workers", std::to_string(o.num_disk_workers));
  add("--offload-txt-emb", yes_no(o.offload_txt_emb));
  add("--offload-img-emb", yes_no(o.offload_img_emb));
  add("--offload-components", fmt::format("{}", fmt::join(o.offload_components, ",")));
  add("--on-demand-components", fmt::format("{}", fmt::join(o.on_demand_components, ",")));
  add("--force", yes_no(o.force));
  return s;
}

void agree_settings(const std::vector<SharedSetting>& mine, comm::Transport& t) {
  if (t.world_size() == 1) return;
  uint64_t all = stable_hash("");
  for (const auto& st : mine) all = stable_hash(std::string_view(reinterpret_cast<const char*>(&st.digest), 8), all);
  // One small exchange when all agree (the usual case): the list's version, length and digest.
  const auto heads = pipeline::allgather(
      t, {kSettingsVersion, static_cast<int64_t>(mine.size()), static_cast<int64_t>(all)});
  if (std::all_of(heads.begin(), heads.end(), [&](const auto& h) { return h == heads.front(); })) return;
  const bool same_list = std::all_of(heads.begin(), heads.end(), [&](const auto& h) {
    return h.at(0) == heads.front().at(0) && h.at(1) == heads.front().at(1);
  });
  if (!same_list) {
    std::vector<int64_t> versions;
    for (const auto& h : heads) versions.push_back(h.at(0) * 1000003 + h.at(1));
    const auto builds = pipeline::allgather_strings(
        t, fmt::format("settings v{} ({} settings) in {}", kSettingsVersion, mine.size(), rank_identity().host));
    PS_THROW(ConfigError,
             "the ranks run different pipeswap builds that compare different settings: {}; run the same build on "
             "every node",
             holders(builds, versions));
  }
  // Which setting differs first: every rank learns every digest, then the values of that one.
  std::vector<int64_t> digests;
  for (const auto& st : mine) digests.push_back(static_cast<int64_t>(st.digest));
  const auto table = pipeline::allgather(t, digests);
  size_t first = 0;
  while (first < mine.size() &&
         std::all_of(table.begin(), table.end(), [&](const auto& d) { return d.at(first) == table.front().at(first); }))
    ++first;
  PS_CHECK(first < mine.size(), CommError, "the ranks' settings digests differ as a whole but in no one setting");
  std::vector<int64_t> column;
  for (const auto& d : table) column.push_back(d.at(first));
  const auto values = pipeline::allgather_strings(t, mine.at(first).value);
  PS_THROW(ConfigError,
           "the ranks were started with different settings: {} differs ({}). Every rank must get the same flags and "
           "model (mpirun's 'A : B' form and job scripts can give ranks different ones); the settings that may "
           "differ per rank are listed in docs/reliability.md",
           mine.at(first).name, holders(values, column));
}

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

RankBudgets agree_budgets(const Options& o, const std::vector<pipeline::ChainEntry>& chain, const World& world,
                          comm::Transport& t, JobUse use) {
  const DeviceSpec& mine = chain.at(std::min<size_t>(world.rank, chain.size() - 1)).device;
  const int64_t vram = o.vram_budget == flags::kAutoBudget ? free_bytes(mine, world) : o.vram_budget;
  RankBudgets out;
  if (use == JobUse::kPlan && world.size == 1) {
    out.max_memory.assign(chain.size(), o.max_memory);
    if (vram != 0) out.vram.assign(chain.size(), vram);
    return out;
  }
  bool any_vram = false;
  for (const auto& v : pipeline::allgather(t, {vram, o.max_memory})) {
    out.vram.push_back(v.at(0));
    out.max_memory.push_back(v.at(1));
    any_vram = any_vram || v.at(0) != 0;
  }
  if (!any_vram) out.vram.clear();
  return out;
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
