#include <map>

#include "pipeswap/core/error.h"
#include "pipeswap/offload/block_weights.h"
#include "pipeswap/offload/slab.h"

namespace pipeswap::offload {
namespace {

// Every owned part in a slab of its own on the compute device, loaded once at construction.
class ResidentWeights final : public BlockWeights {
 public:
  ResidentWeights(const models::Architecture& arch, std::shared_ptr<const Checkpoint> ckpt, const OwnedParts& owned,
                  c10::ScalarType dtype, torch::Device device)
      : first_block_(owned.first_block) {
    const int nphases = static_cast<int>(arch.phase_names().size());
    nphases_ = nphases;
    if (owned.prologue)
      for (const auto& part : arch.prologue_parts()) load_component(*ckpt, part, dtype, device, prologue_);
    for (int b = owned.first_block; b < owned.end_block; ++b) {
      const auto parts = models::block_parts(arch, b);
      for (int p = 0; p < nphases; ++p) {
        blocks_.emplace_back();
        load(*ckpt, parts[p], dtype, device, blocks_.back());
      }
    }
    if (owned.epilogue)
      for (const auto& part : arch.epilogue_parts()) load_component(*ckpt, part, dtype, device, epilogue_);
  }

  const models::WeightView& acquire(int block, int phase) override {
    const size_t i = static_cast<size_t>((block - first_block_) * nphases_ + phase);
    PS_CHECK(block >= first_block_ && i < blocks_.size(), Error, "block {} is not owned by this rank", block);
    return blocks_[i];
  }
  void release(int, int) override {}
  const models::WeightView& prologue() const override { return prologue_; }
  const models::WeightView& epilogue() const override { return epilogue_; }
  int64_t device_bytes() const override { return bytes_; }

 private:
  // Components may share tensors (tied embeddings: lm_head is embed_tokens); a rank holding both
  // keeps one copy, as the plan counts it.
  void load_component(const Checkpoint& ckpt, const models::PartSpec& part, c10::ScalarType dtype,
                      torch::Device device, models::WeightView& into) {
    bool all_loaded = true;
    for (const auto& t : part.tensors) all_loaded = all_loaded && components_.count(t.checkpoint) > 0;
    if (all_loaded) {
      for (const auto& t : part.tensors) into.add(t.local, components_.at(t.checkpoint));
      return;
    }
    models::WeightView mine;
    load(ckpt, part, dtype, device, mine);
    for (const auto& t : part.tensors) {
      components_[t.checkpoint] = mine[t.local];
      into.add(t.local, mine[t.local]);
    }
  }

  void load(const Checkpoint& ckpt, const models::PartSpec& part, c10::ScalarType dtype, torch::Device device,
            models::WeightView& into) {
    const SlabLayout layout = make_layout(part, dtype);
    torch::Tensor host = torch::empty({layout.bytes}, torch::TensorOptions().dtype(torch::kUInt8));
    read_part(ckpt, layout, host);
    torch::Tensor slab = device.is_cpu() ? host : host.to(device);
    add_views(layout, slab, into);
    bytes_ += layout.bytes;
  }

  int first_block_ = 0;
  int nphases_ = 1;
  std::vector<models::WeightView> blocks_;
  models::WeightView prologue_;
  models::WeightView epilogue_;
  std::map<std::string, torch::Tensor> components_;  // checkpoint name -> view
  int64_t bytes_ = 0;
};

}  // namespace

std::unique_ptr<BlockWeights> make_resident_weights(const models::Architecture& arch,
                                                    std::shared_ptr<const Checkpoint> ckpt, const OwnedParts& owned,
                                                    c10::ScalarType dtype, torch::Device device) {
  return std::make_unique<ResidentWeights>(arch, std::move(ckpt), owned, dtype, device);
}

}  // namespace pipeswap::offload
