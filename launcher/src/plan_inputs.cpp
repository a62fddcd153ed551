// The plan's inputs from the options and the model: the model opened and checked, the compute dtype,
// the offload options, and the plan itself (the agreed values come from agree.h).
#include <algorithm>
#include <map>
#include <tuple>

#include "demo_model.h"
#include "job.h"
#include "notices.h"
#include "pipeswap/core/dtype.h"
#include "pipeswap/core/error.h"
#include "pipeswap/core/fp8.h"
#include "pipeswap/core/log.h"

namespace pipeswap::launcher {
namespace {

// The compute dtype and where it came from. `stored`: the dtype most of block 0's bytes are stored in
// (unset: unknown). With --dtype auto the stored dtype wins; config.json's torch_dtype/dtype is only a
// cross-check (Wan2.1's and diffusers' configs carry none). Two exceptions, said in the source text:
// CPU ranks compute 16-bit weights in float32 (exact, and LibTorch's fp32 CPU kernels are the fast ones
// where the processor has no native bf16), and a diffusion transformer stored in float32 (Wan2.1's own
// releases) computes in bf16 on GPUs, as Wan2.1's generate.py (param_dtype bf16), diffusers' examples
// and ComfyUI do: float32 is an order of magnitude slower there for no visible gain.
std::pair<c10::ScalarType, std::string> resolve_dtype(const Options& o, const nlohmann::json& config,
                                                      std::optional<c10::ScalarType> stored, bool any_cpu,
                                                      const std::string& kind) {
  if (o.dtype != "auto") {
    auto t = parse_float_dtype(o.dtype);
    PS_CHECK(t.has_value(), ConfigError, "unknown --dtype '{}': use auto, fp32, bf16 or fp16", o.dtype);
    PS_CHECK(!(any_cpu && *t == c10::ScalarType::Half), ConfigError,
             "--dtype fp16 is not supported on CPU ranks (LibTorch has no fp16 matmul there): use --dtype auto (fp16 "
             "weights then compute in float32 on CPU ranks), fp32 or bf16");
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
  if (stored) {
    st = *stored;
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
    source +=
        "; GPUs compute a float32 DiT in bfloat16, as Wan2.1's own code and diffusers do (--dtype fp32 to keep it)";
    st = c10::ScalarType::BFloat16;
  }
  return {st, source};
}

offload::OffloadOptions offload_options(const Options& o) {
  offload::OffloadOptions off;
  // The flags as given; offload::check_offload_options validates them (make_plan calls it).
  if (o.blocks_to_swap != -1) off.blocks_to_swap = o.blocks_to_swap;
  if (o.offload_ratio >= 0) off.offload_ratio = o.offload_ratio;
  off.policy = offload::parse_resident_policy(o.resident_policy);
  off.granularity = offload::parse_granularity(o.offload_granularity);
  off.swap_order = offload::parse_swap_order(o.swap_order);
  off.prefetch_depth = o.prefetch_depth;
  off.use_non_blocking = o.use_non_blocking;
  off.lazy_load = o.lazy_load;
  off.num_disk_workers = o.num_disk_workers;
  off.max_memory = o.max_memory;
  off.offload_txt_emb = o.offload_txt_emb;
  off.offload_img_emb = o.offload_img_emb;
  off.offload_components = o.offload_components;
  off.on_demand_components = o.on_demand_components;
  off.fp8_dequantise = offload::parse_fp8_dequantise(o.fp8_dequantise);
  // auto: scaled-mm GEMMs read the fp8 bytes as they rest; a copy made ahead would go unused.
  if (o.fp8_gemm == "scaled-mm" && off.fp8_dequantise == offload::Fp8Dequantise::kAuto)
    off.fp8_dequantise = offload::Fp8Dequantise::kPerUse;
  return off;
}

}  // namespace

Job open_model(const Options& o, const World& world, comm::Transport& t, JobUse use) {
  Job job;
  job.use = use;
  if (!o.model.empty()) {
    job.model_dir = o.model;
  } else {
    job.model_dir = o.command == "denoise" ? ensure_demo_wan() : ensure_demo_model();
  }
  job.ckpt = Checkpoint::open(job.model_dir);
  job.arch = models::make_architecture(job.ckpt->config());
  models::check_checkpoint_tensors(*job.arch, *job.ckpt);
  // The first collective: ranks started with different settings stop here, before they could
  // exchange anything that depends on them.
  if (world.size > 1) agree_settings(shared_settings(o, *job.ckpt), t);
  job.chain = agree_chain(o.device_chain, o.auto_vram_balance, world, t, use);
  return job;
}

std::optional<c10::ScalarType> stored_dtype(const Job& job) {
  // The dtype of most of block 0's bytes (the weight matrices; a norm kept in fp32 does not decide). A
  // header read, not a weight read: rank 0 owns block 0 (or the prologue of a model without blocks).
  const auto parts = job.arch->num_blocks() > 0 ? models::block_parts(*job.arch, 0) : job.arch->prologue_parts();
  // fp8 weights do not decide: they are dequantised to the dtype their neighbours are stored in (bf16
  // where every tensor of block 0 is fp8).
  std::map<int, int64_t> bytes;  // by c10::ScalarType
  bool fp8 = false;
  for (const auto& part : parts) {
    for (const auto& t : part.tensors) {
      const auto info = job.ckpt->locate(t.checkpoint).info;
      if (is_fp8(info->dtype)) {
        fp8 = true;
        continue;
      }
      bytes[static_cast<int>(to_scalar_type(info->dtype))] += static_cast<int64_t>(info->nbytes());
    }
  }
  if (bytes.empty() && fp8) return c10::ScalarType::BFloat16;
  std::optional<c10::ScalarType> best;
  int64_t most = -1;
  for (const auto& [code, n] : bytes) {
    if (n > most) {
      best = static_cast<c10::ScalarType>(code);
      most = n;
    }
  }
  return best;
}

std::vector<int64_t> weight_storage(const Options& o, const Job& job) {
  offload::WeightStorage s;
  const auto& arch = *job.arch;
  const bool quantise = o.weight_dtype == "fp8";
  int ignored = 0;
  if (arch.num_blocks() > 0) {
    for (const auto& part : models::block_parts(arch, 0)) {
      for (const auto& t : part.tensors) {
        const Fp8Found f = find_fp8(*job.ckpt, t.checkpoint, t.shape);
        ignored += static_cast<int>(f.ignored.size());
        Fp8Storage st = f.storage;
        // --weight-dtype fp8: the block's matrices (2-D "*.weight"); norms, biases and modulation stay.
        const bool matrix = t.shape.size() == 2 && t.local.size() > 7 &&
                            t.local.compare(t.local.size() - 7, 7, ".weight") == 0;
        if (quantise && !st.fp8() && matrix) st = Fp8Storage{Fp8Format::kE4M3, Fp8Scale::kPerChannel, true};
        s.block.push_back(st);
      }
    }
    if (!s.any_fp8()) s.block.clear();
  }
  for (const auto& side : {arch.prologue_parts(), arch.epilogue_parts()}) {
    for (const auto& part : side) {
      for (const auto& t : part.tensors) {
        const Fp8Found f = find_fp8(*job.ckpt, t.checkpoint, t.shape);
        ignored += static_cast<int>(f.ignored.size());
        if (f.storage.fp8()) s.components[t.checkpoint] = f.storage;
      }
    }
  }
  if (ignored > 0) {
    log().info("fp8: ignoring the activation scales (scale_input / input_scale) of block 0 and the non-block parts "
               "({} keys, and the other blocks' alike): weights are dequantised on the device and activations stay "
               "in the compute dtype",
               ignored);
  }
  return s.encode(arch);
}

pipeline::Plan make_job_plan(const Options& o, const World& world, comm::Transport& t, const Job& job,
                             const JobShape& shape, int micro_batches, int sweeps, bool guidance,
                             pipeline::ArrangementChoice* choice) {
  pipeline::PlanInputs in;
  in.model_dir = job.model_dir;
  in.chain = job.chain;
  in.workload_split = o.workload_split;
  // One compute dtype for all ranks (activations cross between them): CPU limits apply if any rank is a CPU.
  const bool any_cpu =
      std::any_of(job.chain.begin(), job.chain.end(), [](const auto& e) { return !e.device.is_cuda(); });
  std::tie(in.dtype, in.dtype_source) =
      resolve_dtype(o, job.ckpt->config(), shape.stored_dtype, any_cpu, job.arch->kind());
  in.micro_batches = micro_batches;
  in.batch = shape.batch;
  in.seq = shape.seq;
  in.sweeps = sweeps;
  if (o.max_seq_len > 0) {  // generation (and `plan --max-seq-len`): the K/V cache
    in.kv_seq = o.max_seq_len;
    in.kv_batch = std::max<int64_t>(o.max_batch, 1);
  }
  in.offload = offload_options(o);
  in.offload.stored_dtype = shape.stored_dtype;
  in.offload.storage = offload::WeightStorage::decode(*job.arch, shape.storage);
  in.weight_dtype = o.weight_dtype;
  if (o.vram_budget != 0 && (o.blocks_to_swap >= 0 || o.offload_ratio >= 0))
    log().warn("blocks_to_swap ignored: automatic VRAM mode decides residency");
  RankBudgets budgets = agree_budgets(o, job.chain, world, t, job.use);
  in.vram_budget = std::move(budgets.vram);
  in.max_memory = std::move(budgets.max_memory);
  const bool dit = o.command == "denoise" || o.command == "generate" || o.command == "plan";
  const int requested = !dit || o.cfg_parallel == "auto" ? 0 : std::stoi(o.cfg_parallel);
  pipeline::Plan plan;
  if (!guidance && requested <= 1) {
    plan = pipeline::make_plan(*job.arch, in);
  } else {
    pipeline::ArrangementChoice c = pipeline::choose_arrangement(*job.arch, in, guidance, requested);
    plan = c.plan();
    // A caller that takes the candidates prints them itself (`plan`).
    if (world.rank == 0 && c.candidates.size() > 1 && choice == nullptr) log().info("{}", c.to_text());
    if (choice) *choice = std::move(c);
  }
  if (world.rank == 0) warn_idle_settings(o, plan);
  return plan;
}

}  // namespace pipeswap::launcher
