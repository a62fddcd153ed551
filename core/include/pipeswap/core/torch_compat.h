// The one place that knows LibTorch versions apart (1.13 in CI, 2.x on the GPU machine).
#pragma once

#include <torch/types.h>
#include <torch/version.h>
#include <c10/core/Allocator.h>
#include <c10/core/Event.h>
#include <c10/core/Stream.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <optional>
#include <thread>

#include <limits>
#include <string>

#define PIPESWAP_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

namespace pipeswap::compat {

// softmax(q k^T * scale + mask) v for [B, H, T, D] inputs (k/v already expanded to H heads).
// `causal`: query i (of tq, aligned to the end of the tk keys) sees keys j <= i + tk - tq.
// `blocked` (optional): a bool tensor broadcastable to [tq, tk] (or [B, H, tq, tk]); true marks a key a query must
// not see even where the causal rule allows it (sliding windows). Every query must keep at least one key.
//
// LibTorch >= 2.1 runs the fused kernel (scaled_dot_product_attention: no [T, T] scores in memory, softmax
// accumulated in fp32); 1.13 gets the math written out as Hugging Face's eager attention does it: scores in the
// input dtype, softmax in fp32, probabilities cast back. The two agree to float rounding (~1e-6 in fp32).
inline torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, bool causal,
                               double scale, const torch::Tensor& blocked = torch::Tensor()) {
  const int64_t tq = q.size(-2);
  const int64_t tk = k.size(-2);
  torch::Tensor mask = blocked.defined() ? blocked.to(q.device(), torch::kBool) : torch::Tensor();
#if PIPESWAP_TORCH_AT_LEAST(2, 1)
  // SDPA's own is_causal is aligned to the top-left corner: used only where that is the same thing.
  if (causal && !mask.defined() && tq == tk) return at::scaled_dot_product_attention(q, k, v, {}, 0.0, true, scale);
#endif
  if (causal) {
    auto future =
        torch::ones({tq, tk}, torch::TensorOptions().dtype(torch::kBool).device(q.device())).triu(tk - tq + 1);
    mask = mask.defined() ? mask.logical_or(future) : future;
  }
#if PIPESWAP_TORCH_AT_LEAST(2, 1)
  if (!mask.defined()) return at::scaled_dot_product_attention(q, k, v, {}, 0.0, false, scale);
  return at::scaled_dot_product_attention(q, k, v, mask.logical_not(), 0.0, false, scale);
#else
  auto scores = torch::matmul(q, k.transpose(-2, -1)) * scale;
  if (mask.defined()) scores = scores.masked_fill(mask, -std::numeric_limits<float>::infinity());
  auto probs = torch::softmax(scores, -1, torch::kFloat32).to(q.scalar_type());
  return torch::matmul(probs, v);
#endif
}

// RMSNorm over the last axis as HF's LlamaRMSNorm and Wan's WanRMSNorm compute it: statistics in fp32, the
// normalised value rounded to the input dtype, then times the weight. On CUDA with LibTorch >= 2.4 this is
// at::rms_norm (one fused kernel where the version has it, diffusers' torch.nn.RMSNorm path) instead of the
// 6-8 kernels of the written-out form; CPU keeps the written-out form, bit for bit as before.
inline torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
#if PIPESWAP_TORCH_AT_LEAST(2, 4)
  if (x.is_cuda() && weight.scalar_type() == x.scalar_type())
    return at::rms_norm(x, {x.size(-1)}, weight, eps);
#endif
  auto xf = x.to(torch::kFloat32);
  auto variance = xf.pow(2).mean(-1, /*keepdim=*/true);
  xf = xf * torch::rsqrt(variance + eps);
  return weight * xf.to(x.scalar_type());
}

inline std::string torch_version() { return TORCH_VERSION; }

// The CUDA stream handle (cudaStream_t) behind a LibTorch stream, for libraries that take one
// (NCCL); nullptr is a valid handle (the default stream). LibTorch 1.13 does not expose it through
// the device-generic API: nullopt there.
inline constexpr bool kHasNativeStream = PIPESWAP_TORCH_AT_LEAST(2, 2);
inline std::optional<void*> native_stream(const c10::Stream& stream) {
#if PIPESWAP_TORCH_AT_LEAST(2, 2)
  return stream.native_handle();
#else
  (void)stream;
  return std::nullopt;
#endif
}

// Blocks the calling thread until the event's recorded work is done. LibTorch 1.13's c10::Event
// has no synchronize(); polling query() is what it offers (used off the compute path only).
inline void synchronize_event(const c10::Event& event) {
#if PIPESWAP_TORCH_AT_LEAST(2, 1)
  event.synchronize();
#else
  while (!event.query()) std::this_thread::yield();
#endif
}

// Device-side timing for --trace: events created with timing_event_flag() and recorded on a
// stream can say how many milliseconds of device time lie between them. LibTorch >= 2.5 has
// c10::Event::elapsedTime on the device-generic API (CUDA: cudaEventElapsedTime); BACKEND_DEFAULT
// means "timing enabled" on CUDA in every version. Before 2.5 there is no generic way: the trace
// falls back to host-side ranges there.
inline constexpr bool kHasEventTiming = PIPESWAP_TORCH_AT_LEAST(2, 5);
inline constexpr c10::EventFlag timing_event_flag() { return c10::EventFlag::BACKEND_DEFAULT; }
// Milliseconds from `from` to `to` (both recorded and complete); NaN where the version cannot tell.
inline double event_elapsed_ms(const c10::Event& from, const c10::Event& to) {
#if PIPESWAP_TORCH_AT_LEAST(2, 5)
  return from.elapsedTime(to);
#else
  (void)from;
  (void)to;
  return std::numeric_limits<double>::quiet_NaN();
#endif
}

// gelu(x W^T + b, approximate="tanh") (Wan's FFN). On CUDA with LibTorch >= 2.0: one cuBLASLt GEMM with
// the bias and tanh-GELU in its epilogue (the [tokens, ffn] output is written once, not written, read and
// written again); the activation is applied to the fp32 accumulator before rounding, so the two forms
// agree to a rounding of the output.
inline torch::Tensor linear_gelu_tanh(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
#if PIPESWAP_TORCH_AT_LEAST(2, 0)
  if (x.is_cuda() && b.defined() && x.dim() >= 2) {
    auto sizes = x.sizes().vec();
    sizes.back() = w.size(0);
    return at::_addmm_activation(b, x.reshape({-1, x.size(-1)}), w.t(), 1, 1, /*use_gelu=*/true).view(sizes);
  }
#endif
  return torch::gelu(b.defined() ? torch::linear(x, w, b) : torch::linear(x, w), "tanh");
}

// Blocks until the work queued so far on `device`'s current stream (the compute stream) is done; the
// copy stream's prefetches go on. A step's end, timed on the host without a device-to-host copy.
inline void synchronize_stream(const c10::Device& device) {
  if (device.is_cpu()) return;
  const auto* impl = c10::impl::getDeviceGuardImpl(device.type());
  c10::Event done(device.type());
  done.record(impl->getStream(device));
  synchronize_event(done);
}

// Blocks until every stream of `device` has finished its work (a job's end, not its steady state). Before
// 2.2 the device guard has no synchronizeDevice: the current stream's work is waited for instead.
inline void synchronize_device(const c10::Device& device) {
  if (device.is_cpu()) return;
#if PIPESWAP_TORCH_AT_LEAST(2, 2)
  c10::impl::getDeviceGuardImpl(device.type())->synchronizeDevice(device.index());
#else
  synchronize_stream(device);
#endif
}

// fp8 bytes (uint8) as `out` (float32, bf16 or fp16), through LibTorch's own float8 types where the version
// has them (>= 2.1: a view of the bytes, one conversion kernel, no float32 temporary); nullopt on 1.13,
// where the caller indexes the 256-entry table (fp8.h). Every e4m3fn and e5m2 value is exact in all three
// dtypes, so both give the same values.
inline constexpr bool kHasFloat8 = PIPESWAP_TORCH_AT_LEAST(2, 1);
inline std::optional<torch::Tensor> fp8_to(const torch::Tensor& bytes, bool e4m3, c10::ScalarType out) {
#if PIPESWAP_TORCH_AT_LEAST(2, 1)
  return bytes.view(e4m3 ? c10::ScalarType::Float8_e4m3fn : c10::ScalarType::Float8_e5m2).to(out);
#else
  (void)bytes;
  (void)e4m3;
  (void)out;
  return std::nullopt;
#endif
}

// x W^T (+ b) with W in fp8 through torch._scaled_mm (Hopper's fp8 tensor cores): x is quantised per
// row (token) to e4m3 with scale amax / 448, W's bytes are used as they rest in the slot with their
// per-tensor or per-output-channel float32 scale; the product is accumulated in fp32 and returned in
// x's dtype. Only CUDA with LibTorch >= 2.5 (row-wise scales), bf16 activations and dimensions that are
// multiples of 16; nullopt elsewhere (the caller dequantises). `w_bytes` [out, in] uint8, `w_scale` float32
// with one or `out` elements (undefined: 1).
inline constexpr bool kHasScaledMm = PIPESWAP_TORCH_AT_LEAST(2, 5);
inline std::optional<torch::Tensor> scaled_mm_fp8(const torch::Tensor& x, const torch::Tensor& w_bytes, bool e4m3,
                                                  const torch::Tensor& w_scale, const torch::Tensor& bias) {
#if PIPESWAP_TORCH_AT_LEAST(2, 5)
  if (!x.is_cuda() || x.scalar_type() != torch::kBFloat16 || w_bytes.dim() != 2 || x.size(-1) % 16 != 0 ||
      w_bytes.size(0) % 16 != 0)
    return std::nullopt;
  auto sizes = x.sizes().vec();
  sizes.back() = w_bytes.size(0);
  auto x2 = x.reshape({-1, x.size(-1)});
  auto xs = x2.abs().amax(1, /*keepdim=*/true).to(torch::kFloat32).clamp_min(1e-12) / 448.0;
  auto xq = (x2.to(torch::kFloat32) / xs).to(c10::ScalarType::Float8_e4m3fn);
  auto w = w_bytes.view(e4m3 ? c10::ScalarType::Float8_e4m3fn : c10::ScalarType::Float8_e5m2);
  const int64_t out = w_bytes.size(0);
  auto ws = !w_scale.defined()
                ? torch::ones({1, out}, x.options().dtype(torch::kFloat32))
                : (w_scale.numel() == 1 ? w_scale.reshape({1}).expand({out}) : w_scale.reshape({out}))
                      .to(torch::kFloat32)
                      .reshape({1, out})
                      .contiguous();
  // _scaled_mm wants the second operand column-major: W^T of a row-major [out, in] W is exactly that.
  auto y = at::_scaled_mm(xq, w.t(), xs, ws, bias.defined() ? std::optional<at::Tensor>(bias) : std::nullopt,
                          std::nullopt, x.scalar_type());
  return y.view(sizes);
#else
  (void)x;
  (void)w_bytes;
  (void)e4m3;
  (void)w_scale;
  (void)bias;
  return std::nullopt;
#endif
}

// A c10::Allocator written once for both versions: allocate() is const before LibTorch 2.3 and not from
// 2.3 on, when copy_data() became pure virtual too. Derived allocators implement allocate_bytes().
struct AllocatorBase : c10::Allocator {
  virtual c10::DataPtr allocate_bytes(size_t n) const = 0;
#if PIPESWAP_TORCH_AT_LEAST(2, 3)
  c10::DataPtr allocate(size_t n) override { return allocate_bytes(n); }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
#else
  c10::DataPtr allocate(size_t n) const override { return allocate_bytes(n); }
#endif
};

}  // namespace pipeswap::compat
