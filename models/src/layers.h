// Small pieces of model arithmetic the architectures share.
#pragma once

#include <torch/types.h>

#include <string>

#include "pipeswap/core/shape.h"
#include "pipeswap/core/weights.h"

namespace pipeswap::models {

// "[2, 12, 64]" for error messages (core's shape_str of the tensor's sizes).
inline std::string shape_str(const torch::Tensor& t) { return pipeswap::shape_str(t.sizes()); }

// RMSNorm over the last axis as HF's LlamaRMSNorm and Wan's WanRMSNorm compute it: statistics in
// fp32, the normalised value rounded to the input dtype, then the weight.
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps);

// x W^T (+ b when `bias` is defined).
torch::Tensor dense(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias = {});

// x W^T (+ b) with W the weight `name` of a view. An fp8 weight goes through the fp8 GEMM
// (compat::scaled_mm_fp8: the activation quantised per token to e4m3, Hopper's fp8 tensor cores) when
// --fp8-gemm scaled-mm is on and the device and LibTorch version offer it; otherwise it is dequantised
// to the compute dtype for this use (WeightView::operator[]) and multiplied as any other weight.
torch::Tensor dense(const torch::Tensor& x, const WeightView& w, const std::string& name,
                    const torch::Tensor& bias = {});
// gelu(x W^T + b, "tanh") (Wan's FFN) with the same choice.
torch::Tensor dense_gelu_tanh(const torch::Tensor& x, const WeightView& w, const std::string& name,
                              const torch::Tensor& bias);

}  // namespace pipeswap::models
