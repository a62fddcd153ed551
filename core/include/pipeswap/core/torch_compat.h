// The one place that knows LibTorch versions apart (1.13 in CI, 2.x on the GPU machine).
#pragma once

#include <torch/types.h>
#include <torch/version.h>

#define PIPESWAP_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) || (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

namespace pipeswap::compat {

// softmax(q k^T * scale + causal mask) v for [B, H, T, D] inputs (k/v already expanded to H heads).
// LibTorch >= 2.0 has a fused kernel; 1.13 gets the same math written out (softmax in fp32).
inline torch::Tensor attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                               bool causal, double scale) {
  const int64_t tq = q.size(-2);
  const int64_t tk = k.size(-2);
  auto scores = torch::matmul(q, k.transpose(-2, -1)).to(torch::kFloat32) * scale;
  if (causal) {
    auto mask = torch::ones({tq, tk}, torch::TensorOptions().dtype(torch::kBool).device(q.device()))
                    .triu(tk - tq + 1);
    scores = scores.masked_fill(mask, -std::numeric_limits<float>::infinity());
  }
  auto probs = torch::softmax(scores, -1).to(q.scalar_type());
  return torch::matmul(probs, v);
}

inline std::string torch_version() { return TORCH_VERSION; }

}  // namespace pipeswap::compat
