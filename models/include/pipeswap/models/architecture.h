// A model as a list of blocks: what every architecture declares and computes. Knows nothing of
// ranks, devices or swapping: weights arrive as a WeightView of tensors that already sit on the
// compute device in the compute dtype, and model code never learns where they came from.
#pragma once

#include <nlohmann/json.hpp>
#include "pipeswap/core/checkpoint.h"
#include <torch/types.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace pipeswap::models {

// One tensor of a part: the name model code uses, and the name in the checkpoint.
struct TensorRef {
  std::string local;       // "q_proj.weight"
  std::string checkpoint;  // "model.layers.3.self_attn.q_proj.weight"
  std::vector<int64_t> shape;  // as config.json implies it: the plan sizes memory from it, the loader
                               // checks the checkpoint against it
};

// A unit of weights kept in one slab: one phase of a block, or one non-block component.
struct PartSpec {
  std::string name;  // "blocks.3.attn", "embed_tokens", "lm_head"
  std::vector<TensorRef> tensors;
  // What a non-block component is, in the block-swap nodes' words: "txt_emb" (offload_txt_emb moves
  // it), "img_emb" (offload_img_emb), or "" for anything else.
  std::string role;
};

// Named tensor views (into one or more slabs). Lookups by local name.
class WeightView {
 public:
  void add(const std::string& local, torch::Tensor t);
  // Throws Error naming the missing tensor (a bug in an architecture's declarations).
  const torch::Tensor& operator[](const std::string& local) const;
  const torch::Tensor* find(const std::string& local) const;
  size_t size() const { return items_.size(); }

 private:
  std::vector<std::pair<std::string, torch::Tensor>> items_;
};

// What travels from stage to stage: tensors in an order the architecture defines
// (Llama: {hidden [B,T,d]}).
using Activation = std::vector<torch::Tensor>;

class Architecture {
 public:
  virtual ~Architecture() = default;

  virtual std::string family() const = 0;  // "llama", "qwen2", "mistral", ...
  virtual int num_blocks() const = 0;
  virtual int64_t hidden_size() const = 0;
  virtual int64_t vocab_size() const = 0;

  // Block structure: every block has the same phases (Llama: {"attn", "mlp"}).
  virtual std::vector<std::string> phase_names() const = 0;
  virtual std::vector<TensorRef> phase_tensors(int block, int phase) const = 0;
  // Non-block components, each a part of its own. The first stage owns the prologue parts, the
  // last stage the epilogue parts. A tensor may appear in both (tied embeddings).
  virtual std::vector<PartSpec> prologue_parts() const = 0;
  virtual std::vector<PartSpec> epilogue_parts() const = 0;

  // Compute. `inputs` are CPU tensors as the job read them (Llama: {input_ids int64 [B,T]});
  // `options` carries the compute device and dtype. prologue's WeightView holds every prologue
  // part's tensors, epilogue's every epilogue part's.
  virtual Activation prologue(const WeightView& w, const Activation& inputs,
                              const torch::TensorOptions& options) const = 0;
  virtual void phase_forward(int block, int phase, const WeightView& w, Activation& act) const = 0;
  // Returns the output on the compute device: Llama logits [B, T, vocab] in the compute dtype (the
  // jobs make float32 where they need it); Wan the velocity [B, C, F, H, W] in float32.
  virtual torch::Tensor epilogue(const WeightView& w, const Activation& act) const = 0;

  // Bytes of the activation for a micro-batch of `batch` sequences of `seq` tokens (plan estimate).
  virtual int64_t activation_bytes(int64_t batch, int64_t seq, c10::ScalarType dtype) const = 0;
  // Transient device bytes while one block of a micro-batch runs (its phases' intermediates: attention
  // projections, FFN hidden state), and while the epilogue runs (Llama: the logits, and their float32
  // copy for the output file), and while the prologue runs. The plan adds the largest that a rank runs.
  virtual int64_t block_workspace_bytes(int64_t batch, int64_t seq, c10::ScalarType dtype) const { return 0; }
  virtual int64_t epilogue_workspace_bytes(int64_t batch, int64_t seq, c10::ScalarType dtype) const { return 0; }
  virtual int64_t prologue_workspace_bytes(int64_t batch, int64_t seq, c10::ScalarType dtype) const { return 0; }
  // Bytes of the epilogue's output on the device (Llama: the logits in the compute dtype).
  virtual int64_t output_bytes(int64_t batch, int64_t seq, c10::ScalarType dtype) const { return 0; }
  // Bytes a rank keeps across passes for `blocks` of its blocks and `micro_batches` micro-batches of
  // `batch` samples (Wan: each block's cross-attention K/V of each branch's context).
  virtual int64_t cache_bytes(int64_t blocks, int64_t micro_batches, int64_t batch, c10::ScalarType dtype) const {
    return 0;
  }

  // Validates a forward pass's inputs before any weights load (ConfigError naming what is wrong), and
  // the tokens they make per sample (the plan sizes activations from it).
  virtual void check_inputs(const Activation& inputs) const {}
  virtual int64_t sequence_length(const Activation& inputs) const { return inputs.at(0).size(1); }

  // "llm" (token ids in, logits out: `pipeswap run`) or "dit" (latents in, velocity out: `pipeswap denoise`).
  virtual std::string kind() const { return "llm"; }
  // Checkpoint tensors the model does not use and that are not an error (Llama: rotary inv_freq
  // buffers old exports saved, lm_head.weight of a tied checkpoint).
  virtual bool ignores_tensor(const std::string& checkpoint_name) const { return false; }
};

// Compares the checkpoint's tensor names with every tensor the architecture declares (all blocks,
// prologue and epilogue). Throws CheckpointError naming the first missing tensor, or the first
// unexpected one (a checkpoint of another size or family than its config.json says).
void check_checkpoint_tensors(const Architecture& arch, const Checkpoint& ckpt);

// Picks the architecture from config.json ("model_type" / "architectures"). Throws CheckpointError
// naming the unsupported type and the supported ones.
std::unique_ptr<Architecture> make_architecture(const nlohmann::json& config);

// Helper for architectures: every block's parts, in order, with names "blocks.<i>.<phase>".
std::vector<PartSpec> block_parts(const Architecture& arch, int block);

}  // namespace pipeswap::models
