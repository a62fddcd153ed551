// What differs between a CPU rank and a GPU rank in the swapping engine: where slots live and how a
// slot is filled and fenced. See block_weights.h for the ordering contract.
#pragma once

#include <torch/types.h>

#include <memory>

#include "pipeswap/core/trace.h"

namespace pipeswap::offload {

class SwapBackend {
 public:
  virtual ~SwapBackend() = default;
  // Device memory for a slab (resident block or slot).
  virtual torch::Tensor device_slab(int64_t bytes) = 0;
  // Host memory for swapped units; page-locked where possible (`pinned` says whether it is).
  virtual torch::Tensor host_slab(int64_t bytes, bool& pinned) = 0;
  // Copy thread: fill slot `slot` (already released by compute) from host memory. `what` tags the
  // copy in the --trace timeline (a device range on GPUs, timed from after the slot's free wait).
  virtual void fill_slot(int slot, torch::Tensor& slot_slab, const torch::Tensor& host, int64_t bytes,
                         const trace::Args& what) = 0;
  // Copy thread, after fill_slot: returns once the host bytes may be overwritten.
  virtual void wait_filled(int slot) = 0;
  // Stage thread (acquire): compute issued from now on waits for the slot's fill.
  virtual void compute_waits_for(int slot) = 0;
  // Stage thread (release): the slot is free once the compute issued so far has finished.
  virtual void compute_releases(int slot) = 0;
  // Stage thread: work issued on `stream` from now on waits for the slot's fill (the fp8 dequantise
  // ahead reading a slot on its side stream, fp8_ahead.h).
  virtual void stream_waits_for(int slot, const c10::Stream& stream) = 0;
  // use_non_blocking=false: a synchronous copy on the stage thread.
  virtual void copy_sync(torch::Tensor& slot_slab, const torch::Tensor& host, int64_t bytes,
                         const trace::Args& what) = 0;
};

// CPU ranks: slots are host memory, a fill is a memcpy on the copy thread and is complete when
// fill_slot returns, so the fences are no-ops.
std::unique_ptr<SwapBackend> make_cpu_backend();

// GPU ranks (any LibTorch device with streams and events; CUDA in practice). Slots are device
// memory; fills are asynchronous copies from page-locked host memory on a copy stream of their own,
// fenced by one `ready` and one `free` event per slot; compute runs on the device's current stream.
std::unique_ptr<SwapBackend> make_device_backend(torch::Device device, int num_slots);

}  // namespace pipeswap::offload
