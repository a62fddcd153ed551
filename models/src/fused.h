// The element-wise steps of a DiT block (and Llama's rotary embedding), each one pass over the activation on CUDA (fused_kernels.cu)
// and the same arithmetic written with ATen ops elsewhere (CPU ranks, LibTorch without CUDA, shapes
// the kernels do not take). They replace chains of 4-8 ATen kernels that each read and write the whole
// [tokens, dim] activation, most of them in fp32: at 4k tokens of a Wan2.1-14B block that chain moved
// about 6 GB per block, the fused steps about 1 GB.
//
// The arithmetic is Wan2.1's and diffusers' WanTransformer3DModel's: norms and modulation in fp32, one
// rounding to the compute dtype at the end of each step (RMSNorm rounds the normalised value before the
// weight, as WanRMSNorm and HF do). The CUDA reductions sum in another order than ATen's, so the two
// paths agree to rounding, not bit for bit; every rank of a GPU job takes the CUDA path, so splits and
// swap settings stay bit-identical to a single-GPU run.
#pragma once

#include <torch/types.h>

namespace pipeswap::models::fused {

// (LayerNorm(x) [* weight + bias] * (1 + scale) + shift), in fp32, rounded to x's dtype. x [B, L, D];
// shift/scale fp32 broadcastable to [B, 1, D] or undefined; weight/bias [D] or undefined.
torch::Tensor modulated_layer_norm(const torch::Tensor& x, double eps, const torch::Tensor& shift,
                                   const torch::Tensor& scale, const torch::Tensor& weight = {},
                                   const torch::Tensor& bias = {});

// x = x + y * gate in fp32, rounded to x's dtype, in place. x [B, L, D]; y like x (any float dtype);
// gate fp32 broadcastable to [B, 1, D].
void gated_residual_(torch::Tensor& x, const torch::Tensor& y, const torch::Tensor& gate);

// RMSNorm over the last axis (when weight is defined) then the rotary embedding of each head with
// interleaved pairs (Wan's view_as_complex pairing). x [B, L, H * head_dim]; cos/sin [L, head_dim / 2]
// fp32. Returns [B, L, H, head_dim] in x's dtype.
torch::Tensor rms_norm_rope(const torch::Tensor& x, const torch::Tensor& weight, double eps, const torch::Tensor& cos,
                            const torch::Tensor& sin, int64_t heads);

// HF Llama's rotary embedding: x * cos + rotate_half(x) * sin, every product and sum rounded to x's dtype
// as the ATen ops round them (so the CUDA kernel gives the same bits). x [B, T, H, D]; cos/sin [T, D] in
// x's dtype. Returns [B, T, H, D].
torch::Tensor rope_half(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);

}  // namespace pipeswap::models::fused
