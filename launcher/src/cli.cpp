#include "cli.h"

#include <CLI/CLI.hpp>

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <iostream>
#include <nlohmann/json.hpp>

#include "command_words.h"
#include "flags.h"
#include "pipeswap/core/error.h"
#include "pipeswap/core/files.h"
#include "pipeswap/core/json.h"
#include "pipeswap/core/printable.h"
#include "pipeswap/core/torch_compat.h"

namespace pipeswap::launcher {
namespace {

// Flags every command takes. `plan` also takes the run-only flags (a run's command line turned into a
// plan works) but does not list them in its --help.
void add_common(CLI::App* cmd, Options& o, std::string& chain_text) {
  const bool dit = cmd->get_name() == "denoise";
  const bool generate = cmd->get_name() == "generate";
  const char* run_only = cmd->get_name() == "plan" ? "" : "Options";
  cmd->add_option("--model", o.model,
                  generate ? "a Wan2.1 text-to-video repo in diffusers' layout (model_index.json: makes a video) or a "
                             "Llama, Qwen2 or Mistral checkpoint directory (config.json + *.safetensors: makes text)"
                  : dit ? "Wan2.1 DiT checkpoint directory (Wan2.1's or diffusers' layout); default: the built-in demo "
                        "Wan, with built-in inputs"
                      : "Hugging Face checkpoint directory (config.json + *.safetensors); default: the built-in "
                        "demo model (a small Llama), with a built-in input")
      ->expected(0, 1);  // "--model" with nothing after it is the "Model is None" error, not the demo
  cmd->add_option("--device-chain", chain_text,
                  "one entry per rank, device=weight: cpu=3,cpu=1 or cuda:0=60,cuda:1=40; 'auto' weighs by free "
                  "memory (default: every rank on cpu, equal weights)")
      ->expected(0, 1);  // an empty value must reach the chain parser, which names the problem
  cmd->add_flag("--workload-split", o.workload_split, "false: every block on the first device")->default_str("true");
  cmd->add_flag("--auto-vram-balance", o.auto_vram_balance,
                "weigh the chain's GPUs by their free memory instead of the given weights")
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
  cmd->add_option("--fp8-dequantise", o.fp8_dequantise,
                  "fp8 block weights without --fp8-gemm: ahead (each phase's weights dequantised in one go into a "
                  "fixed workspace, the next phase's on a side stream while the current one computes; two "
                  "phases' worth of device memory), per-use (each weight just before its use, a one-tensor "
                  "temporary) or auto (ahead on CUDA, per-use on CPU ranks)")
      ->check(CLI::IsMember({"auto", "ahead", "per-use"}))
      ->default_str("auto");
  cmd->add_option("--micro-batches", o.micro_batches, "micro-batches flowing through the pipeline")
      ->transform(flags::integer(1, flags::kMaxCount, "a count"))
      ->default_str("1");
  if (dit || generate || cmd->get_name() == "plan") {
    cmd->add_option("--cfg-parallel", o.cfg_parallel,
                    "guidance groups: 2 runs the conditional and the unconditional branch on the two halves of the "
                    "device chain (each half a pipeline over every block, exchanging noise predictions each step), "
                    "1 one pipeline for both, auto the arrangement the plan predicts fastest")
        ->check(CLI::IsMember({"auto", "1", "2"}))
        ->default_str("auto");
  }
  if (!dit && !generate) {
    cmd->add_option("--input", o.input,
                    "token ids: JSON [[ids...], ...] or safetensors with input_ids [B, T] (default with the demo "
                    "model: 8 built-in sequences of 64 tokens)");
  }
  cmd->add_option("--comm-timeout", o.comm_timeout, "seconds before a silent peer is an error")
      ->transform(flags::real(flags::kMinTimeout, flags::kMaxTimeout, "seconds"))
      ->default_str("60")
      ->group(run_only);
  cmd->add_option("--threads", o.threads, "CPU threads per rank (0: cores / ranks on this node)")
      ->transform(flags::integer(0, flags::max_threads(), "0 (automatic) or a thread count (4 per core at most),"))
      ->default_str("0")
      ->group(run_only);
  cmd->add_option("--log-level", o.log_level,
                  "trace, debug, info, warn, error, off (warn: no progress lines; debug: errors name their source "
                  "line)")
      ->default_str("info");
  cmd->add_option("--transport", o.transport, "activations between GPU ranks: auto (NCCL) or host (via MPI/TCP)")
      ->check(CLI::IsMember({"auto", "host"}))
      ->default_str("auto")
      ->group(run_only);
  cmd->add_flag("--force", o.force,
                "run even where the plan predicts more host or device memory than the machine has (a warning "
                "instead of an error)")
      ->group(run_only);

  auto* off = "Offload";
  cmd->add_option("--blocks-to-swap", o.blocks_to_swap, "how many of each rank's blocks live off the device")
      ->transform(flags::integer(0, flags::kMaxCount, "a block count"))
      ->group(off);
  cmd->add_option("--offload-ratio", o.offload_ratio, "fraction of each rank's blocks that swap (instead of a count)")
      ->transform(flags::real(0, 1, "a fraction"))
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
      ->transform(flags::integer(1, flags::kMaxPrefetchDepth, "a depth"))
      ->default_str("1")
      ->group(off);
  cmd->add_flag("--use-non-blocking", o.use_non_blocking,
                "asynchronous copies from pinned memory with prefetch (--use-non-blocking=false: synchronous)")
      ->default_str("true")
      ->group(off);
  cmd->add_flag("--lazy-load", o.lazy_load, "read swapped blocks from the safetensors files when needed")->group(off);
  cmd->add_option("--num-disk-workers", o.num_disk_workers, "threads reading from disk with --lazy-load")
      ->transform(flags::integer(1, flags::kMaxDiskWorkers, "a thread count"))
      ->default_str("2")
      ->group(off);
  cmd->add_option("--max-memory", o.max_memory, "host memory budget for swapped blocks, e.g. 24GB")
      ->transform(flags::byte_size("--max-memory", /*allow_auto=*/false, &o.max_memory_text))
      ->group(off);
  cmd->add_option("--vram-budget", o.vram_budget,
                  "automatic VRAM mode: each rank's device budget (bytes, e.g. 20GB, or auto); the plan picks the "
                  "swapped blocks")
      ->transform(flags::byte_size("--vram-budget", /*allow_auto=*/true, &o.vram_budget_text))
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

// --frames, --height, --width (generate, and plan for a Wan repo): bounded here; the shape rules (4k+1
// frames, multiples of 16) are generate_job's check_video_size.
std::vector<CLI::Option*> add_video_size(CLI::App* cmd, Options& o, const std::string& prefix) {
  return {cmd->add_option("--frames", o.frames, prefix + "video frames, 4k+1")
              ->transform(flags::integer(1, flags::kMaxFrames, "a frame count"))
              ->default_str("81"),
          cmd->add_option("--height", o.height, prefix + "pixels, a multiple of 16")
              ->transform(flags::integer(1, flags::kMaxPixels, "pixels"))
              ->default_str("480"),
          cmd->add_option("--width", o.width, prefix + "pixels, a multiple of 16")
              ->transform(flags::integer(1, flags::kMaxPixels, "pixels"))
              ->default_str("832")};
}

// The flags `plan` (on a Wan repo) and `generate` share: the video's size, the steps and guidance, and where
// the text encoder and the VAE go. `prefix` starts each help line ("Wan repo: " for plan); `group`, when
// given, is their help group (generate's video group).
void add_video_job_flags(CLI::App* cmd, Options& o, const std::string& prefix, const std::string& group = "") {
  std::vector<CLI::Option*> added = add_video_size(cmd, o, prefix);
  added.push_back(cmd->add_option("--steps", o.steps, prefix + "denoising steps")
                      ->transform(flags::integer(1, flags::kMaxCount, "a step count"))
                      ->default_str("50"));
  added.push_back(
      cmd->add_option("--guidance", o.guidance, prefix + "classifier-free guidance scale (<= 1: no unconditional pass)")
          ->transform(flags::real(0, flags::kMaxGuidance, "a scale"))
          ->default_str("5"));
  added.push_back(
      cmd->add_option("--text-encoder", o.text_encoder,
                      prefix +
                          "text encoder placement: on-demand (read, encode, freed before the DiT loads), resident "
                          "(kept on its device for the whole job), swapped (layers in host memory, streamed through "
                          "the device one ahead, as --blocks-to-swap does for the DiT: for a device that cannot hold "
                          "it)")
          ->check(CLI::IsMember({"on-demand", "resident", "swapped"}))
          ->default_str("on-demand"));
  added.push_back(cmd->add_option("--text-encoder-blocks-to-swap", o.text_encoder_blocks_to_swap,
                                  prefix + "--text-encoder swapped: how many of its layers stream (default: all)")
                      ->transform(flags::integer(0, flags::kMaxCount, "a layer count")));
  added.push_back(cmd->add_option("--text-encoder-device", o.text_encoder_device,
                                  prefix + "cpu or cuda:N (default: rank 0's device)"));
  added.push_back(cmd->add_option("--vae-device", o.vae_device, prefix + "cpu or cuda:N (default: rank 0's device)"));
  added.push_back(cmd->add_flag("--vae-tiling", o.vae_tiling,
                                prefix + "decode in 256x256 spatial tiles (bounds the VAE's memory)"));
  if (!group.empty())
    for (CLI::Option* opt : added) opt->group(group);
}

// `generate`: one command, two architectures, picked by --model (generate.cpp). A diffusers Wan2.1 T2V repo
// (model_index.json) makes a video; a Llama, Qwen2 or Mistral checkpoint (config.json's model_type) makes text.
// Flags of the other architecture's group are accepted and warned about (notices.h: warn_idle_generate_flags).
void add_generate(CLI::App* cmd, Options& o) {
  cmd->add_option("--prompt", o.prompt, "the prompt text");
  cmd->add_option("--prompts", o.prompts_file,
                  "JSON lines, one prompt each: {\"prompt\": ...} (video: and \"negative_prompt\"; text: or a JSON "
                  "string); video: sampled together, text: sequences in flight (continuous batching)");
  cmd->add_option("--seed", o.seed,
                  "video: the noise (torch.Generator(\"cpu\").manual_seed, as diffusers); text: sampling (the same "
                  "tokens for every split and swap setting)")
      ->transform(flags::integer(0, flags::kMaxSeed, "a seed"))
      ->default_str("0");
  cmd->add_option("--output", o.output,
                  "video: video.mp4 (H.264, builds with FFmpeg), frames/ (PNG) or latents.safetensors (default "
                  "video.mp4); text: a JSON file with per prompt its ids, the generated ids and text (default: none)");

  const char* v = kVideoGroup;
  cmd->add_option("--negative-prompt", o.negative_prompt, "the negative prompt (default: empty, as diffusers)")
      ->group(v);
  cmd->add_option("--prompt-ids", o.prompt_ids,
                  "token ids instead of prompts (builds without SentencePiece): safetensors with input_ids, "
                  "attention_mask [B, 512] (and negative_input_ids, negative_attention_mask with guidance)")
      ->group(v);
  add_video_job_flags(cmd, o, "", v);
  cmd->add_option("--sampler", o.sampler, "unipc (the repo's scheduler) or euler (flow-matching Euler)")
      ->check(CLI::IsMember({"unipc", "euler"}))
      ->default_str("unipc")
      ->group(v);
  cmd->add_option("--flow-shift", o.flow_shift,
                  "schedule shift (default: the repo's scheduler_config.json; Wan2.1: 3 at 480p, 5 at 720p)")
      ->transform(flags::real(0, flags::kMaxShift, "a shift", /*lo_open=*/true))
      ->group(v);
  cmd->add_option("--latents", o.latents, "safetensors with the initial noise [B, z, f, h, w] instead of --seed")
      ->group(v);
  cmd->add_option("--save-latents", o.save_latents,
                  "also write the final latents to this .safetensors before the VAE decodes them (as diffusers' "
                  "output_type=\"latent\"): to compare, or to decode again without denoising")
      ->group(v);
  cmd->add_option("--fps", o.fps, "frames a second of the MP4")
      ->transform(flags::real(0, flags::kMaxFps, "frames a second", /*lo_open=*/true))
      ->default_str("16")
      ->group(v);

  const char* g = kTextGroup;
  cmd->add_option("--input", o.input, "token ids instead of prompts: JSON [[ids...], ...] (rows may differ in length)")
      ->group(g);
  cmd->add_option("--tokenizer", o.tokenizer, "folder with tokenizer.json or tokenizer.model (default: --model)")
      ->group(g);
  cmd->add_option("--max-new-tokens", o.max_new_tokens, "tokens to generate per prompt")
      ->transform(flags::integer(1, flags::kMaxCount, "a token count"))
      ->default_str("32")->group(g);
  cmd->add_option("--max-seq-len", o.max_seq_len,
                  "tokens per sequence the K/V cache holds, prompt included (default: longest prompt + "
                  "--max-new-tokens)")
      ->transform(flags::integer(1, flags::kMaxCount, "a token count"))
      ->group(g);
  cmd->add_option("--max-batch", o.max_batch,
                  "sequences in flight at once (K/V cache slots; default: every prompt, at most 64)")
      ->transform(flags::integer(1, flags::kMaxCount, "a count"))
      ->group(g);
  cmd->add_option("--prefill-chunk", o.prefill_chunk,
                  "prefill a prompt at most this many tokens at a time, so that other sequences' decode steps run "
                  "between the chunks (0: the whole prompt at once)")
      ->transform(flags::integer(0, flags::kMaxCount, "a token count"))
      ->default_str("0")
      ->group(g);
  cmd->add_option("--temperature", o.temperature, "0: greedy; else sample at this temperature")
      ->default_str("0")
      ->group(g);
  cmd->add_option("--top-k", o.top_k, "sample among the k most likely tokens (0: off)")
      ->transform(flags::integer(0, flags::kMaxCount, "a count"))
      ->default_str("0")->group(g);
  cmd->add_option("--top-p", o.top_p, "sample within this cumulative probability (1: off)")->default_str("1")->group(g);
  cmd->add_option("--repetition-penalty", o.repetition_penalty, "transformers' repetition penalty (1: off)")
      ->default_str("1")
      ->group(g);
  cmd->add_option("--stop", o.stop, "stop a sequence once its text contains this string (repeatable)")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
      ->group(g);
  cmd->add_option("--stop-token", o.stop_token,
                  "also end a sequence at this token, by name, e.g. '<|eot_id|>' (a special or added token of the "
                  "tokenizer, a vocabulary entry, or text that is one token; repeatable), besides "
                  "generation_config.json's eos_token_id")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)
      ->group(g);
  cmd->add_flag("--ignore-eos", o.ignore_eos,
                "keep generating past the end-of-sequence tokens (generation_config.json's eos_token_id; "
                "--stop-token still stops)")
      ->group(g);
  cmd->add_flag("--stream", o.stream, "print the text as it is generated (rank 0)")->default_str("true")->group(g);
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
  struct stat st {};
  PS_CHECK(::stat(path.c_str(), &st) == 0, ConfigError, "cannot read config file {} (--config): {}", path,
           errno_text(errno));
  nlohmann::json j;
  try {
    j = parse_json(read_regular_file(path, "config file (--config)"));
  } catch (const JsonError& e) {
    PS_THROW(ConfigError, "config file {} is not valid JSON: {}", path, e.what());
  }
  PS_CHECK(j.is_object(), ConfigError, "config file {} must hold a JSON object of snake_case keys", path);
  std::vector<std::string> args;
  for (const auto& [key, value] : j.items()) {
    std::string flag = "--" + key;
    for (char& c : flag) c = (c == '_') ? '-' : c;
    // "help" and "version" are flags of CLI11's own that end parsing: they are no settings.
    PS_CHECK(key != "config" && key != "help" && key != "version" && cmd->get_option_no_throw(flag) != nullptr,
             ConfigError,
             "config file {}: unknown key '{}' for '{}' (see pipeswap {} --help; keys are the flags in snake_case)",
             path, printable(key), cmd->get_name(), cmd->get_name());
    args.push_back(flag + "=" + config_value(value));  // "=" so that flags take values too
  }
  return args;
}

}  // namespace

std::optional<Options> parse_command_line(int argc, char** argv, bool print_help) {
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
      "generate", "prompt in, video or text out, by --model's architecture: a Wan2.1 T2V diffusers repo makes a video "
                  "(text encoder, DiT across the ranks with swapping, VAE decode); a Llama, Qwen2 or Mistral "
                  "checkpoint makes text (prefill, then decode with a K/V cache per stage)");
  std::string config_path;
  std::string chain_text;  // --device-chain as written; parsed below, once
  for (CLI::App* cmd : {run, plan, denoise, generate}) {
    add_common(cmd, o, chain_text);
    cmd->add_option("--config", config_path, "JSON file of options with snake_case keys (flags win)");
  }
  run->add_option("--output", o.output,
                  "safetensors file for the logits (written atomically; default: logits.safetensors in the current "
                  "directory)")
      ->default_str("logits.safetensors");
  add_trace(run, o);
  run->add_option("--repeat", o.repeat, "run the forward N times (benchmarks: the summary reports the median warm pass)")
      ->transform(flags::integer(1, flags::kMaxCount, "a count"))
      ->default_str("1");
  plan->add_option("--json", o.json, "also write the plan as JSON to this file");
  // A diffusers Wan repo (generate's --model): the job's size decides the DiT's tokens and the VAE's memory.
  add_video_job_flags(plan, o, "Wan repo: ");
  denoise->add_option("--latents", o.latents,
                      "safetensors with the initial noise latents [B, C, F, H, W] or [C, F, H, W] (required with "
                      "--model)");
  denoise->add_option("--context", o.context,
                      "safetensors with the text encoder's output [B, L, text_dim] or [L, text_dim] (the prompt; "
                      "required with --model)");
  denoise->add_option("--context-null", o.context_null,
                      "safetensors with the negative prompt's text embeddings (classifier-free guidance)");
  denoise->add_option("--image-cond", o.image_cond,
                      "I2V: safetensors with the image condition [B, Cy, F, H, W] (mask + image latents), "
                      "concatenated after the latents on channels");
  denoise->add_option("--clip-fea", o.clip_fea, "I2V: safetensors with the CLIP image features [B, 257, 1280]");
  denoise->add_option("--steps", o.steps, "denoising steps")
      ->transform(flags::integer(1, flags::kMaxCount, "a step count"))
      ->default_str("50");
  denoise->add_option("--guidance", o.guidance, "classifier-free guidance scale (1: no unconditional pass)")
      ->transform(flags::real(0, flags::kMaxGuidance, "a scale"))
      ->default_str("5");
  denoise->add_option("--shift", o.shift, "flow-matching schedule shift (Wan2.1: 5 for T2V 720p, 3 for 480p)")
      ->transform(flags::real(0, flags::kMaxShift, "a shift", /*lo_open=*/true))
      ->default_str("5");
  denoise->add_option("--output", o.output,
                      "safetensors file for the final latents (written atomically; default: latents.safetensors in "
                      "the current directory)")
      ->default_str("latents.safetensors");
  add_trace(denoise, o);
  add_generate(generate, o);
  add_trace(generate, o);
  plan->add_option("--max-seq-len", o.max_seq_len, "generation: tokens per sequence of the K/V cache (shows its bytes)")
      ->transform(flags::integer(1, flags::kMaxCount, "a token count"));
  plan->add_option("--max-batch", o.max_batch, "generation: sequences of the K/V cache (default 1)")
      ->transform(flags::integer(1, flags::kMaxCount, "a count"));
  for (CLI::App* cmd : {run, plan, denoise, generate}) cmd->allow_extras();  // reject_extras names them, with a suggestion

  std::vector<std::string> args(argv + 1, argv + argc);
  const bool asks_help = std::any_of(args.begin(), args.end(), [](const std::string& a) {
    return a == "-h" || a == "--help" || a == "--help-all" || a == "--version";
  });
  if (!asks_help) {
    PS_CHECK(!args.empty(), ConfigError,
             "give a command: pipeswap run (the forward job), plan (the plan only), denoise (diffusion sampling) "
             "or generate (prompt to video or text); run, plan and denoise run a built-in demo with no other flags (see "
             "pipeswap --help)");
    const auto commands = static_cast<const CLI::App&>(app).get_subcommands([](const CLI::App*) { return true; });
    if (std::none_of(commands.begin(), commands.end(), [&](const CLI::App* c) { return c->get_name() == args[0]; }))
      reject_command(app, args[0]);
  }
  args = join_boolean_values(app, args);
  // First pass only to learn the subcommand and --config; then the config's flags go first so that
  // the command line wins (TakeLast).
  try {
    app.parse(std::vector<std::string>(args.rbegin(), args.rend()));
  } catch (const CLI::CallForHelp& e) {
    if (print_help) app.exit(e);
    return std::nullopt;
  } catch (const CLI::CallForAllHelp& e) {
    if (print_help) app.exit(e);
    return std::nullopt;
  } catch (const CLI::CallForVersion& e) {
    if (print_help) app.exit(e);
    return std::nullopt;
  } catch (const CLI::ParseError& e) {
    PS_THROW(ConfigError, "{} (see pipeswap --help)", e.what());
  }
  CLI::App* cmd = run->parsed() ? run : denoise->parsed() ? denoise : generate->parsed() ? generate : plan;
  reject_extras(app, *cmd);
  o.command = cmd->get_name();
  if (!config_path.empty()) {
    std::vector<std::string> merged{o.command};
    for (auto& a : config_args(config_path, cmd)) merged.push_back(a);
    for (size_t i = 1; i < args.size(); ++i) merged.push_back(args[i]);
    merged = join_boolean_values(app, merged);
    Options fresh;
    o = fresh;
    chain_text.clear();
    app.clear();
    try {
      app.parse(std::vector<std::string>(merged.rbegin(), merged.rend()));
    } catch (const CLI::ParseError& e) {
      PS_THROW(ConfigError, "{} (from config file {} or the command line)", e.what(), config_path);
    }
    reject_extras(app, *cmd);
    o.command = cmd->get_name();
  }
  o.config = config_path;
  // Given (even empty: that is the kNoModelOrChain error, not the default chain): parsed here only.
  if (cmd->count("--device-chain") > 0) o.device_chain = pipeline::parse_device_chain(chain_text);
  if (cmd == denoise && cmd->count("--output") == 0) o.output = "latents.safetensors";
  if (cmd == generate) {
    // The output's default depends on the architecture (video.mp4, or none for text): generate.cpp decides.
    for (const CLI::Option* opt : cmd->get_options())
      if (opt->count() > 0 && !opt->get_lnames().empty())
        o.given.push_back({"--" + opt->get_lnames().front(), opt->get_group()});
    const int given = (cmd->count("--prompt") > 0) + !o.prompts_file.empty() + !o.prompt_ids.empty() +
                      !o.input.empty();
    PS_CHECK(given == 1, ConfigError,
             "generate needs exactly one of --prompt TEXT, --prompts FILE.jsonl, or the token ids --prompt-ids "
             "FILE.safetensors (a Wan repo) or --input ids.json (a text model) (got {})",
             given);
  }
  if (cmd == denoise) {
    // The demo Wan brings its own inputs; a checkpoint of yours needs yours.
    PS_CHECK(o.model.empty() || (!o.latents.empty() && !o.context.empty()), ConfigError,
             "--latents and --context are required with --model (safetensors files of the initial noise and the "
             "text encoder's output); without --model, pipeswap denoise runs the built-in demo Wan on built-in "
             "inputs");
    PS_CHECK(!o.model.empty() || o.latents.empty() == o.context.empty(), ConfigError,
             "give both --latents and --context, or neither (the demo Wan's built-in inputs)");
    PS_CHECK(o.guidance == 1.0 || !o.context_null.empty() || o.latents.empty(), ConfigError,
             "--guidance {} needs --context-null (the negative prompt's embeddings) for the unconditional pass; give "
             "it, or --guidance 1 to sample without guidance",
             o.guidance);
  }
  PS_CHECK(cmd->count("--model") == 0 || !o.model.empty(), ConfigError,
           "{}: --model was given without a directory; pass --model DIR with a Hugging Face checkpoint (config.json + "
           "model.safetensors), or leave it out to run the built-in demo",
           pipeline::kNoModelOrChain);
  return o;
}

}  // namespace pipeswap::launcher
