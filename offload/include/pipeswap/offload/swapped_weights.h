// Per-rank weight residency with swapping: resident blocks in slabs of their own on the device;
// swapped units (blocks, or phases with offload_granularity=phase) streamed from a host source into
// a ring of K+1 fixed device slots, K = prefetch depth, ahead of the compute that needs them.
//
// Threads and ordering (the contract):
//  - The stage thread calls acquire(b, p) / release(b, p) in compute order, sweep after sweep
//    (one sweep = one micro-batch through the rank's blocks).
//  - A copy thread fills slots: the copy of sequence position g goes to slot g % (K+1) and starts
//    only when (1) the stage thread has asked for positions up to g - K (acquire of g - K), (2) the
//    unit's bytes are in host memory, and (3) position g - (K+1), the slot's previous occupant, has
//    been released. On a CPU rank the copy is a memcpy on that thread; on a GPU it is a copy on the
//    copy stream that waits on the slot's `free` event, followed by the slot's `ready` event, and
//    compute waits on `ready` (events only, no host synchronisation per block).
//  - With lazy_load, disk worker threads read units from the safetensors files into the host cache,
//    running ahead of the copy thread as far as the cache budget allows; a unit that fits in the
//    budget is read once and kept, the rest stream through staging buffers every sweep.
//  - With use_non_blocking=false, acquire copies synchronously on the stage thread, one slot.
#pragma once

#include <memory>

#include "pipeswap/offload/block_weights.h"
#include "pipeswap/offload/residency.h"

namespace pipeswap::offload {

struct SwapLayout {
  std::vector<bool> swapped_blocks;  // rank-local, [end_block - first_block)
  int64_t resident_bytes = 0;        // resident block slabs
  int64_t slot_bytes = 0;            // one slot: the largest swapped unit
  int num_slots = 0;                 // K+1 (1 without non-blocking copies), 0 when nothing swaps
  int64_t swapped_bytes = 0;         // all swapped units of one sweep
  int64_t host_bytes = 0;            // host memory for swapped units: all of them, or the cache budget
  int64_t sticky_bytes = 0;          // lazy_load: units kept in the host cache after their first read
  int64_t streamed_bytes = 0;        // lazy_load: units read from disk every sweep
  int staging_buffers = 0;           // lazy_load: buffers streamed units pass through
  int64_t sticky_disk_bytes = 0;     // tensor bytes (no slab padding) of the sticky units
  int64_t streamed_disk_bytes = 0;   // ... and of the streamed ones
  // Tensor bytes read from disk over `sweeps` sweeps (lazy_load): sticky units once, streamed ones
  // every sweep. Equals what the engine reads when the checkpoint's dtype is the compute dtype.
  int64_t disk_bytes(int sweeps) const {
    return sweeps <= 0 ? 0 : sticky_disk_bytes + streamed_disk_bytes * sweeps;
  }
};

// The same arithmetic the engine follows; the plan prints it. Throws ConfigError when max_memory is
// too small for lazy loading (naming the minimum), or when swapping without lazy_load would need more
// host memory than max_memory.
SwapLayout plan_swapping(const ModelParts& arch, int first_block, int end_block, c10::ScalarType dtype,
                         const OffloadOptions& opts);

std::unique_ptr<BlockWeights> make_swapped_weights(const ModelParts& arch, std::shared_ptr<const Checkpoint> ckpt,
                                                   const OwnedParts& owned, c10::ScalarType dtype, torch::Device device,
                                                   const OffloadOptions& opts);

}  // namespace pipeswap::offload
