// The launch function of fp8_kernels.cu: raw pointers, sizes and a stream, no LibTorch types, so nvcc
// compiles that file without LibTorch's headers (as models/src/fused_kernels.cu). Called only from
// fp8.cpp, which checks dtypes, shapes, contiguity and the scale's broadcast first.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace pipeswap::fp8_cuda {

enum class Format { kE4M3, kE5M2 };
enum class Out { kFloat, kBFloat16, kHalf };
enum class ScaleKind { kNone, kPerTensor, kPerRow };

// out[i] = round_to_out(float(fp8 byte i) * scale), one pass: `scale` is ignored (kNone), scale[0]
// (kPerTensor) or scale[i / row_elems] (kPerRow). `n` elements; `out` of the Out type. Returns the
// launch's cudaError_t.
cudaError_t dequantize(Format f, const uint8_t* bytes, ScaleKind kind, const float* scale, int64_t row_elems, int64_t n,
                       Out t, void* out, cudaStream_t stream);

}  // namespace pipeswap::fp8_cuda
