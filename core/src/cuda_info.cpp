#include "pipeswap/core/cuda_info.h"

#ifdef PIPESWAP_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace pipeswap {

#ifdef PIPESWAP_HAVE_CUDA
int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // no driver / no device: clear the sticky error, answer 0
    return 0;
  }
  return n;
}

std::optional<CudaMemInfo> cuda_mem_info(int device) {
  int previous = 0;
  if (cudaGetDevice(&previous) != cudaSuccess || cudaSetDevice(device) != cudaSuccess) return std::nullopt;
  size_t free_b = 0, total_b = 0;
  const bool ok = cudaMemGetInfo(&free_b, &total_b) == cudaSuccess;
  cudaSetDevice(previous);
  if (!ok) return std::nullopt;
  return CudaMemInfo{static_cast<int64_t>(free_b), static_cast<int64_t>(total_b)};
}
#else
int cuda_device_count() { return 0; }
std::optional<CudaMemInfo> cuda_mem_info(int) { return std::nullopt; }
#endif

}  // namespace pipeswap
