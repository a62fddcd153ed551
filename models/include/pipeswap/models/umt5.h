// umT5's encoder: transformers' UMT5EncoderModel (5.17) as the diffusers layout of a Wan repo ships it in
// text_encoder/ (config.json with "model_type": "umt5", model-0000N-of-0000M.safetensors and their index).
//
// The computation, per transformers:
//   x = embedding(ids)                                           (shared.weight; tied to encoder.embed_tokens)
//   every layer i:  x = x + o(attention(n, bias_i, key mask)),   n = T5 LayerNorm(x)
//                   x = x + wo(gelu_new(wi_0 n) * wi_1 n),       n = T5 LayerNorm(x)
//   output = T5 LayerNorm(x)                                     (final_layer_norm)
// where the T5 LayerNorm is an RMS norm without mean or bias, its statistics in fp32, rounded to the weight's
// dtype before the weight; attention is softmax(q k^T + bias_i + mask) v with no 1/sqrt(d) scaling; and
// bias_i is layer i's own relative_attention_bias (umT5 has one in every layer; T5 and mT5 only in the
// first) looked up by bidirectional, log-bucketed relative positions (relative_attention_num_buckets,
// relative_attention_max_distance). Padding keys are masked; padding queries are computed as transformers
// computes them.
//
// Dtypes as transformers runs them: every operation in the compute dtype (fp32, or bf16 as WanPipeline loads
// it), the norms' statistics and the softmax accumulated in fp32. transformers keeps the FFN's `wo` in fp32
// only when it loads umT5 in fp16 (_keep_in_fp32_modules), which pipeswap refuses: its activations overflow
// there and transformers clamps them, which neither bf16 nor fp32 needs.
//
// The encoder is a block list (Architecture): prologue the token embedding, blocks the layers with phases
// "attn" and "ffn", epilogue the final norm, so that it can be swapped block by block like the DiT later.
// UMT5Encoder is the resident form: every weight on one device.
//
// WanPipeline (diffusers 0.42.1, _get_t5_prompt_embeds) then keeps each prompt's first `length` rows
// (the attention mask's ones) and pads with zeros back to max_sequence_length: wan_prompt_embeds.
#pragma once

#include <torch/types.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <string>

#include "pipeswap/core/checkpoint.h"
#include "pipeswap/models/architecture.h"
#include "pipeswap/models/tokenizer.h"

namespace pipeswap::models {

struct UMT5Config {
  int64_t vocab_size = 0;
  int64_t d_model = 0;
  int64_t d_kv = 0;
  int64_t d_ff = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_buckets = 32;    // relative_attention_num_buckets
  int64_t max_distance = 128;  // relative_attention_max_distance
  double eps = 1e-6;           // layer_norm_epsilon
  // The embedding's name in the checkpoint: "shared.weight", or "encoder.embed_tokens.weight" where a
  // checkpoint holds only that one of the two tied names.
  std::string embedding = "shared.weight";

  int64_t inner_dim() const { return num_heads * d_kv; }
};

// True when config.json describes umT5 ("model_type": "umt5").
bool is_umt5_config(const nlohmann::json& config);
// Throws CheckpointError naming the key that is missing or wrong (and the families that are supported).
UMT5Config parse_umt5_config(const nlohmann::json& config);
std::unique_ptr<Architecture> make_umt5_encoder(const UMT5Config& config);

// Bucket of every (query i, key j) pair: int64 [query_length, key_length] on the CPU, from the relative
// position j - i, bidirectional (half the buckets for keys after the query), computed with the same float32
// operations as transformers' _relative_position_bucket so that boundaries round alike.
torch::Tensor relative_position_buckets(int64_t query_length, int64_t key_length, int64_t num_buckets,
                                        int64_t max_distance);

// WanPipeline's trim and pad: each sample's first sum(attention_mask) rows of `hidden` ([B, T, d]), then
// zeros up to max_length rows (-1: T). Same dtype and device as `hidden`.
torch::Tensor wan_prompt_embeds(const torch::Tensor& hidden, const torch::Tensor& attention_mask,
                                int64_t max_length = -1);

// A Wan repo's text_encoder/ opened and checked as UMT5Encoder::load checks it (pickles refused, umT5
// config, every tensor the config implies), without reading any weight: for running the encoder's
// architecture through another weight store (the swapped placement: pipeline/generate_job.h).
struct UMT5Checkpoint {
  std::shared_ptr<const Checkpoint> ckpt;
  UMT5Config config;
  std::unique_ptr<Architecture> arch;
};
UMT5Checkpoint open_umt5(const std::string& dir, c10::ScalarType dtype);

class UMT5Encoder {
 public:
  // Reads `dir` (a Wan repo's text_encoder/: config.json and safetensors, sharded or not) onto `device`
  // in `dtype` (float32 or bfloat16). Throws CheckpointError for a missing folder, a pickled .pth/.bin
  // checkpoint (pipeswap never unpickles: use the diffusers layout), a config that is not umT5, or
  // tensors the config does not imply; ConfigError for float16.
  static std::unique_ptr<UMT5Encoder> load(const std::string& dir, torch::Device device, c10::ScalarType dtype);

  // last_hidden_state ([B, T, d_model] on the device, in the compute dtype) for int64 ids [B, T] and their
  // attention mask [B, T] (1: token, 0: padding; undefined: all tokens), given on any device.
  torch::Tensor forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask = {}) const;
  // forward, then wan_prompt_embeds: what WanPipeline passes the transformer as encoder_hidden_states.
  torch::Tensor encode(const PromptTokens& tokens) const;

  const UMT5Config& config() const { return config_; }
  int64_t weight_bytes() const { return model_bytes(*arch_, dtype_); }  // as held (device, dtype)
  const Architecture& architecture() const { return *arch_; }
  torch::Device device() const { return device_; }
  c10::ScalarType dtype() const { return dtype_; }

 private:
  UMT5Encoder() = default;
  UMT5Config config_;
  std::unique_ptr<Architecture> arch_;
  torch::Device device_{torch::kCPU};
  c10::ScalarType dtype_ = torch::kFloat32;
  WeightView prologue_;
  std::vector<std::vector<WeightView>> blocks_;  // [layer][phase]
  WeightView epilogue_;
};

}  // namespace pipeswap::models
