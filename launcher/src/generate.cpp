// `pipeswap generate`: Wan2.1 text-to-video from a diffusers repo, as WanPipeline runs it. Rank 0 tokenizes and
// encodes the prompts on demand (the text encoder read, used and freed while the other ranks wait), then every
// rank loads its part of the DiT and the denoise job samples across the ranks with swapping; the DiT is freed,
// and rank 0 decodes with the VAE (on demand too) and writes the file.
#include <ATen/Context.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <sys/stat.h>

#include <iostream>
#include <map>
#include <numeric>

#include "components.h"
#include "notices.h"
#include "job.h"
#include "outputs.h"
#include "pipeswap/core/device_memory.h"
#include "pipeswap/core/error.h"
#include "pipeswap/core/files.h"
#include "pipeswap/core/host_memory.h"
#include "pipeswap/core/json.h"
#include "pipeswap/core/log.h"
#include "pipeswap/core/safetensors.h"
#include "pipeswap/core/weights.h"
#include "pipeswap/models/tokenizer.h"
#include "pipeswap/models/wan_repo.h"
#include "pipeswap/pipeline/collective.h"
#include "pipeswap/pipeline/denoise_job.h"
#include "pipeswap/pipeline/generate_job.h"
#include "pipeswap/pipeline/inputs.h"
#include "pipeswap/pipeline/sampler.h"
#include "pipeswap/pipeline/video_output.h"
#include "spawn.h"

namespace pipeswap::launcher {
namespace {

using nlohmann::json;

// Rank 0's heartbeat while it works alone: well inside any --comm-timeout.
std::chrono::milliseconds heartbeat(const Options& o) {
  return std::chrono::milliseconds(std::max<int64_t>(50, static_cast<int64_t>(o.comm_timeout * 1000 / 4)));
}

torch::Device torch_device(const pipeline::DeviceSpec& d) {
  if (!d.is_cuda()) return torch::Device(torch::kCPU);
  return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(std::max(0, d.index)));
}

torch::Device component_device(const std::string& flag_value, const std::string& flag,
                               const std::vector<pipeline::ChainEntry>& chain) {
  if (flag_value.empty()) return torch_device(chain.at(0).device);
  const pipeline::DeviceSpec d = pipeline::parse_device(flag_value);
  PS_CHECK(!d.is_cuda() || at::hasCUDA(), ConfigError,
           "{} {}: this process sees no CUDA device (or this pipeswap was built without CUDA): use cpu", flag,
           flag_value);
  return torch_device(d);
}

void make_current(torch::Device d) {
  if (d.is_cuda()) c10::impl::getDeviceGuardImpl(d.type())->setDevice(d);
}

// The scheduler of the repo (scheduler/scheduler_config.json) as --sampler and --flow-shift ask for it.
std::shared_ptr<const pipeline::Sampler> make_sampler(const Options& o, const models::WanRepo& repo,
                                                      double* shift_used) {
  const std::string path = repo.scheduler + "/scheduler_config.json";
  json config = json::object();
  {
    struct stat st {};
    PS_CHECK(::stat(path.c_str(), &st) == 0, CheckpointError,
             "cannot read {}: is the repo's scheduler/ folder complete?", path);
    const std::string text = read_regular_file(path, "scheduler config");
    try {
      config = parse_json(text);
    } catch (const JsonError& e) {
      PS_THROW(CheckpointError, "{} is not valid JSON ({}): re-download the repo's scheduler/ folder", path, e.what());
    }
  }
  const std::string cls = config.value("_class_name", std::string());
  const bool unipc_config = cls == "UniPCMultistepScheduler";
  double shift = 5.0;
  if (unipc_config && config.contains("flow_shift") && config["flow_shift"].is_number())
    shift = config["flow_shift"].get<double>();
  else if (config.contains("shift") && config["shift"].is_number())
    shift = config["shift"].get<double>();
  if (o.flow_shift > 0) shift = o.flow_shift;
  *shift_used = shift;
  if (o.sampler == "euler") {
    const int n = config.value("num_train_timesteps", 1000);
    return pipeline::make_diffusers_flow_euler(o.steps, shift, n);
  }
  pipeline::UniPCConfig uc = unipc_config ? pipeline::UniPCConfig::from_json(config) : pipeline::UniPCConfig::wan(shift);
  uc.flow_shift = shift;
  return pipeline::make_unipc(o.steps, uc);
}

// What a phase held at its peak and after it (CPU tensors; the device's allocator where it is a GPU).
struct PhaseMemory {
  std::string name;
  double seconds = 0;
  int64_t host_peak = 0, host_after = 0;
  std::optional<int64_t> device_peak;
  std::string device;
};

class PhaseMeter {
 public:
  explicit PhaseMeter(torch::Device d) : device_(d) {}
  void start() {
    t0_ = Clock::now();
    reset_host_tensor_peak();
    if (device_.is_cuda()) reset_device_peak(device_.index());
  }
  PhaseMemory stop(const std::string& name) {
    PhaseMemory m;
    m.name = name;
    m.seconds = since(t0_);
    m.host_peak = host_tensor_peak();
    m.host_after = host_tensor_bytes();
    m.device = device_.str();
    if (device_.is_cuda()) m.device_peak = device_peak_allocated(device_.index());
    return m;
  }

 private:
  torch::Device device_;
  Clock::time_point t0_;
};

// The DiT's tokens for one sample of `size` (the probe's shapes only).
int64_t dit_tokens(const Job& job, const pipeline::VideoSize& size) {
  const json& config = job.ckpt->config();
  const int64_t channels = config.value("in_channels", config.value("in_dim", int64_t{16}));
  const int64_t text_dim = config.value("text_dim", int64_t{4096});
  const auto shape = pipeline::latent_shape(1, channels, size);
  models::Activation probe{torch::zeros(shape), torch::zeros({1}), torch::zeros({1, 512, text_dim})};
  return job.arch->sequence_length(probe);
}

c10::ScalarType text_encoder_dtype(const Options& o, const std::string& device) {
  return device.rfind("cuda", 0) == 0 && o.dtype != "fp32" ? torch::kBFloat16 : torch::kFloat32;
}

// The text encoder's device, dtype and placement; swapped, the DiT's copy settings (prefetch depth,
// non-blocking copies) apply to its stream too.
pipeline::TextEncoderSettings text_encoder_settings(const Options& o, const std::string& device) {
  pipeline::TextEncoderSettings s;
  s.device = torch_device(pipeline::parse_device(device));
  s.dtype = text_encoder_dtype(o, device);
  s.placement = pipeline::parse_text_encoder_placement(o.text_encoder);
  PS_CHECK(!o.text_encoder_blocks_to_swap || s.placement == pipeline::TextEncoderPlacement::kSwapped, ConfigError,
           "--text-encoder-blocks-to-swap {} needs --text-encoder swapped", *o.text_encoder_blocks_to_swap);
  s.swap.blocks_to_swap = o.text_encoder_blocks_to_swap;
  s.swap.prefetch_depth = o.prefetch_depth;
  s.swap.use_non_blocking = o.use_non_blocking;
  return s;
}

}  // namespace

int cmd_plan_repo(const Options& o, const World& world, comm::Transport& t) {
  const models::WanRepo repo = models::WanRepo::open(o.model);
  const pipeline::VideoSize size{o.frames, o.height, o.width};
  pipeline::check_video_size(size);
  const bool cfg = o.guidance > 1.0;
  Options dit = o;
  dit.model = repo.transformer;
  Job job = open_model(dit, world, t, JobUse::kPlan);
  JobShape shape{1, dit_tokens(job, size), std::nullopt};
  if (world.rank == 0) shape.stored_dtype = stored_dtype(job);
  pipeline::DenoiseSettings s;
  s.cfg = cfg;
  s.batch = 1;
  pipeline::ArrangementChoice choice;
  job.plan = make_job_plan(dit, world, t, job, shape, pipeline::denoise_units(s), o.steps, cfg, &choice);
  if (world.rank == 0) {
    const std::string first = job.chain.at(0).device.str();
    const std::string te = o.text_encoder_device.empty() ? first : o.text_encoder_device;
    const std::string vae = o.vae_device.empty() ? first : o.vae_device;
    const ComponentPlan c =
        plan_components(repo, 1, size, cfg, text_encoder_settings(o, te), vae, o.vae_tiling, job.plan);
    std::cout << job.plan.to_text() << choice.to_text_if_compared() << c.text << std::flush;
    if (!o.json.empty()) {
      json j = job.plan.to_json();
      if (!choice.candidates.empty()) j["arrangements"] = choice.to_json();
      j["components"] = c.json;
      write_text_atomically(o.json, "plan JSON", j.dump(2) + "\n");
    }
  }
  return 0;
}

// Wan2.1 T2V from a diffusers repo.
int cmd_generate_video(const Options& o, const World& world, std::unique_ptr<comm::Transport>& transport) {
  const auto t_start = Clock::now();
  count_host_tensor_memory();
  // Everything that can be checked without weights, before any are read.
  const pipeline::OutputKind out_kind = pipeline::output_kind(o.output);
  const pipeline::VideoSize size{o.frames, o.height, o.width};
  pipeline::check_video_size(size);
  const bool cfg = o.guidance > 1.0;  // WanPipeline's do_classifier_free_guidance
  if (world.rank == 0) pipeline::check_output(o.output, out_kind);
  if (world.rank == 0 && !o.save_latents.empty()) {
    PS_CHECK(out_kind != pipeline::OutputKind::kLatents, ConfigError,
             "--save-latents {} with --output {}: the output is the latents already; drop --save-latents, or give "
             "--output video.mp4 or frames/ to decode them too",
             o.save_latents, o.output);
    pipeline::check_output(o.save_latents, pipeline::OutputKind::kLatents);
  }
  PS_CHECK(!o.model.empty(), ConfigError,
           "generate needs --model DIR: a Wan2.1 text-to-video repo in the diffusers layout (e.g. "
           "Wan-AI/Wan2.1-T2V-1.3B-Diffusers)");
  if (world.rank == 0) check_job_files(o, o.model);
  set_threads(o, world);
  const models::WanRepo repo = models::WanRepo::open(o.model);

  // Rank 0's prompts (or ids), read and tokenized before any weights.
  std::vector<pipeline::PromptPair> prompts;
  models::PromptTokens cond;
  std::optional<models::PromptTokens> uncond;
  if (world.rank == 0) {
    if (!o.prompt_ids.empty()) {
      auto ids = pipeline::read_prompt_ids(o.prompt_ids, cfg);
      cond = std::move(ids.cond);
      uncond = std::move(ids.uncond);
    } else {
      prompts = o.prompts_file.empty() ? std::vector<pipeline::PromptPair>{{o.prompt, o.negative_prompt}}
                                       : pipeline::read_prompts_jsonl(o.prompts_file, o.negative_prompt);
      PS_CHECK(models::T5Tokenizer::available(), ConfigError,
               "this pipeswap was built without SentencePiece (Debian: libsentencepiece-dev), so it cannot tokenize "
               "prompts: install it and rebuild, or give token ids made elsewhere with --prompt-ids FILE.safetensors "
               "(input_ids, attention_mask [B, 512]; negative_input_ids, negative_attention_mask with guidance), e.g. "
               "from transformers' tokenizer of the repo's tokenizer/ folder");
      auto tokenizer = models::T5Tokenizer::open(repo.tokenizer);
      std::vector<std::string> texts, negatives;
      for (const auto& p : prompts) {
        texts.push_back(p.prompt);
        negatives.push_back(p.negative);
      }
      cond = tokenizer->tokenize(texts);  // warns for a prompt over 512 tokens (truncated, as diffusers does)
      if (cfg) uncond = tokenizer->tokenize(negatives);
    }
  }

  Options dit = o;
  dit.model = repo.transformer;
  Job job = open_model(dit, world, *transport, JobUse::kRun);
  PS_CHECK(job.arch->kind() == "dit", CheckpointError, "{}/transformer is not a Wan DiT", o.model);
  double shift = 0;
  const std::shared_ptr<const pipeline::Sampler> sampler = make_sampler(o, repo, &shift);
  comm::Transport& t0 = *transport;

  // Phase 1, rank 0 alone: the text encoder on demand.
  const torch::Device rank0_device = torch_device(job.chain.at(0).device);
  std::vector<PhaseMemory> phases;
  std::shared_ptr<const void> text_encoder_kept;  // --text-encoder resident: held until the job ends
  pipeline::DenoiseInputs in;
  pipeline::TextEncoderSettings te;  // rank 0's: the encode phase and the components' plan
  if (world.rank == 0) {
    const torch::Device te_device = component_device(o.text_encoder_device, "--text-encoder-device", job.chain);
    te = text_encoder_settings(o, te_device.str());
    PhaseMeter meter(te_device);
    pipeline::EncodedPrompts enc;
    pipeline::rank0_alone(
        t0, "encoding the prompts",
        [&] {
          make_current(te_device);
          meter.start();
          log().info("text encoder ({}): reading {} onto {} ({}), encoding {} prompt(s){}", to_string(te.placement),
                     repo.text_encoder, te_device.str(), c10::toString(te.dtype), cond.input_ids.size(0),
                     cfg ? " and their negative prompts" : "");
          enc = pipeline::encode_prompts(repo.text_encoder, cond, uncond, te);
          phases.push_back(meter.stop("encode"));
          text_encoder_kept = enc.kept;
          log().info("text encoder: done in {:.2f} s{}{}", phases.back().seconds,
                     enc.fills > 0 ? fmt::format(", {} layer fills", enc.fills) : "",
                     enc.kept ? ", kept on its device for the job (--text-encoder resident)" : ", freed");
        },
        heartbeat(o));
    in.context = enc.context;
    in.context_null = enc.context_null;
  } else {
    pipeline::rank0_alone(t0, "encoding the prompts", [] {}, heartbeat(o));
  }

  // The noise and the job's shape.
  pipeline::DenoiseSettings settings;
  settings.steps = o.steps;
  settings.guidance = o.guidance;
  settings.shift = shift;
  settings.cfg = cfg;
  settings.sampler = sampler;
  JobShape shape;
  if (world.rank == 0) {
    const int64_t batch = in.context.size(0);
    const json& config = job.ckpt->config();
    const int64_t channels = config.value("in_channels", config.value("in_dim", int64_t{16}));
    const std::vector<int64_t> want = pipeline::latent_shape(batch, channels, size);
    if (!o.latents.empty()) {
      in.latents = pipeline::read_tensor_input(o.latents, "--latents", "latents", 5);
      PS_CHECK(in.latents.sizes() == torch::IntArrayRef(want), ConfigError,
               "--latents {} is {}, but {} sample(s) of {} frames at {}x{} need noise of {}", o.latents,
               shape_str(in.latents), batch, size.frames, size.width, size.height, fmt::format("{}", fmt::join(want, "x")));
    } else {
      in.latents = pipeline::initial_noise(want, static_cast<uint64_t>(o.seed));
    }
    models::Activation probe{in.latents.narrow(0, 0, 1), torch::zeros({1}), in.context.narrow(0, 0, 1)};
    job.arch->check_inputs(probe);
    shape = JobShape{batch, job.arch->sequence_length(probe), stored_dtype(job)};
  }
  if (world.size > 1) shape = agree_shape(t0, shape);
  PS_CHECK(shape.batch > 0, CommError, "rank 0 could not prepare the inputs (see its error)");
  settings.batch = static_cast<int>(shape.batch);
  const int units = pipeline::denoise_units(settings);
  job.plan = make_job_plan(dit, world, t0, job, JobShape{1, shape.seq, shape.stored_dtype}, units, settings.steps,
                           settings.cfg);
  if (world.rank == 0) {
    const std::string first = job.chain.at(0).device.str();
    const std::string vae = o.vae_device.empty() ? first : o.vae_device;
    log().info("\n{}", plan_components(repo, shape.batch, size, cfg, te, vae, o.vae_tiling, job.plan).text);
  }

  // Rank 0 holds the prompts' embeddings and the float32 latents with the sampler's copies of them.
  int64_t io_bytes = 0;
  for (const auto& x : {in.context, in.context_null})
    if (x.defined()) io_bytes += x.numel() * x.element_size();
  if (in.latents.defined()) io_bytes += 4 * in.latents.numel() * 4;
  check_machine_memory(dit, world, t0, job, io_bytes);

  // Phase 2, every rank: the DiT.
  const auto t_dit = Clock::now();
  reset_host_tensor_peak();
  RankRuntime rt = start_rank(dit, world, transport, job);
  comm::Transport& t = *transport;
  PhaseMeter dit_meter(rt.device);
  dit_meter.start();
  double step_sum = 0;
  auto progress = [&](const pipeline::StepReport& r) {
    step_sum += r.seconds;
    const double eta = step_sum / r.step * (settings.steps - r.step);
    log().info("step {}/{} sigma {:.4f}: {:.3f} s, ETA {:.1f} s", r.step, settings.steps, r.sigma, r.seconds, eta);
  };
  auto result =
      pipeline::run_denoise(job.plan, world.rank, *job.arch, *rt.weights, t, in, settings, rt.device, progress);
  check_supervisor_alive();  // single-node mode: no output once the parent is gone
  rt.trace->finish(t);
  log_memory(job.plan.ranks.at(world.rank), *rt.weights, rt.device, settings.steps);
  PhaseMemory dit_phase = dit_meter.stop("denoise");
  dit_phase.seconds = since(t_dit);
  rt.weights.reset();  // the DiT freed before the VAE loads
  dit_phase.host_after = host_tensor_bytes();
  phases.push_back(dit_phase);

  // Phase 3, rank 0 alone: the VAE on demand, and the file.
  std::vector<std::string> written;
  std::string nonfinite;
  if (world.rank == 0) {
    check_supervisor_alive();
    nonfinite = nonfinite_line("latents", result.latents);
    const torch::Device vae_device = component_device(o.vae_device, "--vae-device", job.chain);
    PhaseMeter meter(vae_device);
    pipeline::rank0_alone(
        t, "decoding the video",
        [&] {
          make_current(vae_device);
          meter.start();
          const std::map<std::string, std::string> meta = {
              {"producer", "pipeswap generate"},      {"steps", std::to_string(settings.steps)},
              {"guidance", fmt::format("{}", settings.guidance)}, {"shift", fmt::format("{}", shift)},
              {"sampler", sampler->name()},           {"seed", std::to_string(o.seed)}};
          if (out_kind == pipeline::OutputKind::kLatents || !o.save_latents.empty()) {
            const std::string& path = out_kind == pipeline::OutputKind::kLatents ? o.output : o.save_latents;
            write_safetensors(path, {{"latents", result.latents}}, meta);
            written.push_back(path);
            if (out_kind == pipeline::OutputKind::kLatents) {
              phases.push_back(meter.stop("write"));
              return;
            }
          }
          pipeline::DecodeSettings ds;
          ds.device = vae_device;
          if (o.vae_tiling) ds.tiling = models::WanVaeTiling{};
          log().info("VAE: reading {} onto {}, decoding {} sample(s)", repo.vae, vae_device.str(), shape.batch);
          auto decoded = pipeline::decode_on_demand(repo.vae, result.latents, ds);
          const torch::Tensor u8 = pipeline::unit_to_u8(pipeline::frames_to_unit(decoded.frames));
          decoded.frames = torch::Tensor();
          phases.push_back(meter.stop("decode"));
          const auto t_write = Clock::now();
          reset_host_tensor_peak();
          const int b = static_cast<int>(u8.size(0));
          for (int i = 0; i < b; ++i) {
            const std::string path = pipeline::sample_output(o.output, out_kind, i, b);
            if (out_kind == pipeline::OutputKind::kMp4) {
              pipeline::write_mp4(path, u8[i], o.fps);
            } else {
              pipeline::write_png_frames(path, u8[i]);
            }
            written.push_back(path);
          }
          PhaseMemory w;
          w.name = "write";
          w.seconds = since(t_write);
          w.host_peak = host_tensor_peak();
          w.host_after = host_tensor_bytes();
          w.device = "cpu";
          phases.push_back(w);
        },
        heartbeat(o));
  } else {
    pipeline::rank0_alone(t, "decoding the video", [] {}, heartbeat(o));
  }
  t.barrier();
  if (world.rank == 0) {
    std::string s = fmt::format("pipeswap generate: {} ({}), {} blocks on {} rank(s), {} sample(s) of {} frames at "
                                "{}x{}, {} tokens, {} micro-batches per step\n",
                                o.model, job.plan.family, job.plan.num_blocks, world.size, shape.batch, size.frames,
                                size.width, size.height, shape.seq, units);
    s += rank_lines(job.plan);
    s += fmt::format("  {} steps of {} in {:.3f} s ({:.3f} s/step), guidance {}, shift {}, seed {}\n",
                     settings.steps, sampler->name(), result.seconds, result.seconds / settings.steps,
                     settings.guidance, shift, o.latents.empty() ? std::to_string(o.seed) : "--latents");
    for (const auto& p : phases) {
      s += fmt::format("  phase {:<7} {:8.3f} s  host tensors peak {} after {}", p.name, p.seconds,
                       pipeline::format_bytes(p.host_peak), pipeline::format_bytes(p.host_after));
      if (p.device_peak) s += fmt::format(", {} peak {}", p.device, pipeline::format_bytes(*p.device_peak));
      s += " (rank 0)\n";
    }
    s += fmt::format("  total {:.2f} s -> {}\n", since(t_start), fmt::join(written, ", "));
    s += nonfinite;
    std::cout << s << std::flush;
  }
  (void)rank0_device;
  text_encoder_kept.reset();
  return 0;
}

int cmd_generate(const Options& opts, const World& world, std::unique_ptr<comm::Transport>& transport) {
  PS_CHECK(!opts.model.empty(), ConfigError,
           "generate needs --model DIR: a Wan2.1 text-to-video repo in the diffusers layout (e.g. "
           "Wan-AI/Wan2.1-T2V-1.3B-Diffusers) for a video, or a Llama, Qwen2 or Mistral checkpoint for text");
  const std::string text_type = text_model_type(opts.model);
  const bool text = !text_type.empty();
  Options o = opts;
  if (!o.was_given("--output")) o.output = text ? "" : "video.mp4";
  if (world.rank == 0)
    warn_idle_generate_flags(o, text, text ? fmt::format("a text model ({} checkpoint {})", text_type, o.model)
                                           : fmt::format("a Wan video repo ({})", o.model));
  if (text) {
    PS_CHECK(o.prompt_ids.empty(), ConfigError,
             "--prompt-ids is a Wan repo's T5 token ids; {} is a {} checkpoint: give its token ids with --input "
             "ids.json",
             o.model, text_type);
    return cmd_generate_text(o, world, transport);
  }
  PS_CHECK(o.input.empty(), ConfigError,
           "--input is a text model's token ids; {} is no Llama-family checkpoint (config.json's model_type): for a "
           "Wan repo give T5 token ids with --prompt-ids FILE.safetensors",
           o.model);
  return cmd_generate_video(o, world, transport);
}

}  // namespace pipeswap::launcher
