// Non-block components of a rank (embeddings, final norm, head) in their three modes: resident on
// the device, kept on the host and moved in for each use, or read from disk for each use. Every
// component is a unit (residency.h) and loads the way resident blocks do (unit_io.h).
#pragma once

#include <memory>
#include <vector>

#include "pipeswap/core/checkpoint.h"
#include "pipeswap/offload/components.h"
#include "pipeswap/offload/residency.h"

namespace pipeswap::offload {

class ComponentWeights {
 public:
  ComponentWeights(const ModelParts& model, std::shared_ptr<const Checkpoint> ckpt, const OwnedParts& owned,
                   c10::ScalarType dtype, torch::Device device, const OffloadOptions& opts);
  const WeightView& acquire(Side side);
  void release(Side side);
  int64_t device_bytes() const { return device_bytes_; }  // resident components
  int64_t host_bytes() const { return host_bytes_; }      // offloaded components

 private:
  struct Part {
    Unit unit;
    ComponentMode mode = ComponentMode::kResident;
    torch::Tensor host;  // kHost
    torch::Tensor slab;  // resident; transient for kHost / kOnDemand
  };
  struct View {
    WeightView view;         // complete while acquired (always, when everything is resident)
    bool transient = false;  // some part moves in at acquire
  };
  View& view_of(Side side) { return side == Side::kPrologue ? prologue_ : epilogue_; }
  void build_view(Side side);

  std::shared_ptr<const Checkpoint> ckpt_;
  torch::Device device_;
  RankComponents held_;
  std::vector<Part> parts_;  // by held_.parts index
  View prologue_, epilogue_;
  int64_t device_bytes_ = 0;
  int64_t host_bytes_ = 0;
};

}  // namespace pipeswap::offload
