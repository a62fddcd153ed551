// Swapping on a GPU through LibTorch's device-generic stream and event API, so this file compiles
// and links against a CPU-only LibTorch too (CI) and runs against a CUDA one.
//
// Streams and events (the contract of block_weights.h, made concrete):
//  - compute: the device's current stream (where the model's kernels run).
//  - copy: one stream from the pool, used only by the copy thread for host -> slot copies.
//  - ready[s]: recorded on the copy stream after slot s was filled; compute waits on it before
//    using the slot (Event::block: a device-side wait, the host does not stop).
//  - free[s]: recorded on the compute stream when the stage releases slot s; the next fill of s
//    waits on it on the copy stream (device-side).
//  - The only host waits are on the copy thread: for ready[s] before a staging buffer of the lazy
//    disk tier is reused, never on the stage thread in steady state.
#include <c10/core/Event.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <vector>

#include "pipeswap/core/error.h"
#include "pipeswap/core/log.h"
#include "pipeswap/core/torch_compat.h"
#include "swap_backend.h"

namespace pipeswap::offload {
namespace {

class DeviceBackend final : public SwapBackend {
 public:
  DeviceBackend(torch::Device device, int num_slots)
      : device_(device), guard_impl_(device.type()), copy_stream_(guard_impl_.getStreamFromGlobalPool(device)) {
    for (int i = 0; i < num_slots; ++i) {
      ready_.emplace_back(device.type());
      free_.emplace_back(device.type());
    }
  }

  torch::Tensor device_slab(int64_t bytes) override {
    return torch::empty({bytes}, torch::TensorOptions().dtype(torch::kUInt8).device(device_));
  }

  torch::Tensor host_slab(int64_t bytes, bool& pinned) override {
    try {
      pinned = true;
      return torch::empty({bytes}, torch::TensorOptions().dtype(torch::kUInt8).pinned_memory(true));
    } catch (const std::exception& e) {
      if (!warned_) {
        log().warn("could not pin {} bytes of host memory ({}); using pageable memory: copies will be slower", bytes,
                   e.what());
        warned_ = true;
      }
      pinned = false;
      return torch::empty({bytes}, torch::kUInt8);
    }
  }

  void fill_slot(int slot, torch::Tensor& slot_slab, const torch::Tensor& host, int64_t bytes,
                 const trace::Args& what) override {
    c10::StreamGuard guard(copy_stream_);  // also makes the slot's device current on this thread
    free_[slot].block(copy_stream_);       // the slot's previous occupant is no longer read
    {
      trace::DeviceRange traced(trace::Kind::kCopy, "copy", what, copy_stream_);
      slot_slab.narrow(0, 0, bytes).copy_(host.narrow(0, 0, bytes), /*non_blocking=*/true);
    }
    ready_[slot].record(copy_stream_);
  }

  void wait_filled(int slot) override { compat::synchronize_event(ready_[slot]); }

  void compute_waits_for(int slot) override {
    const c10::Stream compute = guard_impl_.getStream(device_);
    if (!trace::device_timing()) return ready_[slot].block(compute);
    // Traced: how long the compute stream stood still waiting for this slot's copy.
    trace::Args a;
    a.slot = slot;
    trace::DeviceRange traced(trace::Kind::kWait, "wait for copy", a, compute);
    ready_[slot].block(compute);
  }

  void compute_releases(int slot) override { free_[slot].record(guard_impl_.getStream(device_)); }

  void stream_waits_for(int slot, const c10::Stream& stream) override { ready_[slot].block(stream); }

  void copy_sync(torch::Tensor& slot_slab, const torch::Tensor& host, int64_t bytes,
                 const trace::Args& what) override {
    // use_non_blocking=false: a blocking copy on the compute stream, as the naive swap does.
    trace::DeviceRange traced(trace::Kind::kCopy, "copy (sync)", what, guard_impl_.getStream(device_),
                              trace::Lane::kCopy);
    slot_slab.narrow(0, 0, bytes).copy_(host.narrow(0, 0, bytes), /*non_blocking=*/false);
  }

 private:
  torch::Device device_;
  c10::impl::VirtualGuardImpl guard_impl_;
  c10::Stream copy_stream_;
  std::vector<c10::Event> ready_;
  std::vector<c10::Event> free_;
  bool warned_ = false;
};

}  // namespace

std::unique_ptr<SwapBackend> make_device_backend(torch::Device device, int num_slots) {
  return std::make_unique<DeviceBackend>(device, num_slots);
}

}  // namespace pipeswap::offload
