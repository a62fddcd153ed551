// The fused fp8 dequantise (fp8.h): fp8 bytes and their float32 scale in, the compute dtype out, in one
// pass. Today's ATen path is two kernels (the float8 view's .to(out), then mul_ by the scale in float32)
// and moves about 7 bytes per element; this one reads 1 (plus the scale, cached) and writes 2 (bf16).
//
// Bit for bit the ATen path's result: the fp8 -> float32 step copies c10's conversions
// (fp8e4m3fn_to_fp32_value, fp8e5m2_to_fp32_value through fp16_ieee_to_fp32_value), the product is one
// float32 multiply (ATen's mul_ of a bf16/fp16 tensor by a float32 scale computes in float32 on values that
// are exact in the narrow type), and the rounding to the output type is the instruction c10's BFloat16 /
// Half constructors use on the device (__float2bfloat16 / __float2half, round to nearest even).
//
// Each thread takes 16 bytes (one 16-byte load, 16 elements, 2-4 16-byte stores) when the pointers are
// 16-byte aligned; the last n % 16 elements, or all of them otherwise, go one element per thread.
#include "fp8_kernels.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <type_traits>

namespace pipeswap::fp8_cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kVec = 16;  // elements (= bytes of fp8) per vector

// c10::detail::fp8e4m3fn_to_fp32_value: integer operations only (NaN: sign | 0x7FF00000).
__device__ __forceinline__ float e4m3fn_to_float(uint32_t b) {
  const uint32_t w = b << 24;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t nonsign = w & 0x7FFFFFFFu;
  uint32_t renorm_shift = static_cast<uint32_t>(__clz(nonsign));  // 32 for 0, masked below
  renorm_shift = renorm_shift > 4 ? renorm_shift - 4 : 0;
  const int32_t inf_nan_mask = (static_cast<int32_t>(nonsign + 0x01000000u) >> 8) & 0x7F800000;
  const int32_t zero_mask = static_cast<int32_t>(nonsign - 1) >> 31;
  const uint32_t magnitude = (nonsign << renorm_shift >> 4) + ((0x78u - renorm_shift) << 23);
  const uint32_t result =
      sign | ((magnitude | static_cast<uint32_t>(inf_nan_mask)) & ~static_cast<uint32_t>(zero_mask));
  return __uint_as_float(result);
}

// c10::detail::fp8e5m2_to_fp32_value: the byte is the top half of an fp16, widened as
// fp16_ieee_to_fp32_value does (its float operations included, so NaN comes out as the device makes it).
__device__ __forceinline__ float e5m2_to_float(uint32_t b) {
  const uint32_t w = b << 24;  // (b << 8) as fp16, in the upper half of a 32-bit word
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  const float normalized = __fmul_rn(__uint_as_float((two_w >> 4) + (0xE0u << 23)), __uint_as_float(0x7800000u));
  const float denormalized = __fsub_rn(__uint_as_float((two_w >> 17) | (126u << 23)), 0.5f);
  const uint32_t result =
      sign | (two_w < (1u << 27) ? __float_as_uint(denormalized) : __float_as_uint(normalized));
  return __uint_as_float(result);
}

template <Format F> __device__ __forceinline__ float decode(uint32_t b) {
  if constexpr (F == Format::kE4M3) {
    return e4m3fn_to_float(b);
  } else {
    return e5m2_to_float(b);
  }
}

template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }

// One element: the decoded value, times the scale when there is one (no multiply by 1: NaN payloads and
// the ATen path's "no scale, no mul_" stay alike).
template <Format F, ScaleKind K, typename T>
__device__ __forceinline__ T element(uint32_t b, const float* scale, int64_t row) {
  const float v = decode<F>(b);
  if constexpr (K == ScaleKind::kNone) {
    return from_f<T>(v);
  } else if constexpr (K == ScaleKind::kPerTensor) {
    return from_f<T>(__fmul_rn(v, scale[0]));
  } else {
    return from_f<T>(__fmul_rn(v, scale[row]));
  }
}

template <Format F, ScaleKind K, typename T>
__global__ void dequantize_kernel(const uint8_t* __restrict__ bytes, const float* __restrict__ scale,
                                  int64_t row_elems, int64_t n, int64_t vectors, T* __restrict__ out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  for (int64_t v = first; v < vectors; v += stride) {
    const uint4 packed = reinterpret_cast<const uint4*>(bytes)[v];
    const uint32_t words[4] = {packed.x, packed.y, packed.z, packed.w};
    const int64_t e0 = v * kVec;
    int64_t row = 0, next_row = 0;
    if constexpr (K == ScaleKind::kPerRow) {
      row = e0 / row_elems;
      next_row = (row + 1) * row_elems;
    }
    alignas(16) T o[kVec];
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      if constexpr (K == ScaleKind::kPerRow) {
        while (e0 + j >= next_row) {  // rows shorter than a vector cross more than once
          ++row;
          next_row += row_elems;
        }
      }
      o[j] = element<F, K, T>((words[j / 4] >> (8 * (j % 4))) & 0xFFu, scale, row);
    }
    const uint4* src = reinterpret_cast<const uint4*>(o);
    uint4* dst = reinterpret_cast<uint4*>(out + e0);
#pragma unroll
    for (int k = 0; k < static_cast<int>(sizeof(o) / sizeof(uint4)); ++k) dst[k] = src[k];
  }
  // The tail (or everything, where the pointers are not 16-byte aligned): one element per thread.
  for (int64_t i = vectors * kVec + first; i < n; i += stride) {
    const int64_t row = K == ScaleKind::kPerRow ? i / row_elems : 0;
    out[i] = element<F, K, T>(bytes[i], scale, row);
  }
}

template <Format F, ScaleKind K, typename T>
cudaError_t launch(const uint8_t* bytes, const float* scale, int64_t row_elems, int64_t n, void* out,
                   cudaStream_t stream) {
  const bool aligned = reinterpret_cast<uintptr_t>(bytes) % 16 == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0;
  const int64_t vectors = aligned ? n / kVec : 0;
  const int64_t work = vectors > 0 ? vectors : n;
  int64_t blocks = (work + kThreads - 1) / kThreads;
  // Enough CTAs to fill any current GPU several times over; grid-stride loops take the rest.
  if (blocks > 132 * 32) blocks = 132 * 32;
  if (blocks < 1) blocks = 1;
  dequantize_kernel<F, K, T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(bytes, scale, row_elems, n,
                                                                                      vectors, static_cast<T*>(out));
  return cudaGetLastError();
}

template <Format F, ScaleKind K>
cudaError_t by_out(Out t, const uint8_t* bytes, const float* scale, int64_t row_elems, int64_t n, void* out,
                   cudaStream_t stream) {
  switch (t) {
    case Out::kFloat: return launch<F, K, float>(bytes, scale, row_elems, n, out, stream);
    case Out::kBFloat16: return launch<F, K, __nv_bfloat16>(bytes, scale, row_elems, n, out, stream);
    case Out::kHalf: return launch<F, K, __half>(bytes, scale, row_elems, n, out, stream);
  }
  return cudaErrorInvalidValue;
}

template <Format F>
cudaError_t by_scale(ScaleKind kind, Out t, const uint8_t* bytes, const float* scale, int64_t row_elems, int64_t n,
                     void* out, cudaStream_t stream) {
  switch (kind) {
    case ScaleKind::kNone: return by_out<F, ScaleKind::kNone>(t, bytes, scale, row_elems, n, out, stream);
    case ScaleKind::kPerTensor: return by_out<F, ScaleKind::kPerTensor>(t, bytes, scale, row_elems, n, out, stream);
    case ScaleKind::kPerRow: return by_out<F, ScaleKind::kPerRow>(t, bytes, scale, row_elems, n, out, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t dequantize(Format f, const uint8_t* bytes, ScaleKind kind, const float* scale, int64_t row_elems,
                       int64_t n, Out t, void* out, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if ((kind != ScaleKind::kNone && scale == nullptr) || (kind == ScaleKind::kPerRow && row_elems <= 0))
    return cudaErrorInvalidValue;
  return f == Format::kE4M3 ? by_scale<Format::kE4M3>(kind, t, bytes, scale, row_elems, n, out, stream)
                            : by_scale<Format::kE5M2>(kind, t, bytes, scale, row_elems, n, out, stream);
}

}  // namespace pipeswap::fp8_cuda
