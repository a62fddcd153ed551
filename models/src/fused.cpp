#include "fused.h"

#include <c10/core/impl/DeviceGuardImplInterface.h>

#include "layers.h"
#include "pipeswap/core/error.h"
#include "pipeswap/core/torch_compat.h"

#ifdef PIPESWAP_FUSED_CUDA
#include "fused_kernels.h"
#endif

namespace pipeswap::models::fused {
namespace {

torch::Tensor layer_norm32(const torch::Tensor& x, double eps, const torch::Tensor& weight,
                           const torch::Tensor& bias) {
  return torch::layer_norm(x.to(torch::kFloat32), {x.size(-1)}, weight.defined() ? weight.to(torch::kFloat32) : weight,
                           bias.defined() ? bias.to(torch::kFloat32) : bias, eps);
}

#ifdef PIPESWAP_FUSED_CUDA
bool kernel_dtype(c10::ScalarType t, cuda::DType* out) {
  switch (t) {
    case c10::ScalarType::Float: *out = cuda::DType::kFloat; return true;
    case c10::ScalarType::BFloat16: *out = cuda::DType::kBFloat16; return true;
    case c10::ScalarType::Half: *out = cuda::DType::kHalf; return true;
    default: return false;
  }
}

cudaStream_t stream_of(const torch::Tensor& t) {
  const c10::Stream s = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->getStream(t.device());
  return static_cast<cudaStream_t>(compat::native_stream(s).value_or(nullptr));
}

void check_launch(cudaError_t err, const char* what) {
  PS_CHECK(err == cudaSuccess, Error, "CUDA kernel {} failed: {}", what, cudaGetErrorString(err));
}

// A per-sample fp32 row vector [B, D] (from [B, 1, D] or [1, 1, D] or [D]); undefined stays undefined.
torch::Tensor per_sample(const torch::Tensor& t, int64_t b, int64_t d) {
  if (!t.defined()) return t;
  return t.to(torch::kFloat32).reshape({-1, d}).expand({b, d}).contiguous();
}

bool fits(const torch::Tensor& x, const torch::Tensor& t, int64_t d) {
  return !t.defined() || (t.numel() == d || t.numel() == x.size(0) * d);
}
#endif

}  // namespace

torch::Tensor modulated_layer_norm(const torch::Tensor& x, double eps, const torch::Tensor& shift,
                                   const torch::Tensor& scale, const torch::Tensor& weight, const torch::Tensor& bias) {
#ifdef PIPESWAP_FUSED_CUDA
  cuda::DType t;
  const int64_t d = x.size(-1);
  if (x.is_cuda() && x.dim() == 3 && x.is_contiguous() && kernel_dtype(x.scalar_type(), &t) && fits(x, shift, d) &&
      fits(x, scale, d)) {
    const int64_t b = x.size(0);
    auto out = torch::empty_like(x);
    const auto sh = per_sample(shift, b, d), sc = per_sample(scale, b, d);
    const auto w = weight.defined() ? weight.to(torch::kFloat32).contiguous() : weight;
    const auto bi = bias.defined() ? bias.to(torch::kFloat32).contiguous() : bias;
    auto ptr = [](const torch::Tensor& v) { return v.defined() ? v.data_ptr<float>() : nullptr; };
    if (x.numel() > 0) {
      check_launch(cuda::modulated_layer_norm(t, x.data_ptr(), out.data_ptr(), ptr(w), ptr(bi), ptr(sh), ptr(sc),
                                              b * x.size(1), d, x.size(1), static_cast<float>(eps), stream_of(x)),
                   "modulated_layer_norm");
    }
    return out;
  }
#endif
  auto n = layer_norm32(x, eps, weight, bias);
  if (scale.defined()) n = n * (1 + scale);
  if (shift.defined()) n = n + shift;
  return n.to(x.scalar_type());
}

void gated_residual_(torch::Tensor& x, const torch::Tensor& y, const torch::Tensor& gate) {
#ifdef PIPESWAP_FUSED_CUDA
  cuda::DType t, ty;
  const int64_t d = x.size(-1);
  if (x.is_cuda() && x.dim() == 3 && x.is_contiguous() && y.is_contiguous() && y.sizes() == x.sizes() &&
      kernel_dtype(x.scalar_type(), &t) && kernel_dtype(y.scalar_type(), &ty) && fits(x, gate, d)) {
    // A new tensor, not x's storage: x may be a view another stage or the caller still reads.
    auto out = x.clone();
    const auto g = per_sample(gate, x.size(0), d);
    if (x.numel() > 0) {
      check_launch(cuda::gated_residual(t, out.data_ptr(), ty, y.data_ptr(), g.data_ptr<float>(), x.numel(), d,
                                        x.size(1) * d, stream_of(x)),
                   "gated_residual");
    }
    x = out;
    return;
  }
#endif
  x = (x.to(torch::kFloat32) + y.to(torch::kFloat32) * gate).to(x.scalar_type());
}

torch::Tensor rms_norm_rope(const torch::Tensor& x, const torch::Tensor& weight, double eps, const torch::Tensor& cos,
                            const torch::Tensor& sin, int64_t heads) {
  const int64_t b = x.size(0), l = x.size(1), d = x.size(2), hd = d / heads;
  PS_CHECK(x.dim() == 3 && d % heads == 0 && hd % 2 == 0 && cos.size(0) == l && cos.size(1) == hd / 2, Error,
           "rms_norm_rope: x [B, L, H*D] with cos/sin [L, D/2], got {} and {}", shape_str(x), shape_str(cos));
#ifdef PIPESWAP_FUSED_CUDA
  cuda::DType t;
  if (x.is_cuda() && x.is_contiguous() && kernel_dtype(x.scalar_type(), &t) && cos.is_contiguous() &&
      sin.is_contiguous() && cos.scalar_type() == torch::kFloat32 && sin.scalar_type() == torch::kFloat32 &&
      (!weight.defined() || (weight.scalar_type() == x.scalar_type() && weight.is_contiguous()))) {
    auto out = torch::empty({b, l, heads, hd}, x.options());
    if (x.numel() > 0) {
      check_launch(cuda::rms_norm_rope(t, x.data_ptr(), out.data_ptr(), weight.defined() ? weight.data_ptr() : nullptr,
                                       cos.data_ptr<float>(), sin.data_ptr<float>(), b * l, d, hd / 2, l,
                                       static_cast<float>(eps), stream_of(x)),
                   "rms_norm_rope");
    }
    return out;
  }
#endif
  const auto n = weight.defined() ? compat::rms_norm(x, weight, eps) : x;
  // Interleaved pairs in fp32, as Wan's view_as_complex and diffusers' apply_rotary_emb pair them.
  auto xf = n.view({b, l, heads, hd}).to(torch::kFloat32).unflatten(-1, {-1, 2});
  auto x1 = xf.select(-1, 0);
  auto x2 = xf.select(-1, 1);
  auto c = cos.unsqueeze(1);  // [L, 1, D/2] broadcasts over batch and heads
  auto s = sin.unsqueeze(1);
  return torch::stack({x1 * c - x2 * s, x1 * s + x2 * c}, -1).flatten(-2).to(x.scalar_type());
}

torch::Tensor rope_half(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  PS_CHECK(x.dim() == 4 && x.size(-1) % 2 == 0 && cos.dim() == 2 && cos.size(0) == x.size(1) &&
               cos.size(1) == x.size(3),
           Error, "rope_half: x [B, T, H, D] with cos/sin [T, D], got {} and {}", shape_str(x), shape_str(cos));
#ifdef PIPESWAP_FUSED_CUDA
  cuda::DType t;
  if (x.is_cuda() && x.is_contiguous() && kernel_dtype(x.scalar_type(), &t) && cos.scalar_type() == x.scalar_type() &&
      sin.scalar_type() == x.scalar_type() && cos.is_contiguous() && sin.is_contiguous()) {
    auto out = torch::empty_like(x);
    if (x.numel() > 0) {
      check_launch(cuda::rope_half(t, x.data_ptr(), out.data_ptr(), cos.data_ptr(), sin.data_ptr(),
                                   x.size(0) * x.size(1), x.size(2), x.size(3), x.size(1), stream_of(x)),
                   "rope_half");
    }
    return out;
  }
#endif
  const int64_t half = x.size(-1) / 2;
  const auto rotated = torch::cat({x.narrow(-1, half, half).neg(), x.narrow(-1, 0, half)}, -1);
  return x * cos.unsqueeze(1) + rotated * sin.unsqueeze(1);
}

}  // namespace pipeswap::models::fused
