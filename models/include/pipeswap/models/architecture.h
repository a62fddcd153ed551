// A model as a list of blocks: what every architecture declares and computes. Knows nothing of
// ranks, devices or swapping: weights arrive as a WeightView of tensors that already sit on the
// compute device in the compute dtype, and model code never learns where they came from.
#pragma once

#include <torch/types.h>
#include <nlohmann/json.hpp>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "pipeswap/core/checkpoint.h"
#include "pipeswap/core/weights.h"

namespace pipeswap::models {

// The weight declarations live in core (pipeswap/core/weights.h), beside the stores that fill them.
using pipeswap::block_parts;
using pipeswap::PartSpec;
using pipeswap::TensorRef;
using pipeswap::WeightView;

// What travels from stage to stage: tensors in an order the architecture defines
// (Llama: {hidden [B,T,d]}).
using Activation = std::vector<torch::Tensor>;

// Its weights as ModelParts declares them (family, blocks, phases, components), and the compute.
class Architecture : public ModelParts {
 public:
  virtual int64_t hidden_size() const = 0;
  virtual int64_t vocab_size() const = 0;

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
  // Floating-point operations of one block on a micro-batch of `batch` x `seq` tokens (the plan's
  // cost model; 0: unknown, the plan then assumes nothing about compute).
  virtual double block_flops(int64_t batch, int64_t seq) const { return 0; }
  // Bytes a rank keeps across passes for `blocks` of its blocks and `micro_batches` micro-batches of
  // `batch` samples (Wan: each block's cross-attention K/V of each branch's context).
  virtual int64_t cache_bytes(int64_t blocks, int64_t micro_batches, int64_t batch, c10::ScalarType dtype) const {
    return 0;
  }

  // Generation (kind "llm"): each rank keeps the K/V of its own blocks for up to `max_batch` sequences of
  // `max_seq` tokens, allocated once (kv_cache_bytes predicts the bytes for `blocks` blocks). With a cache, the
  // activation carries a second tensor, int64 [B, 2] on the CPU: each row's cache slot and the position of its
  // first token (prefill from 0, or chunked; decode at the sequence's length). The blocks then attend over the
  // cache and the epilogue returns the logits of each row's last token only ([B, 1, vocab]).
  virtual int64_t kv_cache_bytes(int64_t blocks, int64_t max_batch, int64_t max_seq, c10::ScalarType dtype) const {
    return 0;
  }
  virtual void allocate_kv_cache(int first_block, int end_block, int64_t max_batch, int64_t max_seq,
                                 const torch::TensorOptions& options) const {}
  virtual void release_kv_cache() const {}
  // Generation's cost model (pipeswap plan's tokens/s): FLOPs of one block for `rows` sequences decoding one token
  // each over `context` cached tokens, and of the head (final norm + lm_head) for `rows` tokens.
  virtual double decode_block_flops(int64_t rows, int64_t context) const { return block_flops(rows, 1); }
  virtual double head_flops(int64_t rows) const { return 0; }

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

// --fp8-gemm scaled-mm: fp8 weights multiply through torch._scaled_mm where it runs (CUDA, LibTorch >= 2.5,
// compat::kHasScaledMm); off (the default): each fp8 weight is dequantised to the compute dtype for its use.
// Process-wide (a process runs one model); set before the job starts.
void set_fp8_gemm(bool on);
bool fp8_gemm_enabled();

}  // namespace pipeswap::models
