#include "layers.h"

#include "pipeswap/core/torch_compat.h"

namespace pipeswap::models {

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  return compat::rms_norm(x, weight, eps);
}

torch::Tensor dense(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias) {
  return bias.defined() ? torch::linear(x, weight, bias) : torch::linear(x, weight);
}

}  // namespace pipeswap::models
