#include "pipeswap/pipeline/plan.h"

#include "pipeswap/core/dtype.h"

#include <c10/util/typeid.h>

#include <algorithm>
#include <map>

#include "pipeswap/core/error.h"
#include "pipeswap/core/torch_compat.h"
#include "pipeswap/offload/components.h"
#include "pipeswap/offload/slab.h"

namespace pipeswap::pipeline {

constexpr int64_t kLibraryWorkspaceBytes = int64_t{40} << 20;

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

std::vector<int> Plan::stages(int group) const {
  std::vector<int> s;
  const int n = group_size();
  for (int r = group * n; r < (group + 1) * n && r < static_cast<int>(ranks.size()); ++r)
    if (!ranks[static_cast<size_t>(r)].idle()) s.push_back(r);
  return s;
}

int Plan::prev_stage(int rank) const {
  auto s = stages(group_of(rank));
  for (size_t i = 1; i < s.size(); ++i)
    if (s[i] == rank) return s[i - 1];
  return -1;
}

int Plan::next_stage(int rank) const {
  auto s = stages(group_of(rank));
  for (size_t i = 0; i + 1 < s.size(); ++i)
    if (s[i] == rank) return s[i + 1];
  return -1;
}

namespace {


// Component bytes a rank holds: resident ones on the device, host-kept ones on the host, and the
// largest part that moves in for a use (host-kept or on demand) on the device while it is used.
struct ComponentBytes {
  int64_t device = 0;
  int64_t host = 0;
  int64_t transient = 0;
};
ComponentBytes component_bytes_of(const offload::RankComponents& held,
                                  const std::map<std::string, offload::ComponentMode>& modes, c10::ScalarType dtype,
                                  const offload::WeightStorage& storage) {
  ComponentBytes out;
  for (const auto& part : held.parts) {
    const int64_t bytes = offload::make_layout(part, dtype, storage.part(part)).bytes;
    switch (modes.at(part.name)) {
      case offload::ComponentMode::kResident:
        out.device += bytes;
        break;
      case offload::ComponentMode::kHost:
        out.host += bytes;
        out.transient = std::max(out.transient, bytes);
        break;
      case offload::ComponentMode::kOnDemand:
        out.transient = std::max(out.transient, bytes);
        break;
    }
  }
  return out;
}

// Bytes of a part's tensors as they rest (no slab padding): part_bytes in the compute dtype, fp8 weights
// as one byte an element plus their float32 scale.
int64_t rest_bytes(const PartSpec& part, c10::ScalarType dtype, const std::vector<Fp8Storage>& fp8) {
  if (fp8.empty()) return part_bytes(part, dtype);
  int64_t n = 0;
  for (size_t i = 0; i < part.tensors.size(); ++i) {
    const auto& shape = part.tensors[i].shape;
    n += fp8[i].fp8() ? tensor_bytes(shape, c10::ScalarType::Byte) + 4 * fp8[i].scale_numel(shape)
                      : tensor_bytes(shape, dtype);
  }
  return n;
}

// The largest temporary one dequantise makes (issue 17): the biggest fp8 tensor of the part, converted on
// the device just before its use and freed after it. LibTorch >= 2.1 converts straight to the compute
// dtype (one tensor in it); 1.13 indexes a float32 table with int32 indices first (8 bytes an element).
int64_t dequantise_temporary_bytes(const PartSpec& part, c10::ScalarType dtype, const std::vector<Fp8Storage>& fp8) {
  int64_t most = 0;
  for (size_t i = 0; i < fp8.size() && i < part.tensors.size(); ++i) {
    if (!fp8[i].fp8()) continue;
    const int64_t in_dtype = tensor_bytes(part.tensors[i].shape, dtype);
    const int64_t n = tensor_bytes(part.tensors[i].shape, c10::ScalarType::Byte);
    most = std::max(most, compat::kHasFloat8 ? in_dtype : std::max(8 * n, 4 * n + in_dtype));
  }
  return most;
}

// One line on how the weights rest, for the plan and the run's summary ("" when nothing is fp8).
std::string describe_storage(const models::Architecture& arch, const offload::WeightStorage& s,
                             const std::string& weight_dtype, const offload::OffloadOptions& o,
                             const std::vector<ChainEntry>& chain) {
  if (!s.any_fp8()) return weight_dtype == "fp8" ? "--weight-dtype fp8: no block matrix to quantise" : "";
  std::map<std::string, int> kinds;
  int n = 0, total = 0;
  bool quantised = false;
  for (int p = 0; p < static_cast<int>(arch.phase_names().size()); ++p) {
    const auto st = s.phase(arch, p);
    total += static_cast<int>(arch.phase_tensors(0, p).size());
    for (const auto& f : st) {
      if (!f.fp8()) continue;
      ++n;
      quantised = quantised || f.quantise;
      kinds[fmt::format("{} {}", to_string(f.format),
                        f.scale == Fp8Scale::kNone        ? "unscaled"
                        : f.scale == Fp8Scale::kPerTensor ? "per-tensor scale"
                                                          : "per-channel scale")]++;
    }
  }
  std::string k;
  for (const auto& [name, c] : kinds) k += (k.empty() ? "" : ", ") + name;
  std::string out = fmt::format("fp8 weights: {} of {} tensors per block ({}){}", n, total, k.empty() ? "-" : k,
                                quantised ? ", quantised from the checkpoint at load per output channel "
                                            "(--weight-dtype fp8)"
                                          : ", as stored");
  out += fmt::format("; {} non-block tensor(s) stored in fp8", s.components.size());
  out += "; kept as fp8 bytes on the host, on disk reads and in device slots, dequantised on the device ";
  const bool cuda = std::any_of(chain.begin(), chain.end(), [](const auto& e) { return e.device.is_cuda(); });
  const bool cpu = std::any_of(chain.begin(), chain.end(), [](const auto& e) { return !e.device.is_cuda(); });
  const bool ahead_cuda = offload::dequantise_ahead(o, true), ahead_cpu = offload::dequantise_ahead(o, false);
  if ((!cuda || ahead_cuda) && (!cpu || ahead_cpu)) {
    out += "a phase ahead of its compute (blocks; non-block tensors per use)";
  } else if ((!cuda || !ahead_cuda) && (!cpu || !ahead_cpu)) {
    out += "per use";
  } else {
    out += "a phase ahead on CUDA ranks, per use on CPU ranks";
  }
  return out;
}

// Resident and swapped blocks of one rank, and its predicted peaks.
void plan_residency(const models::Architecture& arch, const PlanInputs& in, const offload::RankComponents& held,
                    RankPlan& rp) {
  rp.layout.first_block = rp.first_block;
  rp.layout.end_block = rp.end_block;
  rp.layout.dtype = in.dtype;
  if (rp.idle()) return;
  const ComponentBytes comp = component_bytes_of(held, offload::component_modes(arch, in.offload), in.dtype, in.offload.storage);
  const int64_t components = comp.device + comp.transient;
  offload::OffloadOptions opts = in.offload;
  if (rp.rank < static_cast<int>(in.max_memory.size())) opts.max_memory = in.max_memory[rp.rank];
  offload::SwapLayout layout;
  auto device_for = [&](const offload::SwapLayout& l) {
    return components + l.resident_bytes + l.slot_bytes * l.num_slots + rp.activation_bytes + rp.workspace_bytes +
           rp.kv_cache_bytes;
  };
  const int64_t budget = rp.rank < static_cast<int>(in.vram_budget.size()) ? in.vram_budget[rp.rank] : 0;
  if (budget > 0) {
    // Automatic VRAM mode: the fewest swapped blocks whose peak fits the budget.
    opts.offload_ratio.reset();
    int swap = 0;
    for (; swap <= rp.num_blocks(); ++swap) {
      opts.blocks_to_swap = swap;
      layout = offload::plan_swapping(arch, rp.first_block, rp.end_block, in.dtype, opts);
      if (device_for(layout) <= budget) break;
    }
    PS_CHECK(swap <= rp.num_blocks(), ConfigError,
             "--vram-budget {} is too small for rank {}: with every block swapped it needs at least {} ({} for "
             "embeddings/head, {} slots of {}, {} for activations); raise the budget or use more ranks",
             format_bytes(budget), rp.rank, format_bytes(device_for(layout)), format_bytes(components),
             layout.num_slots, format_bytes(layout.slot_bytes), format_bytes(rp.activation_bytes));
  } else {
    layout = offload::plan_swapping(arch, rp.first_block, rp.end_block, in.dtype, opts);
  }
  rp.device_bytes = device_for(layout);
  rp.host_bytes = layout.host_bytes + comp.host;
  rp.layout = std::move(layout);
}

// Rough rates for the cost model: what a block's arithmetic reaches (bf16/fp16 GEMMs on a GPU, fp32
// without TF32, a CPU rank's cores) and what a fill moves per second (pinned host memory to a GPU, a
// memcpy on a CPU rank; the disk tier when units stream from disk every sweep).
double compute_rate(const DeviceSpec& d, c10::ScalarType dtype) {
  if (!d.is_cuda()) return 2e11;
  return dtype == c10::ScalarType::Float ? 4e13 : 4e14;
}
// Device memory read per second (HBM on a GPU, DRAM on a CPU rank): decode reads every weight once per micro-batch.
double memory_rate(const DeviceSpec& d) { return d.is_cuda() ? 3e12 : 2e10; }
double link_rate(const DeviceSpec& d, const offload::SwapLayout& l) {
  const double link = d.is_cuda() ? 5e10 : 1e10;
  const double disk = 1.5e9;
  if (l.streamed_bytes <= 0) return link;
  // Streamed units come off the disk every sweep: the slower of the two for their share.
  const double share = static_cast<double>(l.streamed_bytes) / static_cast<double>(std::max<int64_t>(1, l.swapped_bytes));
  return 1.0 / ((1 - share) / link + share / disk);
}

// The swap order of a rank with swapped units, the fills it implies and what shared fills hold.
void plan_swap_order(const models::Architecture& arch, const PlanInputs& in, int stages, int64_t act, RankPlan& rp) {
  const int m = std::max(1, in.micro_batches);
  const int64_t swapped_units =
      std::count_if(rp.layout.units.begin(), rp.layout.units.end(), [](const offload::Unit& u) { return u.swapped; });
  // fp8 weights are dequantised at each use: about 351 MB of fp8 in 2.55 ms on an H200 (issue 17's
  // measurement, 1.4e11 bytes/s), a few GB/s on CPU cores.
  int64_t fp8_bytes = 0;
  for (const auto& u : rp.layout.units)
    for (const auto& part : u.parts)
      for (const auto& e : part.entries)
        if (e.fp8.fp8()) fp8_bytes += e.nbytes;
  const double dequantise = static_cast<double>(fp8_bytes) / (rp.device.is_cuda() ? 1.4e11 : 2e9);
  const double compute =
      in.batch > 0 && in.seq > 0
          ? arch.block_flops(in.batch, in.seq) * rp.num_blocks() / compute_rate(rp.device, in.dtype) + dequantise
          : 0;
  const double transfer =
      swapped_units > 0 ? static_cast<double>(rp.layout.swapped_bytes) / link_rate(rp.device, rp.layout) : 0;
  const SwapOrderChoice c = choose_swap_order(compute, transfer, m, stages, in.offload.swap_order);
  if (swapped_units > 0) {
    rp.shared_fills = c.shared;
    rp.per_micro_batch_seconds = c.per_micro_batch_seconds;
    rp.shared_seconds = c.shared_seconds;
  }
  if (compute > 0) rp.pass_seconds = rp.shared_fills ? c.shared_seconds : c.per_micro_batch_seconds;
  const int sweeps_per_pass = rp.shared_fills ? 1 : m;
  rp.fills_per_pass = swapped_units * sweeps_per_pass;
  rp.disk_read_bytes = in.offload.lazy_load ? rp.layout.disk_bytes(sweeps_per_pass * in.sweeps) : 0;
  if (in.offload.lazy_load) {
    // Per pass, as `run --repeat` measures it: the first pass also reads what the host cache keeps.
    rp.disk_read_first_pass_bytes = rp.layout.disk_bytes(sweeps_per_pass);
    rp.disk_read_pass_bytes = rp.layout.disk_bytes(2 * sweeps_per_pass) - rp.disk_read_first_pass_bytes;
  }
  if (rp.shared_fills && act > 0) {
    // Every micro-batch of the pass is held at once.
    rp.activation_bytes += static_cast<int64_t>(m - 1) * act;
    rp.device_bytes += static_cast<int64_t>(m - 1) * act;
  }
}

// Generation's estimate from the ranks' plans (make_plan, with a K/V cache).
GenerationEstimate plan_generation(const models::Architecture& arch, const PlanInputs& in,
                                   const std::vector<RankPlan>& ranks) {
  const int m = std::max(1, in.micro_batches);
  const int64_t rows = (in.kv_batch + m - 1) / m;
  const int64_t context = std::max<int64_t>(1, in.kv_seq / 2);
  std::vector<DecodeStage> stages;
  bool shared = false;
  double prefill = 0;
  const int64_t prompt = in.seq > 0 ? std::min(in.seq, in.kv_seq) : 0;
  for (const RankPlan& rp : ranks) {
    if (rp.idle()) continue;
    shared = shared || (rp.shared_fills && m > 1);  // the text job shares fills on every rank then
    const double rate = compute_rate(rp.device, in.dtype);
    const double mem = memory_rate(rp.device);
    DecodeStage st;
    st.rank = rp.rank;
    st.compute = (arch.decode_block_flops(rows, context) * rp.num_blocks() + (rp.epilogue ? arch.head_flops(rows) : 0)) /
                 rate;
    st.memory = static_cast<double>(rp.weight_bytes + arch.kv_cache_bytes(rp.num_blocks(), rows, context, in.dtype)) /
                mem;
    st.transfer = rp.layout.swapped_bytes > 0 ? static_cast<double>(rp.layout.swapped_bytes) / link_rate(rp.device, rp.layout)
                                              : 0;
    stages.push_back(st);
    if (prompt > 0) {
      const double c = (arch.block_flops(1, prompt) * rp.num_blocks() + (rp.epilogue ? arch.head_flops(1) : 0)) / rate;
      prefill += std::max({c, static_cast<double>(rp.weight_bytes) / mem, st.transfer});
    }
  }
  GenerationEstimate g = estimate_decode(stages, in.kv_batch, m, shared);
  g.context = context;
  g.prompt_tokens = prompt;
  if (prefill > 0) g.prefill_tokens_per_second = static_cast<double>(prompt) / prefill;
  return g;
}

}  // namespace

GenerationEstimate estimate_decode(const std::vector<DecodeStage>& stages, int64_t batch, int micro_batches,
                                   bool shared) {
  GenerationEstimate g;
  g.batch = batch;
  g.micro_batches = std::max(1, micro_batches);
  g.shared = shared && g.micro_batches > 1;
  g.stages = stages;
  if (stages.empty() || batch <= 0) return g;
  const double m = g.micro_batches;
  double sum = 0, busiest = -1;
  const DecodeStage* top = nullptr;
  for (const DecodeStage& s : stages) {
    const double work = std::max(s.compute, s.memory);
    const double t = g.shared ? std::max(m * work, s.transfer) : std::max(work, s.transfer);
    sum += t;
    if (t > busiest) {
      busiest = t;
      top = &s;
    }
  }
  const double work = std::max(top->compute, top->memory);
  const std::string resource = top->transfer > (g.shared ? m : 1.0) * work ? "swap transfers"
                               : top->memory >= top->compute               ? "memory bandwidth"
                                                                           : "compute";
  if (g.shared) {
    g.step_seconds = sum;
  } else {
    g.step_seconds = std::max(m * busiest, sum);
  }
  // The sum wins over the busiest stage only with several stages and too few micro-batches to fill them.
  const bool latency = stages.size() > 1 && (g.shared || sum > m * busiest);
  g.bound = latency && !g.shared ? "pipeline latency" : resource;
  g.bound_rank = latency && !g.shared ? -1 : top->rank;
  if (g.step_seconds > 0) g.tokens_per_second = static_cast<double>(batch) / g.step_seconds;
  return g;
}

SwapOrderChoice choose_swap_order(double compute, double transfer, int micro_batches, int stages,
                                  offload::SwapOrder requested) {
  SwapOrderChoice c;
  const double m = std::max(1, micro_batches), p = std::max(1, stages);
  c.per_micro_batch_seconds = (m + p - 1) * std::max(compute, transfer);
  c.shared_seconds = p * std::max(m * compute, transfer);
  switch (requested) {
    case offload::SwapOrder::kShared: c.shared = micro_batches > 1; break;
    case offload::SwapOrder::kPerMicroBatch: c.shared = false; break;
    default: c.shared = micro_batches > 1 && c.shared_seconds < 0.98 * c.per_micro_batch_seconds;
  }
  return c;
}

Plan make_plan(const models::Architecture& arch, const PlanInputs& in) {
  PS_CHECK(!in.chain.empty(), Error, "make_plan needs one device chain entry per rank, got none");
  offload::check_offload_options(in.offload);  // before automatic VRAM mode replaces blocks_to_swap
  Plan plan;
  plan.model_dir = in.model_dir;
  plan.family = arch.family();
  plan.num_blocks = arch.num_blocks();
  plan.dtype = in.dtype;
  plan.dtype_source = in.dtype_source;
  plan.weight_storage = describe_storage(arch, in.offload.storage, in.weight_dtype, in.offload, in.chain);
  plan.micro_batches = in.micro_batches;
  plan.offload = in.offload;

  const int n = static_cast<int>(in.chain.size());
  const int groups = in.guidance_groups;
  PS_CHECK(groups >= 1 && n % groups == 0, ConfigError,
           "--cfg-parallel {} needs a device chain of a multiple of {} entries (one group of stages per guidance "
           "branch); it has {}",
           groups, groups, n);
  plan.guidance_groups = groups;
  const int p = n / groups;  // ranks per group
  // Each group spreads every block over its own chain entries, as one pipeline would.
  std::vector<int> counts(n, 0);
  for (int g = 0; g < groups; ++g) {
    std::vector<int> c(p, 0);
    if (in.workload_split) {
      std::vector<double> weights;
      for (int i = 0; i < p; ++i) weights.push_back(in.chain[static_cast<size_t>(g * p + i)].weight);
      c = partition_blocks(plan.num_blocks, weights);
    } else {
      c[0] = plan.num_blocks;  // workload_split=false: the first device (of each group) runs everything
    }
    for (int i = 0; i < p; ++i) counts[static_cast<size_t>(g * p + i)] = c[static_cast<size_t>(i)];
  }
  std::vector<int> last_busy(groups, 0), stages(groups, 0);
  for (int r = 0; r < n; ++r) {
    if (counts[r] > 0) last_busy[r / p] = r;
    if (counts[r] > 0) ++stages[r / p];
  }
  const int64_t act = (in.batch > 0 && in.seq > 0) ? arch.activation_bytes(in.batch, in.seq, in.dtype) : 0;
  int start = 0;
  for (int r = 0; r < n; ++r) {
    const int g = r / p;
    if (r % p == 0) start = 0;
    RankPlan rp;
    rp.rank = r;
    rp.group = g;
    rp.device = in.chain[r].device;
    rp.weight = in.chain[r].weight;
    rp.first_block = start;
    rp.end_block = start + counts[r];
    start = rp.end_block;
    rp.prologue = (r == g * p);
    rp.epilogue = (r == last_busy[g]);
    // Every block and component this rank holds, tied embeddings once.
    const offload::RankComponents held =
        offload::rank_components(arch, {rp.first_block, rp.end_block, rp.prologue, rp.epilogue});
    int64_t dequantise = 0;
    for (const auto& part : held.parts) {
      rp.weight_bytes += rest_bytes(part, in.dtype, in.offload.storage.part(part));
      dequantise = std::max(dequantise, dequantise_temporary_bytes(part, in.dtype, in.offload.storage.part(part)));
    }
    // fp8 block weights dequantised ahead (offload/src/fp8_ahead.h): two fixed workspaces of the largest
    // phase's fp8 tensors in the compute dtype (the phase in use and the one ahead) instead of per-use
    // temporaries; components are still dequantised per use.
    const bool ahead = rp.num_blocks() > 0 && offload::dequantise_ahead(in.offload, rp.device.is_cuda());
    const int64_t ahead_bytes = ahead ? 2 * offload::fp8_workspace_bytes(arch, in.offload.storage, in.dtype) : 0;
    for (int b = rp.first_block; b < rp.end_block; ++b) {
      const auto parts = block_parts(arch, b);
      for (size_t ph = 0; ph < parts.size(); ++ph) {
        const auto& storage = in.offload.storage.phase(arch, static_cast<int>(ph));
        rp.weight_bytes += rest_bytes(parts[ph], in.dtype, storage);
        if (!ahead) dequantise = std::max(dequantise, dequantise_temporary_bytes(parts[ph], in.dtype, storage));
      }
    }
    if (!rp.idle() && act > 0) {
      rp.activation_bytes = 2 * act + arch.cache_bytes(rp.num_blocks(), in.micro_batches, in.batch, in.dtype);
      rp.workspace_bytes = std::max({arch.block_workspace_bytes(in.batch, in.seq, in.dtype),
                                     rp.prologue ? arch.prologue_workspace_bytes(in.batch, in.seq, in.dtype) : 0,
                                     rp.epilogue ? arch.epilogue_workspace_bytes(in.batch, in.seq, in.dtype) : 0});
      // Rank 0 keeps every micro-batch's output on its device until the forward ends.
      if (rp.epilogue && r == g * p && in.micro_batches > 1)
        rp.workspace_bytes += (in.micro_batches - 1) * arch.output_bytes(in.batch, in.seq, in.dtype);
    }
    // cuBLAS and cuDNN take workspaces through LibTorch's caching allocator (about 35 MB measured on an
    // H100 with LibTorch 2.11, docs/gpu-runs.md 2026-11-22).
    if (!rp.idle() && rp.device.is_cuda()) rp.workspace_bytes += kLibraryWorkspaceBytes;
    // An fp8 weight's dequantised copy lives beside the block's activations while its layer runs.
    if (!rp.idle()) rp.workspace_bytes += dequantise + ahead_bytes;
    if (!rp.idle() && in.kv_batch > 0 && in.kv_seq > 0)
      rp.kv_cache_bytes = arch.kv_cache_bytes(rp.num_blocks(), in.kv_batch, in.kv_seq, in.dtype);
    plan_residency(arch, in, held, rp);
    if (!rp.idle()) plan_swap_order(arch, in, stages[g], act, rp);
    plan.ranks.push_back(rp);
  }
  for (const auto& r : plan.ranks) plan.step_seconds = std::max(plan.step_seconds, r.pass_seconds);
  if (groups > 1 && plan.step_seconds > 0) {
    // Each group's last stage sends its outputs to every other group's leader: small tensors over the link.
    const double out = static_cast<double>(arch.output_bytes(in.batch, in.seq, c10::ScalarType::Float));
    plan.step_seconds += std::max(1, in.micro_batches) * (groups - 1) * out /
                         (in.chain.front().device.is_cuda() ? 5e10 : 1e10);
  }
  if (in.kv_batch > 0 && in.kv_seq > 0) plan.generation = plan_generation(arch, in, plan.ranks);
  return plan;
}

ArrangementChoice choose_arrangement(const models::Architecture& arch, const PlanInputs& in, bool guidance,
                                     int requested) {
  const int n = static_cast<int>(in.chain.size());
  const int units = std::max(1, in.micro_batches);
  PS_CHECK(requested >= 0 && requested <= 2, ConfigError, "--cfg-parallel takes auto, 1 or 2 (got {})", requested);
  PS_CHECK(requested < 2 || guidance, ConfigError,
           "--cfg-parallel 2 runs the conditional and the unconditional branch on separate ranks: it needs guidance "
           "(--guidance > 1)");
  PS_CHECK(requested < 2 || (n % 2 == 0 && units % 2 == 0), ConfigError,
           "--cfg-parallel 2 needs an even number of ranks (one group of stages per guidance branch); the device "
           "chain has {}",
           n);
  ArrangementChoice out;
  for (int g = 1; g <= 2; ++g) {
    if (g == 2 && !(guidance && n % 2 == 0 && units % 2 == 0)) continue;
    if (requested != 0 && requested != g) continue;
    Arrangement a;
    a.guidance_groups = g;
    a.stages = n / g;
    PlanInputs pi = in;
    pi.guidance_groups = g;
    pi.micro_batches = units / g;
    try {
      a.plan = make_plan(arch, pi);
      a.stages = static_cast<int>(a.plan.stages(0).size());
    } catch (const ConfigError& e) {
      if (requested != 0 || in.vram_budget.empty()) throw;  // only a budget makes an arrangement not fit
      a.error = e.what();
    }
    out.candidates.push_back(std::move(a));
  }
  // The fastest that fits; the pipeline alone unless another is predicted faster.
  int best = -1;
  for (size_t i = 0; i < out.candidates.size(); ++i) {
    const Arrangement& a = out.candidates[i];
    if (!a.error.empty()) continue;
    if (best < 0) {
      best = static_cast<int>(i);
      continue;
    }
    const double b = out.candidates[static_cast<size_t>(best)].plan.step_seconds, s = a.plan.step_seconds;
    if (s > 0 && b > 0 && s < 0.98 * b) best = static_cast<int>(i);
  }
  if (best < 0) {
    // Nothing fits: the pipeline's error says why.
    PS_THROW(ConfigError, "{}", out.candidates.front().error);
  }
  out.chosen = best;
  return out;
}

std::string ArrangementChoice::to_text() const {
  std::string s = "  arrangements (guidance groups x stages), predicted step and per-rank peaks:\n";
  for (size_t i = 0; i < candidates.size(); ++i) {
    const Arrangement& a = candidates[i];
    const std::string name = a.guidance_groups == 1 ? "pipeline only"
                             : a.stages == 1         ? "CFG-parallel"
                                                     : "CFG-parallel + pipeline";
    std::string line = fmt::format("  {} {} x {} ({})", static_cast<int>(i) == chosen ? "*" : " ", a.guidance_groups,
                                   a.stages, name);
    if (!a.error.empty()) {
      s += line + ": does not fit: " + a.error + "\n";
      continue;
    }
    line += a.plan.step_seconds > 0 ? fmt::format(": {:.4g} s/step", a.plan.step_seconds) : ": step not predicted";
    std::vector<std::string> dev;
    for (const auto& r : a.plan.ranks) dev.push_back(format_bytes(r.device_bytes));
    line += fmt::format("; device per rank {}", fmt::join(dev, ", "));
    std::vector<std::string> host;
    for (const auto& r : a.plan.ranks) host.push_back(format_bytes(r.host_bytes));
    line += fmt::format("; host {}", fmt::join(host, ", "));
    s += line + "\n";
  }
  return s;
}

nlohmann::json ArrangementChoice::to_json() const {
  nlohmann::json j = nlohmann::json::array();
  for (size_t i = 0; i < candidates.size(); ++i) {
    const Arrangement& a = candidates[i];
    nlohmann::json ja = {{"guidance_groups", a.guidance_groups}, {"stages", a.stages},
                         {"chosen", static_cast<int>(i) == chosen}};
    if (!a.error.empty()) {
      ja["fits"] = false;
      ja["error"] = a.error;
    } else {
      ja["fits"] = true;
      ja["predicted_step_seconds"] = a.plan.step_seconds;
      nlohmann::json dev = nlohmann::json::array(), host = nlohmann::json::array();
      for (const auto& r : a.plan.ranks) {
        dev.push_back(r.device_bytes);
        host.push_back(r.host_bytes);
      }
      ja["predicted_device_bytes"] = dev;
      ja["predicted_host_bytes"] = host;
    }
    j.push_back(ja);
  }
  return j;
}

nlohmann::json Plan::to_json() const {
  nlohmann::json j;
  j["model"] = model_dir;
  j["family"] = family;
  j["num_blocks"] = num_blocks;
  j["dtype"] = dtype_word(dtype);
  j["dtype_source"] = dtype_source;
  j["weight_storage"] = weight_storage.empty() ? "compute dtype" : weight_storage;
  j["micro_batches"] = micro_batches;
  j["guidance_groups"] = guidance_groups;
  j["predicted_step_seconds"] = step_seconds;
  j["offload"] = {{"granularity", offload::to_string(offload.granularity)},
                  {"swap_order", offload::to_string(offload.swap_order)},
                  {"resident_policy", offload::to_string(offload.policy)},
                  {"prefetch_depth", offload.prefetch_depth},
                  {"use_non_blocking", offload.use_non_blocking},
                  {"lazy_load", offload.lazy_load},
                  {"num_disk_workers", offload.num_disk_workers},
                  {"max_memory", offload.max_memory},
                  {"fp8_dequantise", offload::to_string(offload.fp8_dequantise)}};
  j["ranks"] = nlohmann::json::array();
  for (const auto& r : ranks) {
    nlohmann::json jr;
    jr["rank"] = r.rank;
    jr["group"] = r.group;
    jr["device"] = r.device.str();
    jr["weight"] = r.weight;
    jr["blocks"] = {r.first_block, r.end_block};
    jr["num_blocks"] = r.num_blocks();
    jr["prologue"] = r.prologue;
    jr["epilogue"] = r.epilogue;
    jr["idle"] = r.idle();
    jr["weight_bytes"] = r.weight_bytes;
    jr["activation_bytes"] = r.activation_bytes;
    jr["workspace_bytes"] = r.workspace_bytes;
    jr["kv_cache_bytes"] = r.kv_cache_bytes;
    const std::vector<int> swapped = r.swapped_blocks();
    jr["swapped_blocks"] = swapped;
    jr["resident_blocks"] = nlohmann::json::array();
    for (int b = r.first_block; b < r.end_block; ++b)
      if (std::find(swapped.begin(), swapped.end(), b) == swapped.end()) jr["resident_blocks"].push_back(b);
    jr["swap_slots"] = r.layout.num_slots;
    jr["slot_bytes"] = r.layout.slot_bytes;
    jr["predicted_device_bytes"] = r.device_bytes;
    jr["predicted_host_bytes"] = r.host_bytes;
    jr["predicted_disk_read_bytes"] = r.disk_read_bytes;
    jr["predicted_disk_read_first_pass_bytes"] = r.disk_read_first_pass_bytes;
    jr["predicted_disk_read_pass_bytes"] = r.disk_read_pass_bytes;
    jr["host_cache_blocks"] = nlohmann::json::array();  // lazy_load: swapped blocks whose every unit stays
    for (int b : r.layout.cached_block_ids()) jr["host_cache_blocks"].push_back(b);
    jr["swap_order"] = r.shared_fills ? "shared" : "per-micro-batch";
    jr["fills_per_pass"] = r.fills_per_pass;
    jr["predicted_seconds_per_pass"] = {{"per-micro-batch", r.per_micro_batch_seconds}, {"shared", r.shared_seconds}};
    j["ranks"].push_back(jr);
  }
  if (generation.known()) {
    const GenerationEstimate& g = generation;
    nlohmann::json stages = nlohmann::json::array();
    for (const auto& st : g.stages)
      stages.push_back({{"rank", st.rank}, {"compute_seconds", st.compute}, {"memory_seconds", st.memory},
                        {"transfer_seconds", st.transfer}});
    j["generation"] = {{"batch", g.batch},
                       {"context", g.context},
                       {"micro_batches", g.micro_batches},
                       {"swap_order", g.shared ? "shared" : "per-micro-batch"},
                       {"predicted_step_seconds", g.step_seconds},
                       {"predicted_decode_tokens_per_second", g.tokens_per_second},
                       {"bound", g.bound},
                       {"bound_rank", g.bound_rank},
                       {"prompt_tokens", g.prompt_tokens},
                       {"predicted_prefill_tokens_per_second", g.prefill_tokens_per_second},
                       {"stages", stages}};
  }
  return j;
}

std::string Plan::to_text() const {
  std::string s = fmt::format("plan: {} ({}), {} blocks, {}, {} micro-batch(es), {} rank(s)\n", model_dir, family,
                              num_blocks, dtype_word(dtype), micro_batches, ranks.size());
  if (!dtype_source.empty()) s += fmt::format("  compute dtype {}: {}\n", dtype_word(dtype), dtype_source);
  if (guidance_groups > 1)
    s += fmt::format("  CFG-parallel: {} guidance groups x {} rank(s), group g runs branch g (0 conditional, 1 "
                     "unconditional); {} micro-batch(es) per group\n",
                     guidance_groups, group_size(), micro_batches);
  if (step_seconds > 0) s += fmt::format("  predicted {:.4g} s per pass (step)\n", step_seconds);
  if (!weight_storage.empty()) s += fmt::format("  {}\n", weight_storage);
  s += fmt::format("  {:>4}  {:<8} {:>7}  {:<13} {:<18} {:>10} {:>9}  {:>10} {:>10} {:>10}\n", "rank", "device",
                   "weight", "blocks", "components", "weights", "swapped", "device", "host", "disk/pass");
  for (const auto& r : ranks) {
    std::string comps;
    if (r.prologue) comps += "prologue";
    if (r.epilogue) comps += comps.empty() ? "epilogue" : "+epilogue";
    if (comps.empty()) comps = "-";
    std::string blocks = r.idle() ? "idle" : fmt::format("{}..{} ({})", r.first_block, r.end_block - 1, r.num_blocks());
    const std::vector<int> swapped = r.swapped_blocks();
    const std::string kv = r.kv_cache_bytes > 0 ? fmt::format("        K/V cache {} (in the device bytes)\n", format_bytes(r.kv_cache_bytes)) : "";
    s += fmt::format("  {:>4}  {:<8} {:>7.4g}  {:<13} {:<18} {:>10} {:>9}  {:>10} {:>10} {:>10}\n", r.rank,
                     r.device.str(), r.weight, blocks, comps, format_bytes(r.weight_bytes), swapped.size(),
                     format_bytes(r.device_bytes), format_bytes(r.host_bytes), format_bytes(r.disk_read_pass_bytes));
    s += kv;
    if (!swapped.empty()) {
      s += fmt::format("        swapped blocks {}; {} device slot(s) of {}\n", fmt::join(swapped, ","),
                       r.layout.num_slots, format_bytes(r.layout.slot_bytes));
      if (micro_batches > 1) {
        s += fmt::format("        swap order {}: {} slot fills per pass", r.shared_fills ? "shared" : "per micro-batch",
                         r.fills_per_pass);
        if (r.per_micro_batch_seconds > 0)
          s += fmt::format(" (predicted {:.3g} s per pass shared, {:.3g} s per micro-batch)", r.shared_seconds,
                           r.per_micro_batch_seconds);
        s += "\n";
      }
    }
    if (!swapped.empty() && offload.lazy_load) {
      const offload::SwapLayout& l = r.layout;
      const std::vector<int> kept = l.cached_block_ids();
      std::string cache;
      if (l.streamed_bytes == 0) {
        cache = fmt::format("keeps every swapped block ({})", format_bytes(l.sticky_bytes));
      } else {
        cache = fmt::format("keeps {} ({} of {} swapped), {} staging buffers of {} beside it",
                            kept.empty() ? std::string("no whole block") : fmt::format("blocks {}", fmt::join(kept, ",")),
                            format_bytes(l.sticky_bytes), format_bytes(l.swapped_bytes), l.staging_buffers,
                            format_bytes(l.staging_bytes));
      }
      s += fmt::format("        host cache {}; disk reads {} in the first pass, {} in each later pass\n", cache,
                       format_bytes(r.disk_read_first_pass_bytes), format_bytes(r.disk_read_pass_bytes));
    }
  }
  if (generation.known()) {
    const GenerationEstimate& g = generation;
    s += fmt::format("  generation: decode {} sequence(s) at ~{} tokens of context, {} micro-batch(es){}: predicted "
                     "{:.3g} s per step, {:.{}f} tokens/s, bound by {}{}\n",
                     g.batch, g.context, g.micro_batches, g.shared ? " with shared fills" : "", g.step_seconds,
                     g.tokens_per_second, g.tokens_per_second >= 100 ? 0 : 2, g.bound,
                     g.bound_rank >= 0 ? fmt::format(" (rank {})", g.bound_rank)
                                       : " (one micro-batch's round trip through the stages: more --micro-batches "
                                         "keep them busy)");
    if (g.prefill_tokens_per_second > 0)
      s += fmt::format("  generation: prefill of a {}-token prompt predicted at {:.0f} tokens/s\n", g.prompt_tokens,
                       g.prefill_tokens_per_second);
  }
  return s;
}

}  // namespace pipeswap::pipeline
