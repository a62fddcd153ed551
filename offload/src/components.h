// Non-block components of a rank (embeddings, final norm, head) in their three modes: resident on
// the device, kept on the host and moved in for each use, or read from disk for each use.
#pragma once

#include <map>
#include <set>

#include "pipeswap/offload/block_weights.h"
#include "pipeswap/offload/slab.h"

namespace pipeswap::offload {

class Components {
 public:
  Components(const ModelParts& arch, std::shared_ptr<const Checkpoint> ckpt, const OwnedParts& owned,
             c10::ScalarType dtype, torch::Device device, const OffloadOptions& opts);
  const WeightView& acquire(bool prologue);
  void release(bool prologue);
  int64_t device_bytes() const { return device_bytes_; }  // resident components
  int64_t host_bytes() const { return host_bytes_; }      // offloaded components

 private:
  struct Part {
    SlabLayout layout;
    ComponentMode mode = ComponentMode::kResident;
    torch::Tensor host;   // kHost
    torch::Tensor slab;   // resident; transient for kHost / kOnDemand
  };
  struct Use {
    size_t part;                                  // index into parts_
    std::map<std::string, std::string> local_of;  // checkpoint name -> local name on this side
  };
  struct Side {
    std::vector<Use> uses;
    WeightView view;          // complete while acquired (always, when everything is resident)
    bool transient = false;   // some part moves in at acquire
  };
  void load_resident(Part& p);
  void build_view(Side& side);

  std::shared_ptr<const Checkpoint> ckpt_;
  torch::Device device_;
  std::vector<Part> parts_;
  Side prologue_, epilogue_;
  int64_t device_bytes_ = 0;
  int64_t host_bytes_ = 0;
};

}  // namespace pipeswap::offload
