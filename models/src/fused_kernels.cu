// Fused element-wise kernels of the DiT block (models/src/fused.h says what each computes and why).
// Plain CUDA on raw pointers: no ATen headers here, so nvcc never meets LibTorch's ABI or flags; the
// dispatch, shape checks and stream come from fused.cpp.
//
// One CTA per row (a token's hidden vector of D elements, D even). Reductions accumulate in fp32 and
// go over the row twice (mean, then centred squares) as PyTorch's two-pass reference does; the row is
// re-read from L1/L2, so DRAM sees one read and one write per element.
#include "fused_kernels.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <type_traits>

namespace pipeswap::models::fused::cuda {
namespace {

constexpr int kThreads = 256;

template <typename T> __device__ __forceinline__ float to_f(T v);
template <> __device__ __forceinline__ float to_f<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <> __device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }

template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }

// Round to T and back: the value a tensor of dtype T would hold.
template <typename T> __device__ __forceinline__ float round_to(float v) { return to_f<T>(from_f<T>(v)); }

// Sum over the CTA; every thread gets the total. `shared` holds one float per warp.
__device__ float block_sum(float v, float* shared) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // `shared` may still be read from a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  float t = 0.f;
  const int warps = (blockDim.x + 31) / 32;
  for (int w = 0; w < warps; ++w) t += shared[w];
  return t;
}

// out = (LN(x) [* w + b] * (1 + scale) + shift), in fp32, rounded once to T.
template <typename T>
__global__ void modulated_layer_norm_kernel(const T* __restrict__ x, T* __restrict__ out, const float* __restrict__ w,
                                            const float* __restrict__ b, const float* __restrict__ shift,
                                            const float* __restrict__ scale, int64_t D, int64_t rows_per_sample,
                                            float eps) {
  __shared__ float shared[32];
  const int64_t row = blockIdx.x;
  const T* xr = x + row * D;
  T* orow = out + row * D;
  float s = 0.f;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) s += to_f(xr[i]);
  const float mean = block_sum(s, shared) / static_cast<float>(D);
  float q = 0.f;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    const float d = to_f(xr[i]) - mean;
    q += d * d;
  }
  const float rstd = rsqrtf(block_sum(q, shared) / static_cast<float>(D) + eps);
  const int64_t sample = row / rows_per_sample;
  const float* sh = shift ? shift + sample * D : nullptr;
  const float* sc = scale ? scale + sample * D : nullptr;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    float y = (to_f(xr[i]) - mean) * rstd;
    if (w) y = y * w[i];
    if (b) y = y + b[i];
    if (sc) y = y * (1.f + sc[i]);
    if (sh) y = y + sh[i];
    orow[i] = from_f<T>(y);
  }
}

// x = x + y * gate in fp32 (each product and sum rounded to fp32, as the ATen ops do), rounded to T.
template <typename T, typename Y>
__global__ void gated_residual_kernel(T* __restrict__ x, const Y* __restrict__ y, const float* __restrict__ gate,
                                      int64_t n, int64_t D, int64_t per_sample) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float g = gate[(i / per_sample) * D + i % D];
    x[i] = from_f<T>(__fadd_rn(to_f(x[i]), __fmul_rn(to_f(y[i]), g)));
  }
}

// RMSNorm over the row (optional: w == nullptr skips it), rounded to T as HF/Wan do, times the weight
// (rounded to T), then the interleaved-pair rotation of each head in fp32, rounded to T.
// cos/sin: [tokens, head_dim / 2] fp32; the row's token is row % tokens.
template <typename T>
__global__ void rms_norm_rope_kernel(const T* __restrict__ x, T* __restrict__ out, const T* __restrict__ w,
                                     const float* __restrict__ cos, const float* __restrict__ sin, int64_t D,
                                     int64_t half_head, int64_t tokens, float eps) {
  __shared__ float shared[32];
  const int64_t row = blockIdx.x;
  const T* xr = x + row * D;
  T* orow = out + row * D;
  float rstd = 1.f;
  if (w) {
    float q = 0.f;
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
      const float v = to_f(xr[i]);
      q += v * v;
    }
    rstd = rsqrtf(block_sum(q, shared) / static_cast<float>(D) + eps);
  }
  const int64_t t = row % tokens;
  const float* c = cos + t * half_head;
  const float* s = sin + t * half_head;
  for (int64_t p = threadIdx.x; p < D / 2; p += blockDim.x) {
    float a = to_f(xr[2 * p]), b = to_f(xr[2 * p + 1]);
    if (w) {
      a = round_to<T>(round_to<T>(a * rstd) * to_f(w[2 * p]));
      b = round_to<T>(round_to<T>(b * rstd) * to_f(w[2 * p + 1]));
    }
    const int64_t i = p % half_head;
    const float ci = c[i], si = s[i];
    orow[2 * p] = from_f<T>(a * ci - b * si);
    orow[2 * p + 1] = from_f<T>(a * si + b * ci);
  }
}

// Rotary embedding with rotate_half pairing (i, i + D/2), as HF's Llama: x * cos + rotate_half(x) * sin with
// cos/sin in T and each product and the sum rounded to T, exactly as the ATen ops round them.
// x, out [rows = B*T, H, D]; cos/sin [T, D]; the row's token is row % tokens.
template <typename T>
__global__ void rope_half_kernel(const T* __restrict__ x, T* __restrict__ out, const T* __restrict__ cos,
                                 const T* __restrict__ sin, int64_t heads, int64_t D, int64_t tokens, int64_t n) {
  const int64_t half = D / 2;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t j = i % half;           // pair index within the head
    const int64_t rh = i / half;          // row * heads + head
    const int64_t t = (rh / heads) % tokens;
    const T* xr = x + rh * D;
    T* o = out + rh * D;
    const float x1 = to_f(xr[j]), x2 = to_f(xr[j + half]);
    const float c1 = to_f(cos[t * D + j]), s1 = to_f(sin[t * D + j]);
    const float c2 = to_f(cos[t * D + j + half]), s2 = to_f(sin[t * D + j + half]);
    o[j] = from_f<T>(round_to<T>(x1 * c1) + round_to<T>(-x2 * s1));
    o[j + half] = from_f<T>(round_to<T>(x2 * c2) + round_to<T>(x1 * s2));
  }
}

template <typename F>
cudaError_t dispatch(DType t, F&& f) {
  switch (t) {
    case DType::kFloat: return f(static_cast<float*>(nullptr));
    case DType::kBFloat16: return f(static_cast<__nv_bfloat16*>(nullptr));
    case DType::kHalf: return f(static_cast<__half*>(nullptr));
  }
  return cudaErrorInvalidValue;
}

int grid_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<int>(blocks < 65535 * 8 ? blocks : 65535 * 8);
}

}  // namespace

cudaError_t modulated_layer_norm(DType t, const void* x, void* out, const float* weight, const float* bias,
                                 const float* shift, const float* scale, int64_t rows, int64_t D,
                                 int64_t rows_per_sample, float eps, cudaStream_t stream) {
  return dispatch(t, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    modulated_layer_norm_kernel<T><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
        static_cast<const T*>(x), static_cast<T*>(out), weight, bias, shift, scale, D, rows_per_sample, eps);
    return cudaGetLastError();
  });
}

cudaError_t gated_residual(DType t, void* x, DType ty, const void* y, const float* gate, int64_t n, int64_t D,
                           int64_t per_sample, cudaStream_t stream) {
  return dispatch(t, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    return dispatch(ty, [&](auto* ytag) {
      using Y = std::remove_pointer_t<decltype(ytag)>;
      gated_residual_kernel<T, Y><<<grid_for(n), kThreads, 0, stream>>>(static_cast<T*>(x), static_cast<const Y*>(y),
                                                                        gate, n, D, per_sample);
      return cudaGetLastError();
    });
  });
}

cudaError_t rms_norm_rope(DType t, const void* x, void* out, const void* weight, const float* cos, const float* sin,
                          int64_t rows, int64_t D, int64_t half_head, int64_t tokens, float eps,
                          cudaStream_t stream) {
  return dispatch(t, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    rms_norm_rope_kernel<T><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
        static_cast<const T*>(x), static_cast<T*>(out), static_cast<const T*>(weight), cos, sin, D, half_head, tokens,
        eps);
    return cudaGetLastError();
  });
}

cudaError_t rope_half(DType t, const void* x, void* out, const void* cos, const void* sin, int64_t rows, int64_t heads,
                      int64_t D, int64_t tokens, cudaStream_t stream) {
  const int64_t n = rows * heads * (D / 2);
  return dispatch(t, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    rope_half_kernel<T><<<grid_for(n), kThreads, 0, stream>>>(static_cast<const T*>(x), static_cast<T*>(out),
                                                              static_cast<const T*>(cos), static_cast<const T*>(sin),
                                                              heads, D, tokens, n);
    return cudaGetLastError();
  });
}

}  // namespace pipeswap::models::fused::cuda
