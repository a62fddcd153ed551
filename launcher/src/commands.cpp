#include "commands.h"

#include <sys/sysinfo.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <iostream>
#include <thread>

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <map>

#include "demo_model.h"
#include "job.h"
#include <torch/cuda.h>

#include "pipeswap/core/checkpoint.h"
#include "pipeswap/core/cuda_info.h"
#include "pipeswap/core/device_memory.h"
#include "pipeswap/core/dtype.h"
#include "pipeswap/core/error.h"
#include "pipeswap/core/files.h"
#include "pipeswap/core/identity.h"
#include "pipeswap/core/log.h"
#include "pipeswap/core/safetensors.h"
#include "pipeswap/models/architecture.h"
#include "pipeswap/offload/block_weights.h"
#include "pipeswap/offload/residency.h"
#include "pipeswap/pipeline/collective.h"
#include "pipeswap/pipeline/forward_job.h"
#include "pipeswap/pipeline/inputs.h"
#include "pipeswap/pipeline/plan.h"

namespace pipeswap::launcher {

double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

namespace {

// Free memory of this rank's device (auto_vram_balance). CPU: MemAvailable / ranks on this node.
int64_t free_bytes(const pipeline::DeviceSpec& dev, const World& world) {
  if (dev.is_cuda()) {
    auto info = cuda_mem_info(dev.index < 0 ? 0 : dev.index);
    PS_CHECK(info.has_value(), ConfigError, "cannot read the free memory of {} for auto_vram_balance", dev.str());
    return info->free_bytes;
  }
  struct sysinfo si {};
  if (sysinfo(&si) != 0) return 1;
  return static_cast<int64_t>(si.freeram + si.bufferram) * si.mem_unit / std::max(1, world.local_size);
}

// This rank's device: "cuda" is the GPU of its local rank (CUDA_VISIBLE_DEVICES and Slurm's
// per-task GPU binding already narrowed what it sees); "cuda:N" must exist on this node.
pipeline::DeviceSpec resolve_device(const pipeline::DeviceSpec& d, const World& world) {
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
  return pipeline::DeviceSpec{pipeline::DeviceSpec::Kind::kCuda, index};
}

// Turns --device-chain into one entry per rank, agreed by every rank.
std::vector<pipeline::ChainEntry> resolve_chain(const Options& o, const World& world, comm::Transport& t,
                                                bool plan_only) {
  pipeline::DeviceChain chain;
  if (o.device_chain.empty()) {
    chain.entries.assign(world.size, pipeline::ChainEntry{});  // every rank on cpu, equal weights
  } else {
    chain = pipeline::parse_device_chain(o.device_chain);
  }
  if (chain.automatic) chain.entries.assign(world.size, pipeline::ChainEntry{});
  const int n = static_cast<int>(chain.entries.size());
  if (!(plan_only && world.size == 1)) {
    PS_CHECK(n == world.size, ConfigError,
             "--device-chain has {} entr{} but {} rank(s) are running: give one entry per rank, or start {} rank(s) "
             "(e.g. mpirun -np {} pipeswap ...)",
             n, n == 1 ? "y" : "ies", world.size, n, n);
  }
  if (plan_only && world.size == 1) return chain.entries;  // a preview: devices as written
  if (chain.automatic) {
    for (auto& e : chain.entries) e.device = cuda_device_count() > 0 ? pipeline::parse_device("cuda") : e.device;
  }
  // Each rank resolves its own entry ("cuda" is its local GPU) and checks it; then all ranks learn
  // every rank's device, and two ranks on one GPU of one host are an error naming both.
  pipeline::DeviceSpec& mine = chain.entries.at(world.rank).device;
  mine = resolve_device(mine, world);
  if (world.size > 1) {
    auto all = pipeline::allgather_strings(t, fmt::format("{} {}", rank_identity().host, mine.str()));
    std::map<std::string, int> owner;
    for (int r = 0; r < n; ++r) {
      const std::string device = all[r].substr(all[r].find(' ') + 1);
      chain.entries[r].device = pipeline::parse_device(device);
      if (!chain.entries[r].device.is_cuda()) continue;
      auto [it, fresh] = owner.emplace(all[r], r);
      PS_CHECK(fresh, ConfigError,
               "ranks {} and {} both use {} on host {}: give each rank its own GPU (e.g. --device-chain "
               "cuda:0=1,cuda:1=1, or plain 'cuda' so each rank takes its local GPU)",
               it->second, r, device, all[r].substr(0, all[r].find(' ')));
    }
  }
  if (chain.automatic || o.auto_vram_balance) {
    // Every rank's free memory, gathered so that all ranks build the same plan.
    auto all = pipeline::allgather_strings(t, std::to_string(free_bytes(mine, world)));
    for (int r = 0; r < n && r < static_cast<int>(all.size()); ++r) chain.entries[r].weight = std::stod(all[r]);
  }
  return chain.entries;
}

// The compute dtype and where it came from. `stored`: the dtype most of block 0's bytes are stored in
// (-1: unknown). With --dtype auto the stored dtype wins; config.json's torch_dtype/dtype is only a
// cross-check (Wan2.1's and diffusers' configs carry none). Two exceptions, said in the source text:
// CPU ranks compute 16-bit weights in float32 (exact, and LibTorch's fp32 CPU kernels are the fast ones
// where the processor has no native bf16), and a diffusion transformer stored in float32 (Wan2.1's own
// releases) computes in bf16 on GPUs, as Wan2.1's generate.py (param_dtype bf16), diffusers' examples
// and ComfyUI do: float32 is an order of magnitude slower there for no visible gain.
std::pair<c10::ScalarType, std::string> resolve_dtype(const Options& o, const nlohmann::json& config, int stored,
                                                      bool any_cpu, const std::string& kind) {
  if (o.dtype != "auto") {
    auto t = parse_float_dtype(o.dtype);
    PS_CHECK(t.has_value(), ConfigError, "unknown --dtype '{}': use auto, fp32, bf16 or fp16", o.dtype);
    PS_CHECK(!(any_cpu && *t == c10::ScalarType::Half), ConfigError,
             "--dtype fp16 is not supported on CPU ranks (LibTorch has no fp16 matmul there): use fp32 or bf16");
    return {*t, "--dtype " + o.dtype};
  }
  std::optional<c10::ScalarType> declared;
  std::string declared_key;
  for (const char* key : {"torch_dtype", "dtype"}) {
    if (declared || !config.contains(key) || !config.at(key).is_string()) continue;
    declared = parse_float_dtype(config.at(key).get<std::string>());
    declared_key = key;
  }
  c10::ScalarType st = c10::ScalarType::Float;
  std::string source;
  if (stored >= 0) {
    st = static_cast<c10::ScalarType>(stored);
    source = fmt::format("stored {} in the safetensors files", dtype_word(st));
    if (declared && *declared != st) {
      log().warn("config.json says {} {} but the weights are stored in {}: computing in {} (--dtype to choose)",
                 declared_key, dtype_word(*declared), dtype_word(st), dtype_word(st));
    }
  } else if (declared) {
    st = *declared;
    source = fmt::format("config.json {}", declared_key);
  } else {
    source = "no stored or declared dtype: float32";
  }
  if (st != c10::ScalarType::Float && st != c10::ScalarType::BFloat16 && st != c10::ScalarType::Half) {
    source += fmt::format("; {} is not a compute dtype: float32", dtype_word(st));
    st = c10::ScalarType::Float;
  }
  if (any_cpu && st != c10::ScalarType::Float) {
    source += "; CPU ranks compute 16-bit weights in float32 (exact, and the fast CPU kernels)";
    st = c10::ScalarType::Float;
  } else if (!any_cpu && st == c10::ScalarType::Float && kind == "dit") {
    source += "; GPUs compute a float32 DiT in bfloat16, as Wan2.1's own code and diffusers do (--dtype fp32 to keep it)";
    st = c10::ScalarType::BFloat16;
  }
  return {st, source};
}

offload::OffloadOptions offload_options(const Options& o) {
  offload::OffloadOptions off;
  if (o.blocks_to_swap >= 0) off.blocks_to_swap = o.blocks_to_swap;
  if (o.offload_ratio >= 0) off.offload_ratio = o.offload_ratio;
  PS_CHECK(o.blocks_to_swap >= -1, ConfigError, "--blocks-to-swap {} is negative: give how many blocks swap",
           o.blocks_to_swap);
  PS_CHECK(!(o.blocks_to_swap >= 0 && o.offload_ratio >= 0), ConfigError,
           "--blocks-to-swap and --offload-ratio both given: use one of them");
  off.policy = offload::parse_resident_policy(o.resident_policy);
  off.granularity = offload::parse_granularity(o.offload_granularity);
  off.prefetch_depth = o.prefetch_depth;
  off.use_non_blocking = o.use_non_blocking;
  off.lazy_load = o.lazy_load;
  off.num_disk_workers = o.num_disk_workers;
  PS_CHECK(o.prefetch_depth >= 1, ConfigError, "--prefetch-depth must be at least 1 (got {})", o.prefetch_depth);
  PS_CHECK(o.num_disk_workers >= 1, ConfigError, "--num-disk-workers must be at least 1 (got {})", o.num_disk_workers);
  if (!o.max_memory.empty()) off.max_memory = offload::parse_bytes(o.max_memory, "--max-memory");
  off.offload_txt_emb = o.offload_txt_emb;
  off.offload_img_emb = o.offload_img_emb;
  off.offload_components = o.offload_components;
  off.on_demand_components = o.on_demand_components;
  return off;
}

// Automatic VRAM mode: every rank's budget, agreed by all ranks. "auto": the device's free memory.
std::vector<int64_t> vram_budgets(const Options& o, const World& world, comm::Transport& t,
                                  const std::vector<pipeline::ChainEntry>& chain) {
  if (o.vram_budget.empty()) return {};
  if (o.blocks_to_swap >= 0 || o.offload_ratio >= 0)
    log().warn("blocks_to_swap ignored: automatic VRAM mode decides residency");
  if (o.vram_budget != "auto") {
    return std::vector<int64_t>(chain.size(), offload::parse_bytes(o.vram_budget, "--vram-budget"));
  }
  const auto& mine = chain.at(std::min<size_t>(world.rank, chain.size() - 1)).device;
  std::vector<int64_t> out;
  if (world.size == 1) {
    out.assign(chain.size(), free_bytes(mine, world));
  } else {
    for (const auto& s : pipeline::allgather_strings(t, std::to_string(free_bytes(mine, world))))
      out.push_back(std::stoll(s));
  }
  return out;
}

}  // namespace

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

Job open_model(const Options& o, const World& world, comm::Transport& t, bool plan_only) {
  Job job;
  job.chain = resolve_chain(o, world, t, plan_only);
  job.model_dir = o.model.empty() ? ensure_demo_model() : o.model;
  job.ckpt = Checkpoint::open(job.model_dir);
  job.arch = models::make_architecture(job.ckpt->config());
  models::check_checkpoint_tensors(*job.arch, *job.ckpt);
  return job;
}

int stored_dtype_code(const Job& job) {
  // The dtype of most of block 0's bytes (the weight matrices; a norm kept in fp32 does not decide). A
  // header read, not a weight read: rank 0 owns block 0 (or the prologue of a model without blocks).
  const auto parts = job.arch->num_blocks() > 0 ? models::block_parts(*job.arch, 0) : job.arch->prologue_parts();
  std::map<int, int64_t> bytes;
  for (const auto& part : parts) {
    for (const auto& t : part.tensors) {
      const auto info = job.ckpt->locate(t.checkpoint).info;
      bytes[static_cast<int>(to_scalar_type(info->dtype))] += static_cast<int64_t>(info->nbytes());
    }
  }
  int best = -1;
  int64_t most = -1;
  for (const auto& [code, n] : bytes)
    if (n > most) best = code, most = n;
  return best;
}

pipeline::Plan make_job_plan(const Options& o, const World& world, comm::Transport& t, const Job& job, int64_t batch,
                             int64_t seq, int micro_batches, int sweeps, int stored_dtype) {
  pipeline::PlanInputs in;
  in.model_dir = job.model_dir;
  in.chain = job.chain;
  in.workload_split = o.workload_split;
  // One compute dtype for all ranks (activations cross between them): CPU limits apply if any rank is a CPU.
  const bool any_cpu =
      std::any_of(job.chain.begin(), job.chain.end(), [](const auto& e) { return !e.device.is_cuda(); });
  std::tie(in.dtype, in.dtype_source) = resolve_dtype(o, job.ckpt->config(), stored_dtype, any_cpu, job.arch->kind());
  in.micro_batches = micro_batches;
  in.batch = batch;
  in.seq = seq;
  in.sweeps = sweeps;
  in.offload = offload_options(o);
  if (stored_dtype >= 0) in.offload.stored_dtype = static_cast<c10::ScalarType>(stored_dtype);
  in.vram_budget = vram_budgets(o, world, t, job.chain);
  return pipeline::make_plan(*job.arch, in);
}

namespace {

Job prepare(const Options& o, const World& world, comm::Transport& t, bool plan_only) {
  Job job = open_model(o, world, t, plan_only);
  PS_CHECK(job.arch->kind() == "llm" || (plan_only && o.input.empty()), ConfigError,
           "{} is a {} diffusion transformer: `pipeswap run` takes token ids; use `pipeswap denoise --model {} "
           "--latents FILE --context FILE ...`",
           job.model_dir, job.arch->family(), job.model_dir);

  // Rank 0 reads the input; everyone learns its shape so that all ranks build the same plan.
  std::string shape = "0 0";
  if (world.rank == 0 && (!plan_only || !o.input.empty())) {
    if (!o.input.empty()) {
      job.input_ids = pipeline::read_token_input(o.input);
    } else {
      PS_CHECK(o.model.empty(), ConfigError, "--input is required with --model (token ids, JSON or safetensors)");
      job.input_ids = demo_input_ids();
    }
    const int64_t vocab = job.arch->vocab_size();
    const int64_t max_id = job.input_ids.max().item<int64_t>();
    PS_CHECK(max_id < vocab, ConfigError, "input token id {} is out of range: the model's vocabulary has {} tokens",
             max_id, vocab);
    pipeline::micro_batch_sizes(job.input_ids.size(0), o.micro_batches);  // validates --micro-batches
    shape = fmt::format("{} {}", job.input_ids.size(0), job.input_ids.size(1));
  }
  if (world.rank == 0) {
    int stored = -1;
    try {
      stored = stored_dtype_code(job);
    } catch (const CheckpointError& e) {
      if (!plan_only) throw;
      // A plan needs no weights: a shard not (yet) readable leaves the dtype to config.json.
      log().warn("{}; the plan takes the dtype from config.json", e.what());
    }
    shape += fmt::format(" {}", stored);
  }
  if (!plan_only && world.size > 1) shape = pipeline::allgather_strings(t, shape).at(0);
  int64_t batch = 0, seq = 0;
  int stored = -1;
  std::sscanf(shape.c_str(), "%ld %ld %d", &batch, &seq, &stored);

  job.plan = make_job_plan(o, world, t, job, batch > 0 ? (batch + o.micro_batches - 1) / o.micro_batches : 0, seq,
                           o.micro_batches, 1, stored);
  return job;
}

}  // namespace

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
  // --trace: records from here (weight loading included)
  rt.trace = std::make_unique<pipeline::JobTrace>(o.trace, rt.device, world.rank);
  const auto t_load = Clock::now();
  const offload::OwnedParts owned{me.first_block, me.end_block, me.prologue, me.epilogue};
  rt.weights = offload::make_block_weights(*job.arch, job.ckpt, owned, me.layout, rt.device, job.plan.offload);
  log().info("loaded {} of weights ({} read from {}) in {:.2f} s", pipeline::format_bytes(rt.weights->device_bytes()),
             pipeline::format_bytes(static_cast<int64_t>(job.ckpt->bytes_read())), job.model_dir, since(t_load));
  transport->barrier();
  return rt;
}

std::string rank_lines(const pipeline::Plan& plan) {
  std::string s = fmt::format("  compute dtype {} ({})\n", dtype_word(plan.dtype), plan.dtype_source);
  for (const auto& r : plan.ranks) {
    s += fmt::format(
        "  rank {} {:<6} {}\n", r.rank, r.device.str(),
        r.idle()
            ? std::string("idle")
            : fmt::format("blocks {}..{} ({}){}{}{}", r.first_block, r.end_block - 1, r.num_blocks(),
                          r.prologue ? " +prologue" : "", r.epilogue ? " +epilogue" : "",
                          r.swapped_blocks().empty() ? "" : fmt::format(", {} swapped", r.swapped_blocks().size())));
  }
  return s;
}

void log_memory(const pipeline::RankPlan& me, const offload::BlockWeights& weights, torch::Device device) {
  const offload::OffloadStats st = weights.stats();
  if (device.is_cuda()) {
    if (auto peak = device_peak_allocated(device.index())) {
      log().info("device memory peak {} bytes allocated (plan {} bytes, {:+.1f}%)", *peak, me.device_bytes,
                 100.0 * (static_cast<double>(*peak) - me.device_bytes) / std::max<int64_t>(1, me.device_bytes));
    }
  }
  log().info("memory: device weights {} (plan {} incl. {} activations), host {} (plan {}), read from disk during "
             "the run {} (plan {}){}",
             pipeline::format_bytes(st.device_bytes), pipeline::format_bytes(me.device_bytes),
             pipeline::format_bytes(me.activation_bytes), pipeline::format_bytes(st.host_peak_bytes),
             pipeline::format_bytes(me.host_bytes), pipeline::format_bytes(st.disk_bytes_read),
             pipeline::format_bytes(me.disk_read_bytes), st.copies ? fmt::format(", {} slot fills", st.copies) : "");
}

namespace {

int cmd_plan(const Options& o, const World& world, comm::Transport& t) {
  Job job = prepare(o, world, t, /*plan_only=*/true);
  if (world.rank == 0) {
    std::cout << job.plan.to_text() << std::flush;
    if (!o.json.empty()) write_text_atomically(o.json, "plan JSON", job.plan.to_json().dump(2) + "\n");
  }
  return 0;
}

int cmd_run(const Options& o, const World& world, std::unique_ptr<comm::Transport>& transport) {
  const auto t_start = Clock::now();
  if (world.rank == 0) pipeline::check_output_path(o.output);
  set_threads(o, world);
  Job job = prepare(o, world, *transport, /*plan_only=*/false);
  const pipeline::RankPlan& me = job.plan.ranks.at(world.rank);
  RankRuntime rt = start_rank(o, world, transport, job);
  comm::Transport& t = *transport;
  const torch::Device device = rt.device;
  offload::BlockWeights* weights = rt.weights.get();

  // --repeat N: the same forward N times (benchmarks time warm passes); the last pass's logits are
  // written, and the summary reports the median pass (the first, cold one only when it is the only one).
  std::vector<double> passes;
  pipeline::ForwardResult result;
  for (int k = 0; k < o.repeat; ++k) {
    result = pipeline::run_forward(job.plan, world.rank, *job.arch, *weights, t, job.input_ids, device);
    passes.push_back(result.seconds);
    if (o.repeat > 1) log().info("forward pass {}/{}: {:.6f} s", k + 1, o.repeat, result.seconds);
  }
  if (passes.size() > 1) {
    std::vector<double> warm(passes.begin() + 1, passes.end());
    std::sort(warm.begin(), warm.end());
    const size_t n = warm.size();
    result.seconds = n % 2 ? warm[n / 2] : (warm[n / 2 - 1] + warm[n / 2]) / 2;
  }
  rt.trace->finish(t);
  log_memory(me, *weights, device);
  if (world.rank == 0) {
    write_safetensors(o.output, {{"logits", result.logits}},
                      {{"producer", "pipeswap"}});
  }
  t.barrier();
  if (world.rank == 0) {
    const int64_t tokens = job.input_ids.numel();
    std::string s = fmt::format("pipeswap run: {} ({}), {} blocks on {} rank(s), {} micro-batch(es)\n",
                                job.model_dir, job.plan.family, job.plan.num_blocks, world.size, o.micro_batches);
    s += rank_lines(job.plan);
    s += fmt::format("  tokens {} ({} x {}), forward {:.6f} s{} ({:.0f} tokens/s), total {:.2f} s\n", tokens,
                     job.input_ids.size(0), job.input_ids.size(1), result.seconds,
                     o.repeat > 1 ? fmt::format(" (median of {} warm passes)", o.repeat - 1) : "",
                     tokens / result.seconds,
                     since(t_start));
    s += fmt::format("  logits {} float32 -> {} (to the host in {:.3f} s)\n", fmt::join(result.logits.sizes(), "x"),
                     o.output, result.copy_seconds);
    std::cout << s << std::flush;
  }
  return 0;
}

}  // namespace

std::unique_ptr<comm::Transport> make_transport(const World& world, const Options& opts) {
  comm::TransportOptions to;
  to.timeout = std::chrono::milliseconds(static_cast<int64_t>(opts.comm_timeout * 1000));
  switch (world.launcher) {
    case World::Launcher::kMpi: return comm::make_mpi_transport(to);
    case World::Launcher::kTorchrun:
    case World::Launcher::kSlurm:
      return comm::make_tcp_transport(world.rank, world.size, world.master_addr, world.master_port, to);
    default: return comm::make_self_transport();
  }
}

int run_command(const Options& opts, const World& world, std::unique_ptr<comm::Transport>& transport) {
  log().debug("{} rank {} of {} via {}", opts.command, world.rank, world.size, world.launcher_name());
  if (opts.command == "plan") return cmd_plan(opts, world, *transport);
  if (opts.command == "denoise") return cmd_denoise(opts, world, transport);
  return cmd_run(opts, world, transport);
}

}  // namespace pipeswap::launcher
