// Small pieces of model arithmetic the architectures share.
#pragma once

#include <torch/types.h>

#include <string>

#include "pipeswap/core/shape.h"

namespace pipeswap::models {

// "[2, 12, 64]" for error messages (core's shape_str of the tensor's sizes).
inline std::string shape_str(const torch::Tensor& t) { return pipeswap::shape_str(t.sizes()); }

// RMSNorm over the last axis as HF's LlamaRMSNorm and Wan's WanRMSNorm compute it: statistics in
// fp32, the normalised value rounded to the input dtype, then the weight.
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps);

// x W^T (+ b when `bias` is defined).
torch::Tensor dense(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias = {});

}  // namespace pipeswap::models
