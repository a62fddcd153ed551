// The launch functions of fused_kernels.cu: raw pointers, sizes and a stream, no LibTorch types, so
// nvcc compiles that file without LibTorch's headers. Called only from fused.cpp, which checks shapes,
// dtypes and contiguity first. Each returns the launch's cudaError_t.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace pipeswap::models::fused::cuda {

enum class DType { kFloat, kBFloat16, kHalf };

cudaError_t modulated_layer_norm(DType t, const void* x, void* out, const float* weight, const float* bias,
                                 const float* shift, const float* scale, int64_t rows, int64_t D,
                                 int64_t rows_per_sample, float eps, cudaStream_t stream);
cudaError_t gated_residual(DType t, void* x, DType ty, const void* y, const float* gate, int64_t n, int64_t D,
                           int64_t per_sample, cudaStream_t stream);
cudaError_t rms_norm_rope(DType t, const void* x, void* out, const void* weight, const float* cos, const float* sin,
                          int64_t rows, int64_t D, int64_t half_head, int64_t tokens, float eps, cudaStream_t stream);
cudaError_t rope_half(DType t, const void* x, void* out, const void* cos, const void* sin, int64_t rows, int64_t heads,
                      int64_t D, int64_t tokens, cudaStream_t stream);

}  // namespace pipeswap::models::fused::cuda
