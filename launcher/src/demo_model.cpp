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

namespace pipeswap::launcher {
namespace fs = std::filesystem;
namespace {

// Bump when the demo's config or weights change: the directory name carries it.
constexpr const char* kDemoName = "demo-llama-v1";
constexpr int kLayers = 12, kHidden = 256, kHeads = 8, kKvHeads = 4, kFfn = 704, kVocab = 1024;

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
};

torch::Tensor random_tensor(Rng& rng, std::vector<int64_t> shape, float center, float spread) {
  torch::Tensor t = torch::empty(shape, torch::kFloat32);
  float* p = t.data_ptr<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = center + spread * (2.0f * rng.uniform() - 1.0f);
  return t;
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

}  // namespace

std::string cache_dir() {
  if (const char* c = std::getenv("PIPESWAP_CACHE"); c && *c) return c;
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) return std::string(x) + "/pipeswap";
  if (const char* h = std::getenv("HOME"); h && *h) return std::string(h) + "/.cache/pipeswap";
  return "/tmp/pipeswap-cache";
}

std::string ensure_demo_model() {
  const std::string root = cache_dir();
  const std::string dir = root + "/" + kDemoName;
  if (fs::exists(dir + "/config.json") && fs::exists(dir + "/model.safetensors")) return dir;
  std::error_code ec;
  fs::create_directories(root, ec);
  PS_CHECK(!ec, IoError, "cannot create the cache directory {}: {} (set PIPESWAP_CACHE to a writable directory)",
           root, ec.message());
  const std::string tmp = fmt::format("{}.tmp.{}", dir, ::getpid());
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  PS_CHECK(!ec, IoError, "cannot create {}: {} (set PIPESWAP_CACHE to a writable directory)", tmp, ec.message());
  log().info("writing the built-in demo model to {}", dir);
  write_demo(tmp);
  // Another rank may have won the race; its directory holds the same bytes.
  if (std::rename(tmp.c_str(), dir.c_str()) != 0) fs::remove_all(tmp, ec);
  PS_CHECK(fs::exists(dir + "/model.safetensors"), IoError, "could not create the demo model in {}", dir);
  return dir;
}

torch::Tensor demo_input_ids() {
  Rng rng{0x1d5};
  torch::Tensor ids = torch::empty({8, 64}, torch::kInt64);
  int64_t* p = ids.data_ptr<int64_t>();
  for (int64_t i = 0; i < ids.numel(); ++i) p[i] = static_cast<int64_t>(rng.next() % kVocab);
  return ids;
}

}  // namespace pipeswap::launcher
