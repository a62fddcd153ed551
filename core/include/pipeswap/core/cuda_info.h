// Facts about this node's GPUs from the CUDA runtime (not LibTorch, which may be a CPU build).
// Built with the CUDA toolkit when it is found; without it every answer is "no GPU".
#pragma once

#include <cstdint>
#include <optional>

namespace pipeswap {

// GPUs this process can see (after CUDA_VISIBLE_DEVICES); 0 without CUDA or a driver.
int cuda_device_count();

struct CudaMemInfo {
  int64_t free_bytes = 0;
  int64_t total_bytes = 0;
};
// Free and total memory of one GPU, or nullopt when it cannot be asked.
std::optional<CudaMemInfo> cuda_mem_info(int device);

}  // namespace pipeswap
