#include "layers.h"

#include <atomic>
#include <optional>

#include "pipeswap/core/torch_compat.h"
#include "pipeswap/models/architecture.h"

namespace pipeswap::models {
namespace {
std::atomic<bool> g_fp8_gemm{false};
}  // namespace

void set_fp8_gemm(bool on) { g_fp8_gemm.store(on); }
bool fp8_gemm_enabled() { return g_fp8_gemm.load(); }

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  return compat::rms_norm(x, weight, eps);
}

torch::Tensor dense(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias) {
  return bias.defined() ? torch::linear(x, weight, bias) : torch::linear(x, weight);
}

namespace {
std::optional<torch::Tensor> fp8_gemm(const torch::Tensor& x, const WeightView& w, const std::string& name,
                                      const torch::Tensor& bias) {
  if (!fp8_gemm_enabled()) return std::nullopt;
  const WeightView::Fp8Weight* f = w.fp8(name);
  if (f == nullptr) return std::nullopt;
  return compat::scaled_mm_fp8(x, f->bytes, f->format == Fp8Format::kE4M3, f->scale,
                               bias.defined() ? bias.to(x.scalar_type()) : bias);
}
}  // namespace

torch::Tensor dense(const torch::Tensor& x, const WeightView& w, const std::string& name, const torch::Tensor& bias) {
  if (auto y = fp8_gemm(x, w, name, bias)) return *y;
  return dense(x, w[name], bias);
}

torch::Tensor dense_gelu_tanh(const torch::Tensor& x, const WeightView& w, const std::string& name,
                              const torch::Tensor& bias) {
  if (auto y = fp8_gemm(x, w, name, bias)) return torch::gelu(*y, "tanh");
  return compat::linear_gelu_tanh(x, w[name], bias);
}

}  // namespace pipeswap::models
