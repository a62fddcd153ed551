// fp8 weights (issue 17): the two safetensors fp8 formats, their scales in the spellings users' files
// carry, and the arithmetic both LibTorch versions run on them.
//
// fp8 travels as bytes. LibTorch 1.13 has no float8 type, so a weight stored as F8_E4M3 / F8_E5M2 is
// kept as uint8 everywhere it rests (host memory, the lazy tier's cache, device slots) with its scale
// in float32 beside it, and is dequantised on the device, per tensor, just before use
// (WeightView::operator[]), or on CUDA a phase ahead of its compute (offload/src/fp8_ahead.h): value =
// float32(fp8) * scale, rounded once to the compute dtype. The fp8 -> float32 step is exact in every
// format, so the result is the same whichever way it is computed: the 256-entry table indexed on the
// device (every version), LibTorch's own float8 types where it has them (compat::fp8_to), or on CUDA one
// fused kernel (fp8_kernels.cu) in builds with PyTorch's LibTorch and nvcc.
//
// Scales, as the files users have spell them (for a weight named "<m>.weight"):
//   "<m>.scale_weight"  ComfyUI's "scaled" fp8 files (a "scaled_fp8" marker tensor in the file)
//   "<m>.weight_scale"  diffusers / torchao / compressed-tensors (= "<name>_scale")
// A scale of one element is per-tensor; one of shape [out] or [out, 1] is per output channel (dim 0).
// "<m>.scale_input" / "<m>.input_scale" (activation scales for fp8 GEMMs) are ignored, and pipeswap says
// so once. A file with no scale at all (ComfyUI's plain *_fp8_e4m3fn files) means scale 1; once a file
// carries scales ("scaled_fp8", or any weight scale), an fp8 weight without one is an error.
#pragma once

#include <torch/types.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "pipeswap/core/dtype.h"

namespace pipeswap {

class Checkpoint;

enum class Fp8Format : uint8_t { kNone = 0, kE4M3 = 1, kE5M2 = 2 };
enum class Fp8Scale : uint8_t { kNone = 0, kPerTensor = 1, kPerChannel = 2 };

// How one weight rests in memory: as it is stored, or fp8 bytes plus a float32 scale. `quantise`: the
// checkpoint holds it wider (bf16/fp32) and --weight-dtype fp8 quantises it at load (e4m3, per output
// channel). A small integer code, so that the plan's inputs travel between ranks as integers.
struct Fp8Storage {
  Fp8Format format = Fp8Format::kNone;
  Fp8Scale scale = Fp8Scale::kNone;
  bool quantise = false;
  bool fp8() const { return format != Fp8Format::kNone; }
  int64_t code() const {
    return static_cast<int64_t>(format) + 3 * static_cast<int64_t>(scale) + (quantise ? 9 : 0);
  }
  static Fp8Storage from_code(int64_t code);
  // Float32 elements of the scale a weight of `shape` carries in its slab (0 without fp8 or a scale).
  int64_t scale_numel(const std::vector<int64_t>& shape) const;
  bool operator==(const Fp8Storage& o) const { return code() == o.code(); }
};

std::optional<Fp8Format> fp8_format(DType d);
DType fp8_dtype(Fp8Format f);
const char* to_string(Fp8Format f);  // "e4m3fn", "e5m2"

// The 256 values of a format as float32, indexed by the byte (NaN / inf where the format has them).
// Bit arithmetic of ours; tests hold it to torch's float8 types.
const std::array<float, 256>& fp8_values(Fp8Format f);
// float32 -> e4m3fn byte, rounding to nearest even as torch's .to(torch.float8_e4m3fn) does (no
// saturation: magnitudes from 464 up, and NaN, give NaN).
uint8_t e4m3_from_float(float v);

// --weight-dtype fp8: a CPU weight (any float type, dim >= 1) quantised per output channel (dim 0) to
// e4m3fn: scale = amax(|row|) / 448 in float32 (1 for a row of zeros), bytes = e4m3(float32(w) / scale).
// Returns {uint8 bytes of w's shape, float32 scale [rows]}. Runs on the host at load: quantising is
// not dequantising, and a rank quantises only its own blocks, once.
std::pair<torch::Tensor, torch::Tensor> quantize_e4m3_per_channel(const torch::Tensor& w);

// fp8 bytes (uint8, any device) -> `out` dtype on the same device: float32(fp8) * scale, rounded once.
// `scale`: undefined (1), one element, or broadcastable float32 per output channel. On CUDA (builds with
// the fused kernels: PyTorch's LibTorch and nvcc) one fused pass, fp8_kernels.cu, on the current stream;
// elsewhere, or for a layout the kernel does not take, the ATen path (dequantize_fp8_by_aten). Both give
// the same bits (NaN: NaN).
torch::Tensor dequantize_fp8(const torch::Tensor& bytes, Fp8Format f, const torch::Tensor& scale,
                             c10::ScalarType out);
// The same into `out` (contiguous, bytes' element count, a float dtype, bytes' device): the dequantise
// ahead (offload/src/fp8_ahead.h) writes into fixed workspaces with it.
void dequantize_fp8_into(const torch::Tensor& bytes, Fp8Format f, const torch::Tensor& scale, torch::Tensor& out);
// The ATen path on every device: the float8 view's .to(out) then mul_ by the scale in float32 (LibTorch
// >= 2.1), or the table (1.13). The reference the fused kernel is held to.
torch::Tensor dequantize_fp8_by_aten(const torch::Tensor& bytes, Fp8Format f, const torch::Tensor& scale,
                                     c10::ScalarType out);
// Whether this build dequantises CUDA tensors with the fused kernel.
bool fp8_fused_kernel();
// The same through the 256-entry table on every version (tests compare it with LibTorch's float8 path).
torch::Tensor dequantize_fp8_by_table(const torch::Tensor& bytes, Fp8Format f, const torch::Tensor& scale,
                                      c10::ScalarType out);

// What the checkpoint holds for one declared weight: its stored type, and where it is fp8, its scale.
struct Fp8Found {
  Fp8Storage storage;       // format and scale kind (never `quantise`)
  std::string scale_name;   // the scale's checkpoint name; empty: no scale (1)
  std::vector<std::string> ignored;  // scale_input / input_scale keys of this weight
};
// Looks the weight `name` (declared `shape`) up in the headers. Throws CheckpointError naming the
// tensor, its dtype and the scale-like keys found, for a variant pipeswap cannot handle: a scale of
// another shape, two spellings at once, a block-wise "weight_scale_inv", a scale on a weight that is
// not fp8, or no scale in a file that carries scales.
Fp8Found find_fp8(const Checkpoint& ckpt, const std::string& name, const std::vector<int64_t>& shape);

// For a scale or input-scale key, the weight it belongs to ("<m>.scale_weight" -> "<m>.weight"); ""
// for the "scaled_fp8" marker; nullopt for any other name. The architecture check skips these.
std::optional<std::string> fp8_aux_owner(const std::string& name);

}  // namespace pipeswap
