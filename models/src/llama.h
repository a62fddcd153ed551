// The Llama family in Hugging Face layout: Llama (1-3.x), Qwen2 and Mistral. One architecture with
// switches, because the three differ only in which projections carry biases, in defaults, and in
// Mistral/Qwen2's sliding-window attention.
//
// Matches transformers (4.4x-5.x) in fp32: RMSNorm in fp32, RoPE tables in fp32 with HF's rotate_half
// convention, GQA by repeating kv heads, causal prefill from position 0 (no KV cache).
//
// The config and RoPE helpers are declared here (not in the public header) for the unit tests.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "pipeswap/models/architecture.h"

namespace pipeswap::models {

std::unique_ptr<Architecture> make_llama(const nlohmann::json& config);

// RoPE parameters from config.json: "rope_scaling" (transformers 4) or "rope_parameters" (5).
struct RopeConfig {
  std::string type = "default";  // default | linear | dynamic | llama3 | yarn
  double theta = 10000.0;
  double factor = 1.0;
  int64_t max_position_embeddings = 2048;
  int64_t original_max_position_embeddings = 2048;  // llama3, yarn
  double low_freq_factor = 1.0;                      // llama3
  double high_freq_factor = 4.0;                     // llama3
  // yarn; 0 means "not set" (as HF's `x or default` treats it)
  double attention_factor = 0.0;
  double beta_fast = 0.0;
  double beta_slow = 0.0;
  double mscale = 0.0;
  double mscale_all_dim = 0.0;
  bool truncate = true;
};

// Everything the forward pass needs from config.json, after HF's defaults.
struct LlamaConfig {
  std::string family;  // model_type: llama | qwen2 | mistral
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t vocab_size = 0;
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;
  bool o_bias = false;
  bool mlp_bias = false;
  RopeConfig rope;
  std::vector<int64_t> sliding_window;  // per layer; 0 = full causal attention
};

// Throws CheckpointError naming the offending key and config.json.
LlamaConfig parse_llama_config(const nlohmann::json& config);

// RoPE inverse frequencies ([head_dim / 2], fp32, CPU) for a sequence of seq_len tokens, and the factor HF
// multiplies cos/sin by (yarn's attention factor, 1 otherwise). Only dynamic NTK depends on seq_len.
std::pair<torch::Tensor, double> rope_inv_freq(const LlamaConfig& config, int64_t seq_len);

}  // namespace pipeswap::models
