#include "pipeswap/core/device_memory.h"

#ifdef PIPESWAP_TORCH_CUDA
#include <ATen/ATen.h>
#include <c10/cuda/CUDACachingAllocator.h>
#endif

namespace pipeswap {

#ifdef PIPESWAP_TORCH_CUDA
std::optional<int64_t> device_peak_allocated(int device) {
  const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(device));
  return stats.allocated_bytes[0].peak;  // index 0: the aggregate over the small and large pools
}
std::optional<int64_t> device_allocated(int device) {
  const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(device));
  return stats.allocated_bytes[0].current;
}
void reset_device_peak(int device) {
  // The allocator sets itself up at its first allocation; before that it knows no device.
  { at::empty({1}, at::TensorOptions().dtype(at::kByte).device(at::kCUDA, static_cast<c10::DeviceIndex>(device))); }
  c10::cuda::CUDACachingAllocator::resetPeakStats(static_cast<c10::DeviceIndex>(device));
}
#else
std::optional<int64_t> device_peak_allocated(int) { return std::nullopt; }
std::optional<int64_t> device_allocated(int) { return std::nullopt; }
void reset_device_peak(int) {}
#endif

}  // namespace pipeswap
