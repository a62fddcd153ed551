#include <cstring>

#include "swap_backend.h"

namespace pipeswap::offload {
namespace {

class CpuBackend final : public SwapBackend {
 public:
  torch::Tensor device_slab(int64_t bytes) override { return torch::empty({bytes}, torch::kUInt8); }
  torch::Tensor host_slab(int64_t bytes, bool& pinned) override {
    pinned = false;  // nothing to pin for: the "device" is host memory
    return torch::empty({bytes}, torch::kUInt8);
  }
  void fill_slot(int, torch::Tensor& slot_slab, const torch::Tensor& host, int64_t bytes,
                 const trace::Args& what) override {
    trace::Range traced(trace::Kind::kCopy, "copy", what);
    std::memcpy(slot_slab.data_ptr(), host.data_ptr(), static_cast<size_t>(bytes));
  }
  void wait_filled(int) override {}
  void compute_waits_for(int) override {}
  void compute_releases(int) override {}
  void stream_waits_for(int, const c10::Stream&) override {}
  void copy_sync(torch::Tensor& slot_slab, const torch::Tensor& host, int64_t bytes,
                 const trace::Args& what) override {
    trace::Range traced(trace::Kind::kCopy, "copy (sync)", what);
    std::memcpy(slot_slab.data_ptr(), host.data_ptr(), static_cast<size_t>(bytes));
  }
};

}  // namespace

std::unique_ptr<SwapBackend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

}  // namespace pipeswap::offload
