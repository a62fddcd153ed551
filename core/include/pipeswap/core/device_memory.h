// Device memory as LibTorch's caching allocator counts it (bytes handed out to tensors, rounded as
// the allocator rounds them). Available when LibTorch was built with CUDA; nullopt otherwise.
#pragma once

#include <cstdint>
#include <optional>

namespace pipeswap {

// Most bytes allocated at once on `device` since the last reset (or since start).
std::optional<int64_t> device_peak_allocated(int device);
// Bytes allocated on `device` now.
std::optional<int64_t> device_allocated(int device);
// Starts a new peak measurement on `device`.
void reset_device_peak(int device);

}  // namespace pipeswap
