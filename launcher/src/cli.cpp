#include "cli.h"

#include <CLI/CLI.hpp>

#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "pipeswap/core/error.h"
#include "pipeswap/core/torch_compat.h"

namespace pipeswap::launcher {
namespace {

void add_common(CLI::App* cmd, Options& o, std::string& chain_text) {
  cmd->add_option("--model", o.model, "Hugging Face checkpoint directory (config.json + *.safetensors); "
                                      "default: the built-in demo model")
      ->expected(0, 1);  // "--model" with nothing after it is the "Model is None" error, not the demo
  cmd->add_option("--device-chain", chain_text,
                  "one entry per rank, device=weight: cpu=3,cpu=1 or cuda:0=60,cuda:1=40; 'auto' weighs by free "
                  "memory (default: every rank on cpu, equal weights)")
      ->expected(0, 1);  // an empty value must reach the chain parser, which names the problem
  cmd->add_option("--workload-split", o.workload_split, "false: every block on the first device")
      ->default_str("true");
  cmd->add_option("--auto-vram-balance", o.auto_vram_balance,
                  "weigh the chain's devices by their free memory instead of the given weights")
      ->default_str("false");
  cmd->add_option("--dtype", o.dtype, "compute dtype: auto (the checkpoint's), fp32, bf16, fp16")->default_str("auto");
  cmd->add_option("--weight-dtype", o.weight_dtype,
                  "how block weights rest in host memory, on disk reads and in device slots: auto (as stored; fp8 "
                  "files stay fp8) or fp8 (quantise bf16/fp32 block matrices to e4m3 per output channel at load)")
      ->check(CLI::IsMember({"auto", "fp8"}))
      ->default_str("auto");
  cmd->add_option("--fp8-gemm", o.fp8_gemm,
                  "fp8 weights: off (dequantise each to the compute dtype just before use) or scaled-mm (fp8 GEMMs "
                  "through torch._scaled_mm, activations quantised per token; CUDA with LibTorch >= 2.5)")
      ->check(CLI::IsMember({"off", "scaled-mm"}))
      ->default_str("off");
  cmd->add_option("--micro-batches", o.micro_batches, "micro-batches flowing through the pipeline")->default_str("1");
  cmd->add_option("--input", o.input, "token ids: JSON [[ids...], ...] or safetensors with input_ids [B, T]");
  cmd->add_option("--comm-timeout", o.comm_timeout, "seconds before a silent peer is an error")->default_str("60");
  cmd->add_option("--threads", o.threads, "CPU threads per rank (0: cores / ranks on this node)")->default_str("0");
  cmd->add_option("--log-level", o.log_level, "trace, debug, info, warn, error, off")->default_str("info");
  cmd->add_option("--transport", o.transport, "activations between GPU ranks: auto (NCCL) or host (via MPI/TCP)")
      ->check(CLI::IsMember({"auto", "host"}))
      ->default_str("auto");

  auto* off = "Offload";
  cmd->add_option("--blocks-to-swap", o.blocks_to_swap, "how many of each rank's blocks live off the device")
      ->group(off);
  cmd->add_option("--offload-ratio", o.offload_ratio, "fraction of each rank's blocks that swap (instead of a count)")
      ->group(off);
  cmd->add_option("--resident-policy", o.resident_policy,
                  "which blocks stay: suffix (the last swap), prefix (the first swap), interleaved")
      ->default_str("suffix")
      ->group(off);
  cmd->add_option("--offload-granularity", o.offload_granularity, "block, or phase (each phase swaps on its own)")
      ->default_str("block")
      ->group(off);
  cmd->add_option("--swap-order", o.swap_order,
                  "micro-batches through swapped blocks: auto (the plan picks), per-micro-batch, or shared (each "
                  "fill serves every micro-batch held)")
      ->default_str("auto")
      ->group(off);
  cmd->add_option("--prefetch-depth", o.prefetch_depth, "copies in flight ahead of compute (the lookahead buffer)")
      ->default_str("1")
      ->group(off);
  cmd->add_flag("--use-non-blocking", o.use_non_blocking,
                "asynchronous copies from pinned memory with prefetch (--use-non-blocking=false: synchronous)")
      ->default_str("true")
      ->group(off);
  cmd->add_flag("--lazy-load", o.lazy_load, "read swapped blocks from the safetensors files when needed")->group(off);
  cmd->add_option("--num-disk-workers", o.num_disk_workers, "threads reading from disk with --lazy-load")
      ->default_str("2")
      ->group(off);
  cmd->add_option("--max-memory", o.max_memory, "host memory budget for swapped blocks, e.g. 24GB")->group(off);
  cmd->add_option("--vram-budget", o.vram_budget,
                  "automatic VRAM mode: each rank's device budget (bytes, e.g. 20GB, or auto); the plan picks the "
                  "swapped blocks")
      ->group(off);
  cmd->add_flag("--offload-txt-emb", o.offload_txt_emb, "keep the text embedding on the host, move it in when used")
      ->group(off);
  cmd->add_flag("--offload-img-emb", o.offload_img_emb, "keep the image embedding on the host, move it in when used")
      ->group(off);
  cmd->add_option("--offload-components", o.offload_components,
                  "components kept on the host and moved in when used, e.g. embed_tokens,lm_head")
      ->delimiter(',')
      ->group(off);
  cmd->add_option("--on-demand-components", o.on_demand_components,
                  "components kept nowhere: read from disk into device memory when used, freed after")
      ->delimiter(',')
      ->group(off);
}

// --trace FILE (config key "trace") for the commands that run a job.
void add_trace(CLI::App* cmd, Options& o) {
  cmd->add_option("--trace", o.trace,
                  "write a Chrome / Perfetto JSON timeline of every rank (compute, copy, disk, send, recv, wait) "
                  "to this file; open it in https://ui.perfetto.dev");
}

// `generate` for Llama-family checkpoints (launcher/src/generate_text.cpp).
void add_text_generate(CLI::App* cmd, Options& o) {
  auto* g = "Text generation (Llama, Qwen2, Mistral)";
  cmd->add_option("--prompt", o.prompt, "the prompt text")->group(g);
  cmd->add_option("--prompts", o.prompts, "JSON lines file: {\"prompt\": TEXT} (or a JSON string) per line")->group(g);
  cmd->add_option("--tokenizer", o.tokenizer, "folder with tokenizer.json or tokenizer.model (default: --model)")
      ->group(g);
  cmd->add_option("--max-new-tokens", o.max_new_tokens, "tokens to generate per prompt")->default_str("32")->group(g);
  cmd->add_option("--max-seq-len", o.max_seq_len,
                  "tokens per sequence the K/V cache holds, prompt included (default: longest prompt + "
                  "--max-new-tokens)")
      ->group(g);
  cmd->add_option("--max-batch", o.max_batch, "sequences in flight at once (K/V cache slots; default: every prompt, "
                                              "at most 64)")
      ->group(g);
  cmd->add_option("--temperature", o.temperature, "0: greedy; else sample at this temperature")->default_str("0")
      ->group(g);
  cmd->add_option("--top-k", o.top_k, "sample among the k most likely tokens (0: off)")->default_str("0")->group(g);
  cmd->add_option("--top-p", o.top_p, "sample within this cumulative probability (1: off)")->default_str("1")->group(g);
  cmd->add_option("--repetition-penalty", o.repetition_penalty, "transformers' repetition penalty (1: off)")
      ->default_str("1")
      ->group(g);
  cmd->add_option("--seed", o.seed, "sampling seed (the same tokens for every split and swap setting)")
      ->default_str("0")
      ->group(g);
  cmd->add_option("--stop", o.stop, "stop a sequence once its text contains this string (repeatable)")->group(g);
  cmd->add_option("--eos-token", o.eos_token,
                  "also end a sequence at this token of the tokenizer, e.g. <|eot_id|> (repeatable)")
      ->group(g);
  cmd->add_flag("--ignore-eos", o.ignore_eos, "keep generating past the end-of-sequence token")->group(g);
  cmd->add_option("--stream", o.stream, "print the text as it is generated (rank 0)")->default_str("true")->group(g);
}

std::string config_value(const nlohmann::json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_boolean()) return v.get<bool>() ? "true" : "false";
  if (v.is_array()) {  // device_chain as a list of "device=weight" entries
    std::string s;
    for (const auto& e : v) s += (s.empty() ? "" : ",") + config_value(e);
    return s;
  }
  return v.dump();
}

// Turns a JSON config file into flags: {"blocks_to_swap": 4} -> --blocks-to-swap 4.
std::vector<std::string> config_args(const std::string& path, CLI::App* cmd) {
  std::ifstream in(path);
  PS_CHECK(in.good(), ConfigError, "cannot read config file {} (--config)", path);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    PS_THROW(ConfigError, "config file {} is not valid JSON: {}", path, e.what());
  }
  PS_CHECK(j.is_object(), ConfigError, "config file {} must hold a JSON object of snake_case keys", path);
  std::vector<std::string> args;
  for (const auto& [key, value] : j.items()) {
    std::string flag = "--" + key;
    for (char& c : flag) c = (c == '_') ? '-' : c;
    PS_CHECK(key != "config" && cmd->get_option_no_throw(flag) != nullptr, ConfigError,
             "config file {}: unknown key '{}' for '{}' (see pipeswap {} --help; keys are the flags in snake_case)",
             path, key, cmd->get_name(), cmd->get_name());
    args.push_back(flag + "=" + config_value(value));  // "=" so that flags take values too
  }
  return args;
}

}  // namespace

std::optional<Options> parse_command_line(int argc, char** argv) {
  Options o;
  CLI::App app{"pipeswap: run transformer models too big for one device, split across ranks and swapped"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("pipeswap 0.1.0 (LibTorch ") + compat::torch_version() + ")");
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  CLI::App* run = app.add_subcommand("run", "run the forward job and write logits (safetensors)");
  CLI::App* plan = app.add_subcommand("plan", "print the plan (ranks, devices, blocks, memory) without loading");
  CLI::App* denoise = app.add_subcommand(
      "denoise", "sample a diffusion transformer (Wan): flow-matching Euler steps with classifier-free guidance");
  CLI::App* generate = app.add_subcommand(
      "generate", "generate text from prompts (Llama-family checkpoints): prefill, then decode with a K/V cache per "
                  "stage");
  std::string config_path;
  std::string chain_text;  // --device-chain as written; parsed below, once
  for (CLI::App* cmd : {run, plan, denoise, generate}) {
    add_common(cmd, o, chain_text);
    cmd->add_option("--config", config_path, "JSON file of options with snake_case keys (flags win)");
  }
  run->add_option("--output", o.output, "safetensors file for the logits (written atomically)")
      ->default_str("logits.safetensors");
  add_trace(run, o);
  run->add_option("--repeat", o.repeat, "run the forward N times (benchmarks: the summary reports the median warm pass)")
      ->default_str("1");
  plan->add_option("--json", o.json, "also write the plan as JSON to this file");
  denoise->add_option("--latents", o.latents, "safetensors with the initial noise latents [B, C, F, H, W] or [C, F, H, W]")
      ->required();
  denoise->add_option("--context", o.context,
                      "safetensors with the text encoder's output [B, L, text_dim] or [L, text_dim] (the prompt)")
      ->required();
  denoise->add_option("--context-null", o.context_null,
                      "safetensors with the negative prompt's text embeddings (classifier-free guidance)");
  denoise->add_option("--image-cond", o.image_cond,
                      "I2V: safetensors with the image condition [B, Cy, F, H, W] (mask + image latents), "
                      "concatenated after the latents on channels");
  denoise->add_option("--clip-fea", o.clip_fea, "I2V: safetensors with the CLIP image features [B, 257, 1280]");
  denoise->add_option("--steps", o.steps, "denoising steps")->default_str("50");
  denoise->add_option("--guidance", o.guidance, "classifier-free guidance scale (1: no unconditional pass)")
      ->default_str("5");
  denoise->add_option("--shift", o.shift, "flow-matching schedule shift (Wan2.1: 5 for T2V 720p, 3 for 480p)")
      ->default_str("5");
  denoise->add_option("--output", o.output, "safetensors file for the final latents (written atomically)")
      ->default_str("latents.safetensors");
  add_trace(denoise, o);
  add_text_generate(generate, o);
  generate->add_option("--output", o.output, "JSON file: per prompt its ids, the generated ids and text (atomic)");
  add_trace(generate, o);
  plan->add_option("--max-seq-len", o.max_seq_len, "generation: tokens per sequence of the K/V cache (shows its bytes)");
  plan->add_option("--max-batch", o.max_batch, "generation: sequences of the K/V cache (default 1)");

  std::vector<std::string> args(argv + 1, argv + argc);
  // First pass only to learn the subcommand and --config; then the config's flags go first so that
  // the command line wins (TakeLast).
  try {
    app.parse(std::vector<std::string>(args.rbegin(), args.rend()));
  } catch (const CLI::CallForHelp& e) {
    app.exit(e);
    return std::nullopt;
  } catch (const CLI::CallForAllHelp& e) {
    app.exit(e);
    return std::nullopt;
  } catch (const CLI::CallForVersion& e) {
    app.exit(e);
    return std::nullopt;
  } catch (const CLI::ParseError& e) {
    PS_THROW(ConfigError, "{} (see pipeswap --help)", e.what());
  }
  CLI::App* cmd = run->parsed() ? run : denoise->parsed() ? denoise : generate->parsed() ? generate : plan;
  o.command = cmd->get_name();
  if (!config_path.empty()) {
    std::vector<std::string> merged{o.command};
    for (auto& a : config_args(config_path, cmd)) merged.push_back(a);
    for (size_t i = 1; i < args.size(); ++i) merged.push_back(args[i]);
    Options fresh;
    o = fresh;
    chain_text.clear();
    app.clear();
    try {
      app.parse(std::vector<std::string>(merged.rbegin(), merged.rend()));
    } catch (const CLI::ParseError& e) {
      PS_THROW(ConfigError, "{} (from config file {} or the command line)", e.what(), config_path);
    }
    o.command = cmd->get_name();
  }
  // Given (even empty: that is the kNoModelOrChain error, not the default chain): parsed here only.
  if (cmd->count("--device-chain") > 0) o.device_chain = pipeline::parse_device_chain(chain_text);
  PS_CHECK(o.repeat >= 1, ConfigError, "--repeat must be at least 1 (got {})", o.repeat);
  if (cmd == denoise && cmd->count("--output") == 0) o.output = "latents.safetensors";
  if (cmd == generate && cmd->count("--output") == 0) o.output.clear();
  PS_CHECK(cmd != generate || cmd->count("--prompt") == 0 || !o.prompt.empty(), ConfigError,
           "--prompt is empty: give the text to continue (an empty prompt has no token to start from)");
  if (cmd == denoise) {
    PS_CHECK(o.steps >= 1, ConfigError, "--steps must be at least 1 (got {})", o.steps);
    PS_CHECK(o.shift > 0, ConfigError, "--shift must be positive (got {})", o.shift);
    PS_CHECK(o.guidance == 1.0 || !o.context_null.empty(), ConfigError,
             "--guidance {} needs --context-null (the negative prompt's embeddings) for the unconditional pass; give "
             "it, or --guidance 1 to sample without guidance",
             o.guidance);
  }
  PS_CHECK(cmd->count("--model") == 0 || !o.model.empty(), ConfigError,
           "{}: --model was given without a directory; pass --model DIR with a Hugging Face checkpoint (config.json + "
           "model.safetensors), or leave it out to run the built-in demo",
           pipeline::kNoModelOrChain);
  PS_CHECK(o.micro_batches >= 1, ConfigError, "--micro-batches must be at least 1 (got {})", o.micro_batches);
  PS_CHECK(o.comm_timeout > 0, ConfigError, "--comm-timeout must be positive seconds (got {})", o.comm_timeout);
  PS_CHECK(o.threads >= 0, ConfigError, "--threads must be 0 (automatic) or positive (got {})", o.threads);
  return o;
}

}  // namespace pipeswap::launcher
