#include "demo_model.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "pipeswap/core/error.h"
#include "pipeswap/core/log.h"
#include "pipeswap/core/safetensors.h"
#include "pipeswap/models/architecture.h"

namespace pipeswap::launcher {
namespace fs = std::filesystem;
namespace {

// Bump when the demo's config or weights change: the directory name carries it.
constexpr const char* kDemoName = "demo-llama-v1";
constexpr int kLayers = 12, kHidden = 256, kHeads = 8, kKvHeads = 4, kFfn = 704, kVocab = 1024;
// The demo Wan: Wan2.1's architecture and checkpoint layout (16 latent channels, patch 1x2x2, 3D RoPE,
// self and cross attention, CFG), shrunk to 8 blocks of width 64 so that 50 steps take a second on a CPU.
constexpr const char* kDemoWanName = "demo-wan-v1";
constexpr int kWanLayers = 8, kWanDim = 64, kWanHeads = 4, kWanFfn = 128, kWanTextDim = 64, kWanTextLen = 16;
constexpr int64_t kWanLatentShape[] = {1, 16, 3, 8, 8};  // [B, C, F, H, W]: 3 x 4 x 4 = 48 tokens (50 steps: seconds on a CPU)

// splitmix64: the same bytes on every machine and LibTorch version (torch's generators may differ).
struct Rng {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  float uniform() { return static_cast<float>((next() >> 40) * (1.0 / 16777216.0)); }  // [0, 1)
  // Standard normal (Box-Muller; one draw per call, the same on every machine).
  float normal() {
    const double u1 = (static_cast<double>(next() >> 11) + 1.0) * (1.0 / 9007199254740993.0);  // (0, 1]
    const double u2 = static_cast<double>(next() >> 11) * (1.0 / 9007199254740992.0);
    return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
  }
};

torch::Tensor random_tensor(Rng& rng, std::vector<int64_t> shape, float center, float spread) {
  torch::Tensor t = torch::empty(shape, torch::kFloat32);
  float* p = t.data_ptr<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = center + spread * (2.0f * rng.uniform() - 1.0f);
  return t;
}

torch::Tensor normal_tensor(Rng& rng, std::vector<int64_t> shape) {
  torch::Tensor t = torch::empty(shape, torch::kFloat32);
  float* p = t.data_ptr<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = rng.normal();
  return t;
}

// Writes a demo checkpoint into a private temporary directory and renames it into place: safe when
// several ranks on one node call it at once (the loser's directory holds the same bytes).
std::string ensure_written(const char* name, const char* weights_file, void (*write)(const std::string& dir)) {
  const std::string root = cache_dir();
  const std::string dir = root + "/" + name;
  if (fs::exists(dir + "/config.json") && fs::exists(dir + "/" + weights_file)) return dir;
  std::error_code ec;
  fs::create_directories(root, ec);
  PS_CHECK(!ec, IoError, "cannot create the cache directory {}: {} (set PIPESWAP_CACHE to a writable directory)",
           root, ec.message());
  const std::string tmp = fmt::format("{}.tmp.{}", dir, ::getpid());
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  PS_CHECK(!ec, IoError, "cannot create {}: {} (set PIPESWAP_CACHE to a writable directory)", tmp, ec.message());
  log().info("writing the built-in demo model to {}", dir);
  write(tmp);
  if (std::rename(tmp.c_str(), dir.c_str()) != 0) fs::remove_all(tmp, ec);
  PS_CHECK(fs::exists(dir + "/" + weights_file), IoError, "could not create the demo model in {}", dir);
  return dir;
}

nlohmann::json demo_config() {
  return {{"architectures", {"LlamaForCausalLM"}},
          {"model_type", "llama"},
          {"hidden_size", kHidden},
          {"intermediate_size", kFfn},
          {"num_hidden_layers", kLayers},
          {"num_attention_heads", kHeads},
          {"num_key_value_heads", kKvHeads},
          {"vocab_size", kVocab},
          {"max_position_embeddings", 2048},
          {"rms_norm_eps", 1e-5},
          {"rope_theta", 10000.0},
          {"rope_scaling", nullptr},
          {"tie_word_embeddings", false},
          {"attention_bias", false},
          {"mlp_bias", false},
          {"hidden_act", "silu"},
          {"torch_dtype", "float32"},
          {"pipeswap_demo", kDemoName}};
}

void write_demo(const std::string& dir) {
  Rng rng{0x5eed0001};
  const int head_dim = kHidden / kHeads;
  // Uniform(-a, a) with a = 0.02 * sqrt(3): the std HF uses to initialise Llama.
  const float a = 0.02f * std::sqrt(3.0f);
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  tensors.emplace_back("model.embed_tokens.weight", random_tensor(rng, {kVocab, kHidden}, 0, a));
  for (int l = 0; l < kLayers; ++l) {
    const std::string p = fmt::format("model.layers.{}.", l);
    tensors.emplace_back(p + "input_layernorm.weight", random_tensor(rng, {kHidden}, 1, 0.1f));
    tensors.emplace_back(p + "self_attn.q_proj.weight", random_tensor(rng, {kHeads * head_dim, kHidden}, 0, a));
    tensors.emplace_back(p + "self_attn.k_proj.weight", random_tensor(rng, {kKvHeads * head_dim, kHidden}, 0, a));
    tensors.emplace_back(p + "self_attn.v_proj.weight", random_tensor(rng, {kKvHeads * head_dim, kHidden}, 0, a));
    tensors.emplace_back(p + "self_attn.o_proj.weight", random_tensor(rng, {kHidden, kHeads * head_dim}, 0, a));
    tensors.emplace_back(p + "post_attention_layernorm.weight", random_tensor(rng, {kHidden}, 1, 0.1f));
    tensors.emplace_back(p + "mlp.gate_proj.weight", random_tensor(rng, {kFfn, kHidden}, 0, a));
    tensors.emplace_back(p + "mlp.up_proj.weight", random_tensor(rng, {kFfn, kHidden}, 0, a));
    tensors.emplace_back(p + "mlp.down_proj.weight", random_tensor(rng, {kHidden, kFfn}, 0, a));
  }
  tensors.emplace_back("model.norm.weight", random_tensor(rng, {kHidden}, 1, 0.1f));
  tensors.emplace_back("lm_head.weight", random_tensor(rng, {kVocab, kHidden}, 0, a));
  write_safetensors(dir + "/model.safetensors", tensors, {{"format", "pt"}});
  std::ofstream(dir + "/config.json") << demo_config().dump(2) << "\n";
}

nlohmann::json demo_wan_config() {
  return {{"_class_name", "WanModel"},  {"model_type", "t2v"},        {"dim", kWanDim},
          {"ffn_dim", kWanFfn},         {"num_heads", kWanHeads},     {"num_layers", kWanLayers},
          {"in_dim", 16},               {"out_dim", 16},              {"text_dim", kWanTextDim},
          {"freq_dim", 64},             {"text_len", kWanTextLen},    {"patch_size", {1, 2, 2}},
          {"eps", 1e-6},                {"qk_norm", true},            {"cross_attn_norm", true},
          {"pipeswap_demo", kDemoWanName}};
}

// Every tensor the architecture declares, drawn as Wan initialises them in spirit: matrices with the
// spread 1/sqrt(fan_in) (activations keep their size through the blocks), norms near 1, biases near 0,
// modulation with the spread 1/sqrt(dim).
void write_demo_wan(const std::string& dir) {
  const nlohmann::json config = demo_wan_config();
  const auto arch = models::make_architecture(config);
  Rng rng{0x5eed0002};
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  auto add = [&](const std::vector<PartSpec>& parts) {
    for (const PartSpec& part : parts) {
      for (const TensorRef& t : part.tensors) {
        const std::string& n = t.checkpoint;
        const auto ends = [&](const char* tail) {
          const std::string s(tail);
          return n.size() >= s.size() && n.compare(n.size() - s.size(), s.size(), s) == 0;
        };
        int64_t fan_in = 1;
        for (size_t d = 1; d < t.shape.size(); ++d) fan_in *= t.shape[d];
        float center = 0, spread = 0.02f;
        if (ends("modulation")) {
          spread = std::sqrt(3.0f / kWanDim);
        } else if (n.find("norm") != std::string::npos && ends(".weight")) {
          center = 1;
          spread = 0.1f;
        } else if (t.shape.size() >= 2) {
          spread = std::sqrt(3.0f / static_cast<float>(fan_in));
        }
        tensors.emplace_back(n, random_tensor(rng, t.shape, center, spread));
      }
    }
  };
  add(arch->prologue_parts());
  for (int b = 0; b < arch->num_blocks(); ++b) add(block_parts(*arch, b));
  add(arch->epilogue_parts());
  write_safetensors(dir + "/diffusion_pytorch_model.safetensors", tensors, {{"format", "pt"}});
  std::ofstream(dir + "/config.json") << config.dump(2) << "\n";
}

}  // namespace

std::string cache_dir() {
  if (const char* c = std::getenv("PIPESWAP_CACHE"); c && *c) return c;
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) return std::string(x) + "/pipeswap";
  if (const char* h = std::getenv("HOME"); h && *h) return std::string(h) + "/.cache/pipeswap";
  return "/tmp/pipeswap-cache";
}

std::string demo_model_dir() { return cache_dir() + "/" + kDemoName; }
std::string demo_wan_dir() { return cache_dir() + "/" + kDemoWanName; }

std::string ensure_demo_model() { return ensure_written(kDemoName, "model.safetensors", write_demo); }

std::string ensure_demo_wan() {
  return ensure_written(kDemoWanName, "diffusion_pytorch_model.safetensors", write_demo_wan);
}

DemoDenoiseInputs demo_denoise_inputs() {
  Rng rng{0x1d6};
  DemoDenoiseInputs in;
  in.latents = normal_tensor(rng, {std::begin(kWanLatentShape), std::end(kWanLatentShape)});
  in.context = normal_tensor(rng, {1, kWanTextLen, kWanTextDim});
  in.context_null = normal_tensor(rng, {1, kWanTextLen, kWanTextDim});
  return in;
}

torch::Tensor demo_input_ids() {
  Rng rng{0x1d5};
  torch::Tensor ids = torch::empty({8, 64}, torch::kInt64);
  int64_t* p = ids.data_ptr<int64_t>();
  for (int64_t i = 0; i < ids.numel(); ++i) p[i] = static_cast<int64_t>(rng.next() % kVocab);
  return ids;
}

}  // namespace pipeswap::launcher
