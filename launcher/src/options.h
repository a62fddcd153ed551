// Everything the command line and config files set, in users' words (kebab-case flags,
// snake_case config keys).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "pipeswap/pipeline/device_chain.h"

namespace pipeswap::launcher {

// generate's --help groups of the flags that serve one architecture only.
inline constexpr const char* kVideoGroup = "Video (Wan2.1 T2V, diffusers repo)";
inline constexpr const char* kTextGroup = "Text (Llama, Qwen2, Mistral checkpoint)";

struct Options {
  std::string command;  // "run" | "plan" | "denoise" | "generate"
  std::string model;    // empty: the built-in demo model
  std::string input;    // empty with the demo model: the demo's built-in prompt batch
  std::string output = "logits.safetensors";
  // --device-chain, parsed once (by the CLI); unset: every rank on cpu with equal weights.
  std::optional<pipeline::DeviceChain> device_chain;
  bool workload_split = true;
  bool auto_vram_balance = false;
  std::string dtype = "auto";
  std::string weight_dtype = "auto";  // auto: as stored (fp8 files stay fp8); fp8: quantise block matrices at load
  std::string fp8_dequantise = "auto";  // auto | ahead | per-use (offload::Fp8Dequantise)
  std::string fp8_gemm = "off";  // off: dequantise fp8 weights per use; scaled-mm: torch._scaled_mm (Hopper)
  int micro_batches = 1;
  // Guidance groups (CFG-parallel, issue 21): "auto" (the plan picks the fastest arrangement), "1" (one
  // pipeline, both branches as micro-batches) or "2" (the chain's halves run one branch each).
  std::string cfg_parallel = "auto";
  double comm_timeout = 60;  // seconds
  int threads = 0;           // 0: cores of this node / ranks on it
  std::string log_level = "info";
  std::string transport = "auto";  // activations between GPU ranks: auto (NCCL) or host (MPI/TCP)
  bool force = false;  // run even where the plan predicts more memory than the machine has
  std::string json;  // plan --json FILE
  int repeat = 1;      // run --repeat N: forward passes (benchmarks)
  std::string trace;  // --trace FILE: Chrome / Perfetto timeline of every rank (empty: off)
  std::string config;  // --config FILE as given (empty: none; an input of the job: no output may overwrite it)
  // denoise
  std::string latents, context, context_null, image_cond, clip_fea;
  std::string save_latents;  // generate (video): the final latents too, beside a decoded --output
  int steps = 50;
  double guidance = 5.0;
  double shift = 5.0;
  // generate (both architectures: prompt, prompts_file, seed, output; the rest video)
  std::string prompt, negative_prompt, prompts_file, prompt_ids;
  int64_t frames = 81, height = 480, width = 832;
  int64_t seed = 0;
  std::string sampler = "unipc";
  double flow_shift = -1;  // -1: the repo's scheduler_config.json
  std::string text_encoder_device, vae_device;  // empty: rank 0's device
  std::string text_encoder = "on-demand";           // on-demand, resident or swapped (pipeline::TextEncoderPlacement)
  std::optional<int> text_encoder_blocks_to_swap;   // swapped: layers streamed (default: all)
  bool vae_tiling = false;
  double fps = 16;

  // generate, text (Llama family): launcher/src/generate_text.cpp (--prompt, --prompts, --seed as above)
  std::string tokenizer;            // --tokenizer DIR (default: the model directory)
  int64_t max_new_tokens = 32;
  int64_t max_seq_len = 0;          // 0: the longest prompt + max_new_tokens; plan: with it, the K/V cache bytes
  int64_t max_batch = 0;            // 0: every prompt at once, at most 64
  int64_t prefill_chunk = 0;        // tokens of a prompt per prefill step (0: the whole prompt)
  double temperature = 0;           // 0: greedy
  int64_t top_k = 0;
  double top_p = 1.0;
  double repetition_penalty = 1.0;
  std::vector<std::string> stop;        // stop strings
  std::vector<std::string> stop_token;  // more end-of-sequence tokens by name (e.g. <|eot_id|>)
  bool ignore_eos = false;
  bool stream = true;               // decoded text to stdout as it arrives (rank 0)
  // generate: the flags given (command line or --config) with their --help group: which architecture's flags do
  // nothing for the checkpoint at hand.
  struct GivenFlag {
    std::string flag;   // "--frames"
    std::string group;  // kVideoGroup, kTextGroup, or another
  };
  std::vector<GivenFlag> given;
  bool was_given(const std::string& flag) const {
    for (const auto& g : given)
      if (g.flag == flag) return true;
    return false;
  }
  // Offload (per rank), in the block-swap nodes' and LightX2V's words.
  int blocks_to_swap = -1;     // -1: not given
  double offload_ratio = -1;   // -1: not given
  std::string resident_policy = "suffix";
  std::string offload_granularity = "block";
  std::string swap_order = "auto";
  int prefetch_depth = 1;
  bool use_non_blocking = true;
  bool lazy_load = false;
  int num_disk_workers = 2;
  int64_t max_memory = 0;   // host cache budget in bytes (0: not given, unlimited)
  int64_t vram_budget = 0;  // automatic VRAM mode: bytes, flags::kAutoBudget for "auto" (0: off)
  std::string max_memory_text, vram_budget_text;  // both as written ("24GB"), for messages
  bool offload_txt_emb = false;
  bool offload_img_emb = false;
  std::vector<std::string> offload_components;
  std::vector<std::string> on_demand_components;
};

}  // namespace pipeswap::launcher
