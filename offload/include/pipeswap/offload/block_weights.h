// How a stage gets the weights of its blocks. The stage asks for each (block, phase) right before
// computing it and releases it right after; what happens in between (resident slabs, or a prefetched
// slot) is the implementation's business. Non-block components are resident on the stage's device.
#pragma once

#include <torch/types.h>

#include <map>
#include <memory>
#include <vector>

#include "pipeswap/core/checkpoint.h"
#include "pipeswap/core/weights.h"
#include "pipeswap/offload/residency.h"

namespace pipeswap::offload {

struct OffloadStats {
  int64_t device_bytes = 0;     // resident slabs + slots + components on the device
  int64_t host_peak_bytes = 0;  // most host memory held for swapped units at once
  int64_t disk_bytes_read = 0;  // tensor bytes read from the checkpoint after start-up
  int64_t copies = 0;           // slot fills
  bool pinned = false;          // host memory is page-locked
};

class BlockWeights {
 public:
  virtual ~BlockWeights() = default;
  // Weights of one phase of one block, valid until release(block, phase).
  virtual const WeightView& acquire(int block, int phase) = 0;
  virtual void release(int block, int phase) = 0;
  // Non-block components of the first / last stage, valid until the matching release. Offloaded
  // components are moved in here and dropped at release; on-demand ones are read from disk.
  virtual const WeightView& acquire_prologue() = 0;
  virtual void release_prologue() = 0;
  virtual const WeightView& acquire_epilogue() = 0;
  virtual void release_epilogue() = 0;
  // Bytes this rank holds on its device for weights (slabs, slots, components).
  virtual int64_t device_bytes() const = 0;
  // Declares how many more sweeps (micro-batch passes through the rank's blocks) will run, so that
  // prefetching starts early and nothing is fetched for a sweep that never comes.
  virtual void expect_sweeps(int sweeps) {}
  virtual OffloadStats stats() const { return OffloadStats{device_bytes()}; }
};

struct OwnedParts {
  int first_block = 0;
  int end_block = 0;
  bool prologue = false;
  bool epilogue = false;
};

// Every owned block loaded once into its own slab on `device` and kept there; components as the
// options say (resident unless offloaded or on demand).
std::unique_ptr<BlockWeights> make_resident_weights(const ModelParts& arch, std::shared_ptr<const Checkpoint> ckpt,
                                                    const OwnedParts& owned, c10::ScalarType dtype,
                                                    torch::Device device, const OffloadOptions& opts = {});

enum class ComponentMode { kResident, kHost, kOnDemand };
// Mode of every component part (by part name) of the architecture. Throws ConfigError naming an
// unknown component and listing the known ones.
std::map<std::string, ComponentMode> component_modes(const ModelParts& arch, const OffloadOptions& opts);

}  // namespace pipeswap::offload
