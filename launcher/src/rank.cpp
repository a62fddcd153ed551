// A rank's runtime: its threads, its device, the NCCL transport where every rank is a GPU, --trace,
// and its weights as the plan's layout says; the memory it used beside the plan's prediction.
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <algorithm>
#include <atomic>
#include <thread>

#include "job.h"
#include "pipeswap/core/device_memory.h"
#include "pipeswap/core/dtype.h"
#include "pipeswap/core/error.h"
#include "pipeswap/core/identity.h"
#include "pipeswap/core/log.h"
#include "pipeswap/core/torch_compat.h"
#include "pipeswap/offload/components.h"
#include "progress.h"

namespace pipeswap::launcher {
namespace {

int64_t stored_bytes(const Checkpoint& ckpt, const PartSpec& part) {
  int64_t n = 0;
  for (const TensorRef& t : part.tensors) n += static_cast<int64_t>(ckpt.locate(t.checkpoint).info->nbytes());
  return n;
}

// Tensor bytes this rank reads from its checkpoint while its weights load (headers only): resident
// units, swapped ones unless they stream from disk later (lazy_load), and components not read on demand.
int64_t load_bytes(const Job& job, const pipeline::RankPlan& me) {
  int64_t n = 0;
  for (const offload::Unit& u : me.layout.units) {
    if (u.swapped && job.plan.offload.lazy_load) continue;
    const std::vector<PartSpec> parts = block_parts(*job.arch, u.block);
    for (int p = u.first_phase; p < u.end_phase; ++p) n += stored_bytes(*job.ckpt, parts[static_cast<size_t>(p)]);
  }
  const auto held = offload::rank_components(*job.arch, {me.first_block, me.end_block, me.prologue, me.epilogue});
  const auto modes = offload::component_modes(*job.arch, job.plan.offload);
  for (const PartSpec& part : held.parts)
    if (modes.at(part.name) != offload::ComponentMode::kOnDemand) n += stored_bytes(*job.ckpt, part);
  return n;
}

// A progress bar of the checkpoint's bytes read while this rank loads its weights (a thread polls the
// checkpoint's counter: the loading code knows nothing of it).
class LoadProgress {
 public:
  LoadProgress(const Checkpoint& ckpt, int64_t total)
      : ckpt_(ckpt), total_(total), start_(ckpt.bytes_read()), bar_("loading", total, Progress::Unit::kBytes) {
    poller_ = std::thread([this] {
      while (!done_.load()) {
        bar_.update(std::min(read(), total_ - 1));
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
    });
  }
  ~LoadProgress() {
    done_ = true;
    if (poller_.joinable()) poller_.join();
  }
  // The weights are in: the bar ends at 100% (if it was shown).
  void finish() {
    done_ = true;
    if (poller_.joinable()) poller_.join();
    bar_.update(total_);
  }

 private:
  int64_t read() const { return static_cast<int64_t>(ckpt_.bytes_read() - start_); }
  const Checkpoint& ckpt_;
  int64_t total_;
  uint64_t start_;
  Progress bar_;
  std::atomic<bool> done_{false};
  std::thread poller_;
};

}  // namespace

double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

void set_threads(const Options& o, const World& world) {
  int n = o.threads;
  if (n == 0) {
    // The cores of this node shared by its ranks, rounded down to a power of two: kernels split
    // power-of-two thread counts alike, which keeps splits bit-identical to single-rank runs.
    const unsigned share = std::max(1u, std::thread::hardware_concurrency() / std::max(1, world.local_size));
    n = 1;
    while (2u * static_cast<unsigned>(n) <= share) n *= 2;
  }
  at::set_num_threads(n);
}

RankRuntime start_rank(const Options& o, const World& world, std::unique_ptr<comm::Transport>& transport,
                       const Job& job) {
  const pipeline::RankPlan& me = job.plan.ranks.at(world.rank);
  RankIdentity id = rank_identity();
  id.device = me.device.str();
  set_rank_identity(id);
  refresh_log_prefix();
  if (world.rank == 0) log().info("\n{}", job.plan.to_text());
  const bool all_gpus = std::all_of(job.plan.ranks.begin(), job.plan.ranks.end(),
                                    [](const pipeline::RankPlan& r) { return r.device.is_cuda(); });
  if (all_gpus && world.size > 1 && o.transport != "host") {
    comm::TransportOptions to;
    to.timeout = std::chrono::milliseconds(static_cast<int64_t>(o.comm_timeout * 1000));
    transport = comm::make_nccl_transport(std::move(transport), me.device.index, to);
  }
  RankRuntime rt;
  rt.device = me.device.is_cuda() ? torch::Device(torch::kCUDA, static_cast<int8_t>(me.device.index))
                                  : torch::Device(torch::kCPU);
  if (rt.device.is_cuda()) {
    c10::impl::getDeviceGuardImpl(rt.device.type())->setDevice(rt.device);
    reset_device_peak(rt.device.index());
    if (job.plan.dtype == c10::ScalarType::Float) {
      // fp32 means fp32: no TF32 in cuBLAS or cuDNN (LibTorch lets cuDNN convolutions use it by default).
      at::globalContext().setAllowTF32CuBLAS(false);
      at::globalContext().setAllowTF32CuDNN(false);
    }
  }
  models::set_fp8_gemm(o.fp8_gemm == "scaled-mm");
  if (o.fp8_gemm == "scaled-mm" && (!rt.device.is_cuda() || !compat::kHasScaledMm)) {
    log().warn("--fp8-gemm scaled-mm needs CUDA and LibTorch >= 2.5 (this rank: {}, LibTorch {}): fp8 weights are "
               "dequantised per use instead",
               rt.device.str(), compat::torch_version());
  }
  // --trace: records from here (weight loading included)
  rt.trace = std::make_unique<pipeline::JobTrace>(o.trace, rt.device, world.rank);
  const auto t_load = Clock::now();
  const offload::OwnedParts owned{me.first_block, me.end_block, me.prologue, me.epilogue};
  {
    LoadProgress progress(*job.ckpt, std::max<int64_t>(1, load_bytes(job, me)));
    rt.weights = offload::make_block_weights(*job.arch, job.ckpt, owned, me.layout, rt.device, job.plan.offload);
    progress.finish();
  }
  log().info("loaded {} of weights ({} read from {}) in {:.2f} s", pipeline::format_bytes(rt.weights->device_bytes()),
             pipeline::format_bytes(static_cast<int64_t>(job.ckpt->bytes_read())), job.model_dir, since(t_load));
  transport->barrier();
  return rt;
}

std::string rank_lines(const pipeline::Plan& plan) {
  std::string s = fmt::format("  compute dtype {} ({})\n", dtype_word(plan.dtype), plan.dtype_source);
  if (!plan.weight_storage.empty()) s += fmt::format("  {}\n", plan.weight_storage);
  for (const auto& r : plan.ranks) {
    s += fmt::format(
        "  rank {}{} {:<6} {}\n", r.rank,
        plan.guidance_groups > 1 ? fmt::format(" ({})", r.group == 0 ? "cond" : "uncond") : std::string(),
        r.device.str(),
        r.idle()
            ? std::string("idle")
            : fmt::format("blocks {}..{} ({}){}{}{}", r.first_block, r.end_block - 1, r.num_blocks(),
                          r.prologue ? " +prologue" : "", r.epilogue ? " +epilogue" : "",
                          r.swapped_blocks().empty()
                              ? ""
                              : fmt::format(", {} swapped{}", r.swapped_blocks().size(),
                                            r.shared_fills ? ", shared fills" : "")));
  }
  return s;
}

std::string nonfinite_line(const std::string& name, const torch::Tensor& t) {
  const int64_t nan = torch::isnan(t).sum().item<int64_t>();
  const int64_t inf = torch::isinf(t).sum().item<int64_t>();
  if (nan == 0 && inf == 0) return "";
  const std::string line =
      fmt::format("warning: {} holds {} NaN and {} infinite value(s) of {}: the result is not usable (check the "
                  "inputs, the weights and --dtype)",
                  name, nan, inf, t.numel());
  log().warn("{}", line);
  return "  " + line + "\n";
}

void log_memory(const pipeline::RankPlan& me, const offload::BlockWeights& weights, torch::Device device,
                int passes) {
  const offload::OffloadStats st = weights.stats();
  if (device.is_cuda()) {
    if (auto peak = device_peak_allocated(device.index())) {
      log().info("device memory peak {} bytes allocated (plan {} bytes, {:+.1f}%)", *peak, me.device_bytes,
                 100.0 * (static_cast<double>(*peak) - me.device_bytes) / std::max<int64_t>(1, me.device_bytes));
    }
  }
  log().info(
      "memory: device weights {} (plan {} incl. {} activations), host {} (plan {}), read from disk during "
      "the run {} (plan {}){}",
      pipeline::format_bytes(st.device_bytes), pipeline::format_bytes(me.device_bytes),
      pipeline::format_bytes(me.activation_bytes), pipeline::format_bytes(st.host_peak_bytes),
      pipeline::format_bytes(me.host_bytes), pipeline::format_bytes(st.disk_bytes_read),
      pipeline::format_bytes(me.disk_read_bytes),
      st.copies ? fmt::format(", {} slot fills, {} per pass (plan {}, {} order)", st.copies,
                              st.copies / std::max(1, passes), me.fills_per_pass,
                              me.shared_fills ? "shared" : "per-micro-batch")
                : "");
  if (st.fp8_ahead_hits + st.fp8_ahead_misses > 0) {
    log().info("fp8 dequantise ahead: {} phases dequantised ahead of their compute, {} at their acquire",
               st.fp8_ahead_hits, st.fp8_ahead_misses);
  }
}

}  // namespace pipeswap::launcher
