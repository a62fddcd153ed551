#include "components.h"
#include "pipeswap/core/error.h"
#include "pipeswap/core/trace.h"
#include "pipeswap/offload/block_weights.h"
#include "pipeswap/offload/slab.h"

namespace pipeswap::offload {
namespace {

// Every owned block phase in a slab of its own on the compute device, loaded once at construction.
class ResidentWeights final : public BlockWeights {
 public:
  ResidentWeights(const ModelParts& arch, std::shared_ptr<const Checkpoint> ckpt, const OwnedParts& owned,
                  c10::ScalarType dtype, torch::Device device, const OffloadOptions& opts)
      : first_block_(owned.first_block), components_(arch, ckpt, owned, dtype, device, opts) {
    nphases_ = static_cast<int>(arch.phase_names().size());
    bytes_ = components_.device_bytes();
    for (int b = owned.first_block; b < owned.end_block; ++b) {
      const auto parts = block_parts(arch, b);
      for (size_t p = 0; p < parts.size(); ++p) {
        const SlabLayout layout = make_layout(parts[p], dtype);
        trace::Args what;
        what.block = b;
        what.phase = static_cast<int>(p);
        what.bytes = layout.bytes;
        trace::Range traced(trace::Kind::kDisk, "load (resident)", what);
        torch::Tensor slab = load_part(*ckpt, layout, device);
        blocks_.emplace_back();
        add_views(layout, slab, blocks_.back());
        bytes_ += layout.bytes;
      }
    }
  }

  const WeightView& acquire(int block, int phase) override {
    const size_t i = static_cast<size_t>((block - first_block_) * nphases_ + phase);
    PS_CHECK(block >= first_block_ && i < blocks_.size(), Error, "block {} is not owned by this rank", block);
    return blocks_[i];
  }
  void release(int, int) override {}
  const WeightView& acquire_prologue() override { return components_.acquire(true); }
  void release_prologue() override { components_.release(true); }
  const WeightView& acquire_epilogue() override { return components_.acquire(false); }
  void release_epilogue() override { components_.release(false); }
  int64_t device_bytes() const override { return bytes_; }
  OffloadStats stats() const override {
    OffloadStats s;
    s.device_bytes = bytes_;
    s.host_peak_bytes = components_.host_bytes();
    return s;
  }

 private:
  int first_block_ = 0;
  int nphases_ = 1;
  Components components_;
  std::vector<WeightView> blocks_;
  int64_t bytes_ = 0;
};

}  // namespace

std::unique_ptr<BlockWeights> make_resident_weights(const ModelParts& arch, std::shared_ptr<const Checkpoint> ckpt,
                                                    const OwnedParts& owned, c10::ScalarType dtype,
                                                    torch::Device device, const OffloadOptions& opts) {
  return std::make_unique<ResidentWeights>(arch, std::move(ckpt), owned, dtype, device, opts);
}

}  // namespace pipeswap::offload
