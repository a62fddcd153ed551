// The plan guards the machine: before any weight loads, each rank's predicted bytes for this job are
// compared with what its machine has, so that a job the plan already knows cannot fit stops with the
// plan's numbers instead of allocating until the allocator refuses (or the OOM killer ends it).
#include <sys/resource.h>

#include <algorithm>
#include <fstream>
#include <limits>
#include <sstream>

#include "job.h"
#include "pipeswap/core/cuda_info.h"
#include "pipeswap/core/error.h"
#include "pipeswap/core/log.h"
#include "pipeswap/pipeline/collective.h"

namespace pipeswap::launcher {
namespace {

constexpr int64_t kUnlimited = std::numeric_limits<int64_t>::max();

// Which limit bounds a rank, for the message (travels as an integer).
enum class Limit : int64_t { kNone, kMemAvailable, kCgroup, kUlimit, kGpuFree };

const char* limit_name(Limit l) {
  switch (l) {
    case Limit::kMemAvailable: return "MemAvailable in /proc/meminfo";
    case Limit::kCgroup: return "the limit of its cgroup";
    case Limit::kUlimit: return "its address-space limit (ulimit -v)";
    case Limit::kGpuFree: return "the GPU's free memory";
    default: return "no limit";
  }
}

// A "Key:   123 kB" line of /proc/meminfo or /proc/self/status, in bytes.
std::optional<int64_t> proc_kb(const std::string& file, const std::string& key) {
  std::ifstream in(file);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + ":", 0) != 0) continue;
    std::istringstream fields(line.substr(key.size() + 1));
    int64_t kb = 0;
    if (fields >> kb) return kb * 1024;
  }
  return std::nullopt;
}

std::optional<int64_t> file_number(const std::string& path) {
  std::ifstream in(path);
  int64_t v = 0;
  if (in >> v) return v;
  return std::nullopt;  // missing, or "max"
}

// What this process's cgroup (v2, and every cgroup above it; or v1's memory controller) still lets it
// use: limit minus usage, page cache that can be dropped (inactive_file) counted as free.
std::optional<int64_t> cgroup_room() {
  std::ifstream in("/proc/self/cgroup");
  std::string line;
  std::optional<int64_t> room;
  auto take = [&](const std::string& dir, const char* limit_file, const char* usage_file) {
    const auto limit = file_number(dir + "/" + limit_file);
    const auto usage = file_number(dir + "/" + usage_file);
    if (!limit || !usage || *limit >= (int64_t{1} << 60)) return;  // no limit ("max", or v1's huge default)
    int64_t inactive = 0;
    std::ifstream stat(dir + "/memory.stat");
    std::string key;
    int64_t value = 0;
    while (stat >> key >> value) {
      if (key == "inactive_file" || key == "total_inactive_file") inactive = value;
    }
    const int64_t r = std::max<int64_t>(0, *limit - std::max<int64_t>(0, *usage - inactive));
    room = room ? std::min(*room, r) : r;
  };
  while (std::getline(in, line)) {
    const size_t a = line.find(':'), b = line.find(':', a + 1);
    if (a == std::string::npos || b == std::string::npos) continue;
    const std::string controllers = line.substr(a + 1, b - a - 1);
    std::string path = line.substr(b + 1);
    if (line.rfind("0::", 0) == 0) {  // v2: this cgroup and its parents
      while (true) {
        take("/sys/fs/cgroup" + path, "memory.max", "memory.current");
        if (path.empty() || path == "/") break;
        path = path.substr(0, path.rfind('/'));
      }
    } else if (controllers.find("memory") != std::string::npos) {
      take("/sys/fs/cgroup/memory" + path, "memory.limit_in_bytes", "memory.usage_in_bytes");
    }
  }
  return room;
}

// Host memory the ranks of this host may still take together (MemAvailable, the cgroup), and the
// limit that bounds it.
std::pair<int64_t, Limit> host_room() {
  std::pair<int64_t, Limit> best{kUnlimited, Limit::kNone};
  for (const auto& [v, l] : {std::make_pair(proc_kb("/proc/meminfo", "MemAvailable"), Limit::kMemAvailable),
                             std::make_pair(cgroup_room(), Limit::kCgroup)}) {
    if (v && *v < best.first) best = {*v, l};
  }
  return best;
}

// What this process alone may still map (ulimit -v), or kUnlimited.
int64_t process_room() {
  struct rlimit as {};
  if (::getrlimit(RLIMIT_AS, &as) != 0 || as.rlim_cur == RLIM_INFINITY) return kUnlimited;
  const int64_t used = proc_kb("/proc/self/status", "VmSize").value_or(0);
  return std::max<int64_t>(0, static_cast<int64_t>(as.rlim_cur) - used);
}

// What rank `r` holds in host memory by the plan: its weights, activations and workspace when it
// computes on the CPU, swapped blocks and host-kept components, and rank 0's inputs and outputs.
int64_t host_need(const pipeline::RankPlan& rp, int64_t io_bytes) {
  return (rp.device.is_cuda() ? 0 : rp.device_bytes) + rp.host_bytes + (rp.rank == 0 ? io_bytes : 0);
}

}  // namespace

void check_machine_memory(const Options& o, const World& world, comm::Transport& t, const Job& job,
                          int64_t io_bytes) {
  const auto& ranks = job.plan.ranks;
  const pipeline::RankPlan& me = ranks.at(world.rank);
  // Ranks of one host share its memory: each rank checks the sum of its host's ranks.
  const std::vector<std::string>& hosts = t.hosts();
  const int64_t io = pipeline::broadcast(t, {io_bytes}).at(0);  // rank 0's
  int64_t host_total = 0;
  for (const auto& rp : ranks) {
    if (hosts.size() == ranks.size() && hosts.at(rp.rank) != hosts.at(world.rank)) continue;
    host_total += host_need(rp, io);
  }
  const auto [room, limit] = host_room();
  int64_t dev_need = 0, dev_room = kUnlimited;
  if (me.device.is_cuda()) {
    dev_need = me.device_bytes;
    if (auto info = cuda_mem_info(std::max(0, me.device.index))) dev_room = info->free_bytes;
  }
  // Every rank learns every verdict, so all stop (or warn) alike and name the same rank.
  const auto all = pipeline::allgather(
      t, {host_total, room, static_cast<int64_t>(limit), process_room(), dev_need, dev_room});
  std::string problem;
  for (size_t r = 0; r < all.size() && problem.empty(); ++r) {
    const auto& v = all[r];
    const pipeline::RankPlan& rp = ranks.at(r);
    const int64_t own = host_need(rp, io);
    const std::string who = fmt::format("rank {} ({} on {})", r, rp.device.str(),
                                        hosts.size() == ranks.size() ? hosts.at(r) : std::string("this host"));
    const std::string parts = fmt::format(
        "weights and slots {}, activations and workspace {}, host-kept blocks and components {}{}",
        pipeline::format_bytes(rp.device_bytes - rp.activation_bytes - rp.workspace_bytes),
        pipeline::format_bytes(rp.activation_bytes + rp.workspace_bytes), pipeline::format_bytes(rp.host_bytes),
        r == 0 && io > 0 ? fmt::format(", inputs and outputs {}", pipeline::format_bytes(io)) : "");
    if (v[0] > v[1]) {
      problem = fmt::format("{} needs {} of host memory{} but {} is available ({}); the plan counts {}", who,
                            pipeline::format_bytes(v[0]), v[0] > own ? " (with the other ranks on its host)" : "",
                            pipeline::format_bytes(v[1]), limit_name(static_cast<Limit>(v[2])), parts);
    } else if (own > v[3]) {
      problem = fmt::format("{} needs {} of host memory but {} is left to it ({}); the plan counts {}", who,
                            pipeline::format_bytes(own), pipeline::format_bytes(v[3]), limit_name(Limit::kUlimit),
                            parts);
    } else if (v[4] > v[5]) {
      problem = fmt::format("{} needs {} of device memory but {} is free ({}); the plan counts {}", who,
                            pipeline::format_bytes(v[4]), pipeline::format_bytes(v[5]), limit_name(Limit::kGpuFree),
                            parts);
    }
  }
  if (problem.empty()) return;
  const std::string fix =
      "use fewer tokens per micro-batch (shorter inputs, more --micro-batches), swap blocks (--blocks-to-swap, "
      "--offload-ratio, --vram-budget), or add ranks";
  if (o.force) {
    if (world.rank == 0) log().warn("--force: running anyway although {}; {}", problem, fix);
    return;
  }
  PS_THROW(ConfigError, "the plan does not fit the machine: {}. To fit, {}; --force runs it anyway", problem, fix);
}

}  // namespace pipeswap::launcher
