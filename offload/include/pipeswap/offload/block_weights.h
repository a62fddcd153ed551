// How a stage gets the weights of its blocks: one store per rank, built from the rank's SwapLayout
// (residency.h). The stage asks for each (block, phase) right before computing it and releases it
// right after; resident units sit in slabs of their own on the device, swapped ones are streamed
// into a ring of K+1 fixed device slots ahead of the compute that needs them. A rank that swaps
// nothing is the same store with zero swapped units. Non-block components live as their modes say.
//
// Threads and ordering (the contract):
//  - The stage thread calls acquire(b, p) / release(b, p) in compute order, sweep after sweep
//    (one sweep = one micro-batch through the rank's blocks).
//  - A copy thread fills slots: the copy of sequence position g goes to slot g % (K+1) and starts
//    only when (1) the stage thread has asked for positions up to g - K (acquire of g - K), (2) the
//    unit's bytes are in host memory, and (3) position g - (K+1), the slot's previous occupant, has
//    been released. On a CPU rank the copy is a memcpy on that thread; on a GPU it is a copy on the
//    copy stream that waits on the slot's `free` event, followed by the slot's `ready` event, and
//    compute waits on `ready` (events only, no host synchronisation per block). The copy thread itself
//    waits for a copy to finish only when its host buffer is to be reused (the lazy tier's staging),
//    never for units read once at start-up.
//  - With lazy_load, disk worker threads read units from the safetensors files into the host cache,
//    running ahead of the copy thread as far as the cache budget allows; a unit that fits in the
//    budget is read once and kept, the rest stream through staging buffers every sweep.
//  - With use_non_blocking=false, acquire copies synchronously on the stage thread, one slot.
//  - fp8 block weights dequantised ahead (OffloadOptions::fp8_dequantise; auto: on CUDA): acquire returns
//    the phase's fp8 weights in the compute dtype from one of two fixed workspaces and issues the next
//    phase's dequantise on a side stream of its own, which waits on that phase's slot `ready` event when it
//    is swapped (only once its fill was issued); compute waits on the workspace's `written` event, and
//    release frees the workspace (an event). offload/src/fp8_ahead.h has the details; no host waits.
#pragma once

#include <torch/types.h>

#include <memory>

#include "pipeswap/core/checkpoint.h"
#include "pipeswap/core/weights.h"
#include "pipeswap/offload/components.h"
#include "pipeswap/offload/residency.h"

namespace pipeswap::offload {

struct OffloadStats {
  int64_t device_bytes = 0;     // resident slabs + slots + components on the device
  int64_t host_peak_bytes = 0;  // most host memory held for swapped units at once
  int64_t disk_bytes_read = 0;  // tensor bytes read from the checkpoint after start-up
  int64_t copies = 0;           // slot fills
  bool pinned = false;          // host memory is page-locked
  // fp8 dequantise ahead (fp8_ahead.h): phases whose copy was made ahead, and made at their acquire.
  int64_t fp8_ahead_hits = 0;
  int64_t fp8_ahead_misses = 0;
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
  virtual void expect_sweeps(int sweeps) = 0;
  virtual OffloadStats stats() const = 0;
};

// The one factory: a rank's block store as `layout` (plan_swapping's answer for the blocks `owned`
// names, carried by the rank's plan) says, on `device`; components as `opts` says.
std::unique_ptr<BlockWeights> make_block_weights(const ModelParts& model, std::shared_ptr<const Checkpoint> ckpt,
                                                 const OwnedParts& owned, const SwapLayout& layout,
                                                 torch::Device device, const OffloadOptions& opts);

}  // namespace pipeswap::offload
