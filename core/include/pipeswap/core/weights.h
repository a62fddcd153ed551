// What model code and the weight stores share about weights: a tensor's two names and declared
// shape, a part (a slab's worth of tensors), the parts a model declares (ModelParts), and the named
// views model code computes with. In core so that models (which declares them) and offload (which
// fills them) stand side by side on core, neither including the other.
#pragma once

#include <torch/types.h>

#include <string>
#include <utility>
#include <vector>

#include "pipeswap/core/fp8.h"
#include "pipeswap/core/shape.h"

namespace pipeswap {

// One tensor of a part: the name model code uses, and the name in the checkpoint.
struct TensorRef {
  std::string local;           // "q_proj.weight"
  std::string checkpoint;      // "model.layers.3.self_attn.q_proj.weight"
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
//
// An fp8 weight (fp8.h) rests as bytes plus a float32 scale; operator[] dequantises it to the compute
// dtype on the device it rests on, at each lookup: the compute-dtype tensor is a temporary of one weight
// that lives while the layer uses it, never a second resident copy. Where the block store dequantised the
// phase ahead (offload/src/fp8_ahead.h), operator[] returns that copy in the store's workspace instead.
// Model code looks each weight up once per use and never learns which kind it got.
class WeightView {
 public:
  struct Fp8Weight {
    torch::Tensor bytes;  // uint8, the weight's shape
    torch::Tensor scale;  // float32, broadcastable to the weight; undefined: 1
    Fp8Format format = Fp8Format::kNone;
    c10::ScalarType dtype = c10::ScalarType::Float;  // what operator[] gives
    torch::Tensor dequantised;  // set by the dequantise ahead: operator[] returns it as it is
  };
  void add(const std::string& local, torch::Tensor t);
  void add_fp8(const std::string& local, Fp8Weight w);
  // The weight in the compute dtype. Throws Error naming the missing tensor (a bug in an architecture's
  // declarations).
  torch::Tensor operator[](const std::string& local) const;
  bool has(const std::string& local) const;
  // The fp8 form of a weight (for fp8 GEMMs); nullptr where the weight is not fp8.
  const Fp8Weight* fp8(const std::string& local) const;
  size_t size() const { return items_.size(); }
  // The fp8 weights' local names, in the order they were added.
  std::vector<std::string> fp8_names() const;
  // Gives the fp8 weight `local` its dequantised copy (the weight's shape, its Fp8Weight::dtype).
  void set_dequantised(const std::string& local, torch::Tensor value);

 private:
  struct Item {
    std::string local;
    torch::Tensor tensor;  // plain weights
    Fp8Weight fp8;         // fp8 weights (fp8.format != kNone)
  };
  const Item* find(const std::string& local) const;
  std::vector<Item> items_;
};

// The weights a model declares, block by block and phase by phase, and its non-block components:
// all that a weight store knows of a model (models::Architecture declares them; offload reads them).
class ModelParts {
 public:
  virtual ~ModelParts() = default;
  virtual std::string family() const = 0;  // "llama", "qwen2", "mistral", ...
  virtual int num_blocks() const = 0;
  // Block structure: every block has the same phases (Llama: {"attn", "mlp"}).
  virtual std::vector<std::string> phase_names() const = 0;
  virtual std::vector<TensorRef> phase_tensors(int block, int phase) const = 0;
  // Non-block components, each a part of its own. The first stage owns the prologue parts, the
  // last stage the epilogue parts. A tensor may appear in both (tied embeddings).
  virtual std::vector<PartSpec> prologue_parts() const = 0;
  virtual std::vector<PartSpec> epilogue_parts() const = 0;
};

// Every phase of one block as a part, in order, named "blocks.<i>.<phase>".
std::vector<PartSpec> block_parts(const ModelParts& model, int block);

// Bytes of every declared tensor of a part in `dtype` (no slab alignment).
int64_t part_bytes(const PartSpec& part, c10::ScalarType dtype);
// Bytes of every tensor the model declares (prologue, blocks, epilogue) in `dtype`, each checkpoint tensor once
// (a tied embedding counts once): the weights as one device would hold them.
int64_t model_bytes(const ModelParts& model, c10::ScalarType dtype);
// Bytes of the data of defined tensors, summed (what a message or a transfer moves).
int64_t total_nbytes(const std::vector<torch::Tensor>& tensors);

inline std::string shape_str(const torch::Tensor& t) { return shape_str(t.sizes()); }

}  // namespace pipeswap
