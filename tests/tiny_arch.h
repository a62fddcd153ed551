// A tiny architecture for engine tests: n blocks of two phases (w1 [d, d] + b1 [d], then w2 [d, d]),
// an embedding and a head of [d]; enough arithmetic that a wrong or stale weight changes the result.
#pragma once

#include <torch/types.h>

#include <fstream>
#include <string>
#include <vector>

#include "pipeswap/core/safetensors.h"
#include "pipeswap/models/architecture.h"
#include "pipeswap/offload/block_weights.h"

namespace pipeswap::test_support {

constexpr int kDim = 32;
// One block's slab: phase one w1 [d, d] + b1 [d] (4224 bytes, aligned to 4352), phase two w2 [d, d].
constexpr int64_t kTinyUnit = 4352 + kDim * kDim * 4;

class TinyArch : public models::Architecture {
 public:
  explicit TinyArch(int n) : n_(n) {}
  std::string family() const override { return "tiny"; }
  int num_blocks() const override { return n_; }
  int64_t hidden_size() const override { return kDim; }
  int64_t vocab_size() const override { return kDim; }
  std::vector<std::string> phase_names() const override { return {"one", "two"}; }
  std::vector<models::TensorRef> phase_tensors(int b, int p) const override {
    const std::string pre = "layers." + std::to_string(b) + ".";
    if (p == 0) return {{"w", pre + "w1", {kDim, kDim}}, {"b", pre + "b1", {kDim}}};
    return {{"w", pre + "w2", {kDim, kDim}}};
  }
  std::vector<models::PartSpec> prologue_parts() const override { return {{"embed", {{"e", "embed", {kDim}}}}}; }
  std::vector<models::PartSpec> epilogue_parts() const override { return {{"head", {{"h", "head", {kDim}}}}}; }
  models::Activation prologue(const models::WeightView& w, const models::Activation& in,
                              const torch::TensorOptions&) const override {
    return {in[0] + w["e"]};
  }
  void phase_forward(int, int p, const models::WeightView& w, models::Activation& act) const override {
    if (p == 0) act[0] = torch::tanh(torch::matmul(act[0], w["w"]) + w["b"]);
    else act[0] = act[0] + torch::matmul(act[0], w["w"]);
  }
  torch::Tensor epilogue(const models::WeightView& w, const models::Activation& act) const override {
    return act[0] * w["h"];
  }
  int64_t activation_bytes(int64_t b, int64_t s, c10::ScalarType t) const override {
    return b * s * kDim * static_cast<int64_t>(c10::elementSize(t));
  }

 private:
  int n_;
};

// Writes random weights for `blocks` blocks as dir/model.safetensors (+ a config.json).
inline void write_tiny_checkpoint(const std::string& dir, int blocks) {
  torch::manual_seed(7);
  std::vector<std::pair<std::string, torch::Tensor>> t;
  t.emplace_back("embed", torch::randn({kDim}));
  t.emplace_back("head", torch::randn({kDim}));
  for (int b = 0; b < blocks; ++b) {
    const std::string pre = "layers." + std::to_string(b) + ".";
    t.emplace_back(pre + "w1", torch::randn({kDim, kDim}) * 0.2);
    t.emplace_back(pre + "b1", torch::randn({kDim}) * 0.1);
    t.emplace_back(pre + "w2", torch::randn({kDim, kDim}) * 0.1);
  }
  write_safetensors(dir + "/model.safetensors", t);
  std::ofstream(dir + "/config.json") << "{\"model_type\": \"tiny\"}";
}

// Runs `sweeps` sweeps of the tiny model over `w` (input + sweep index as each sweep's input), in
// compute order, as a stage does; returns each sweep's output on the CPU.
inline std::vector<torch::Tensor> run_tiny(const models::Architecture& arch, offload::BlockWeights& w,
                                           const torch::Tensor& input, int blocks, int sweeps) {
  std::vector<torch::Tensor> out;
  w.expect_sweeps(sweeps);
  for (int s = 0; s < sweeps; ++s) {
    models::Activation act = arch.prologue(w.acquire_prologue(), {input + s}, {});
    w.release_prologue();
    for (int b = 0; b < blocks; ++b) {
      for (int p = 0; p < 2; ++p) {
        const auto& v = w.acquire(b, p);
        arch.phase_forward(b, p, v, act);
        w.release(b, p);
      }
    }
    out.push_back(arch.epilogue(w.acquire_epilogue(), act).cpu());
    w.release_epilogue();
  }
  return out;
}

}  // namespace pipeswap::test_support
