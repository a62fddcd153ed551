#include "pipeswap/core/fp8.h"

#include <ATen/Parallel.h>

#ifdef PIPESWAP_FUSED_CUDA
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include "fp8_kernels.h"
#endif

#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <mutex>
#include <tuple>

#include "pipeswap/core/checkpoint.h"
#include "pipeswap/core/error.h"
#include "pipeswap/core/shape.h"
#include "pipeswap/core/torch_compat.h"

namespace pipeswap {
namespace {

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

float decode(uint8_t b, Fp8Format f) {
  const bool neg = (b & 0x80) != 0;
  float v = 0;
  if (f == Fp8Format::kE4M3) {
    const int e = (b >> 3) & 0xF, m = b & 0x7;
    if (e == 0xF && m == 0x7) return std::numeric_limits<float>::quiet_NaN();
    v = e == 0 ? std::ldexp(static_cast<float>(m), -9) : std::ldexp(static_cast<float>(8 + m), e - 10);
  } else {
    const int e = (b >> 2) & 0x1F, m = b & 0x3;
    if (e == 0x1F) {
      if (m != 0) return std::numeric_limits<float>::quiet_NaN();
      v = std::numeric_limits<float>::infinity();
    } else {
      v = e == 0 ? std::ldexp(static_cast<float>(m), -16) : std::ldexp(static_cast<float>(4 + m), e - 17);
    }
  }
  return neg ? -v : v;
}

std::array<float, 256> make_values(Fp8Format f) {
  std::array<float, 256> t{};
  for (int b = 0; b < 256; ++b) t[static_cast<size_t>(b)] = decode(static_cast<uint8_t>(b), f);
  return t;
}

// The table on `device`, made once per device (a dequantise must not copy it from the host each time).
torch::Tensor device_table(Fp8Format f, const torch::Device& device) {
  static std::mutex mu;
  static std::map<std::tuple<int, int, int>, torch::Tensor> tables;
  std::lock_guard<std::mutex> lock(mu);
  auto key = std::make_tuple(static_cast<int>(f), static_cast<int>(device.type()), static_cast<int>(device.index()));
  auto it = tables.find(key);
  if (it != tables.end()) return it->second;
  const auto& v = fp8_values(f);
  torch::Tensor t = torch::from_blob(const_cast<float*>(v.data()), {256}, torch::kFloat32).clone().to(device);
  tables.emplace(key, t);
  return t;
}

// v (exact fp8 values, in float32 or already in `out`) times the float32 scale, rounded once to `out`. The
// in-place product with a float32 operand of dim >= 1 computes in float32 and rounds into v's dtype, so v
// in `out` gives the same bits as v in float32 then .to(out), without the float32 temporary. A 0-dim scale
// would count as a scalar (cast to v's dtype first): it is made 1-dim.
torch::Tensor finish(torch::Tensor v, const torch::Tensor& scale, c10::ScalarType out) {
  if (scale.defined()) v = v.mul_(scale.dim() == 0 ? scale.reshape({1}) : scale);
  return v.to(out);
}

#ifdef PIPESWAP_FUSED_CUDA
// The fused kernel's arguments for (bytes, scale, out), or false where it does not take them (a scale that
// broadcasts other than per tensor or per row of dim 0, not float32, not contiguous; no stream handle in
// this LibTorch): the ATen path runs there.
struct FusedArgs {
  fp8_cuda::ScaleKind kind = fp8_cuda::ScaleKind::kNone;
  int64_t row_elems = 1;
  fp8_cuda::Out out = fp8_cuda::Out::kFloat;
};

bool fused_args(const torch::Tensor& bytes, const torch::Tensor& scale, c10::ScalarType out, FusedArgs* a) {
  if (!compat::kHasNativeStream || !bytes.is_cuda() || !bytes.is_contiguous()) return false;
  switch (out) {
    case c10::ScalarType::Float: a->out = fp8_cuda::Out::kFloat; break;
    case c10::ScalarType::BFloat16: a->out = fp8_cuda::Out::kBFloat16; break;
    case c10::ScalarType::Half: a->out = fp8_cuda::Out::kHalf; break;
    default: return false;
  }
  if (!scale.defined()) return true;
  if (scale.scalar_type() != torch::kFloat32 || !scale.is_contiguous() || scale.device() != bytes.device())
    return false;
  if (scale.numel() == 1 && scale.dim() <= bytes.dim()) {
    a->kind = fp8_cuda::ScaleKind::kPerTensor;
    return true;
  }
  // Per output channel: [rows] against a 1-dim weight, or [rows, 1, ...] of the weight's rank.
  if (bytes.dim() < 1 || scale.dim() != bytes.dim() || scale.size(0) != bytes.size(0) ||
      scale.numel() != bytes.size(0) || bytes.size(0) == 0)
    return false;
  a->kind = fp8_cuda::ScaleKind::kPerRow;
  a->row_elems = bytes.numel() / bytes.size(0);
  return a->row_elems > 0;
}

cudaStream_t current_stream(const torch::Device& device) {
  const c10::Stream s = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->getStream(device);
  return static_cast<cudaStream_t>(compat::native_stream(s).value_or(nullptr));
}

// The fused kernel into `out` (contiguous, bytes' numel), on the device's current stream.
void launch_fused(const torch::Tensor& bytes, Fp8Format f, const torch::Tensor& scale, const FusedArgs& a,
                  torch::Tensor& out) {
  const c10::DeviceGuard guard(bytes.device());
  const cudaError_t err = fp8_cuda::dequantize(
      f == Fp8Format::kE4M3 ? fp8_cuda::Format::kE4M3 : fp8_cuda::Format::kE5M2, bytes.data_ptr<uint8_t>(), a.kind,
      scale.defined() ? scale.data_ptr<float>() : nullptr, a.row_elems, bytes.numel(), a.out, out.data_ptr(),
      current_stream(bytes.device()));
  PS_CHECK(err == cudaSuccess, Error, "CUDA kernel fp8 dequantise failed: {}", cudaGetErrorString(err));
}
#endif

// Today's ATen path: the float8 view converted to `out` then scaled (LibTorch >= 2.1), or the table.
torch::Tensor dequantize_aten(const torch::Tensor& bytes, Fp8Format f, const torch::Tensor& scale,
                              c10::ScalarType out) {
  // Converted straight to `out`: the device's temporary per use is the weight in the compute dtype only.
  if (auto v = compat::fp8_to(bytes, f == Fp8Format::kE4M3, out)) return finish(std::move(*v), scale, out);
  return dequantize_fp8_by_table(bytes, f, scale, out);
}

void check_bytes(const torch::Tensor& bytes, Fp8Format f) {
  PS_CHECK(bytes.scalar_type() == torch::kUInt8 && f != Fp8Format::kNone, Error,
           "dequantize_fp8 takes uint8 fp8 bytes, got {}", c10::toString(bytes.scalar_type()));
}

std::string keys_list(const std::vector<std::string>& keys) {
  if (keys.empty()) return "none";
  std::string s;
  for (const auto& k : keys) s += (s.empty() ? "'" : ", '") + k + "'";
  return s;
}

}  // namespace

Fp8Storage Fp8Storage::from_code(int64_t code) {
  PS_CHECK(code >= 0 && code < 18, Error, "bad fp8 storage code {}", code);
  Fp8Storage s;
  s.quantise = code >= 9;
  code %= 9;
  s.format = static_cast<Fp8Format>(code % 3);
  s.scale = static_cast<Fp8Scale>(code / 3);
  return s;
}

int64_t Fp8Storage::scale_numel(const std::vector<int64_t>& shape) const {
  if (!fp8() || scale == Fp8Scale::kNone) return 0;
  if (scale == Fp8Scale::kPerChannel) return shape.empty() ? 1 : shape[0];
  return 1;
}

std::optional<Fp8Format> fp8_format(DType d) {
  if (d == DType::F8_E4M3) return Fp8Format::kE4M3;
  if (d == DType::F8_E5M2) return Fp8Format::kE5M2;
  return std::nullopt;
}
DType fp8_dtype(Fp8Format f) {
  PS_CHECK(f != Fp8Format::kNone, Error, "fp8_dtype of no format");
  return f == Fp8Format::kE4M3 ? DType::F8_E4M3 : DType::F8_E5M2;
}
const char* to_string(Fp8Format f) {
  switch (f) {
    case Fp8Format::kE4M3: return "e4m3fn";
    case Fp8Format::kE5M2: return "e5m2";
    default: return "none";
  }
}

const std::array<float, 256>& fp8_values(Fp8Format f) {
  static const std::array<float, 256> e4m3 = make_values(Fp8Format::kE4M3);
  static const std::array<float, 256> e5m2 = make_values(Fp8Format::kE5M2);
  PS_CHECK(f != Fp8Format::kNone, Error, "fp8_values of no format");
  return f == Fp8Format::kE4M3 ? e4m3 : e5m2;
}

uint8_t e4m3_from_float(float v) {
  // As c10's fp8e4m3fn_from_fp32_value: integer rounding on the float's bits.
  uint32_t bits = 0;
  std::memcpy(&bits, &v, 4);
  const uint32_t sign = bits & 0x80000000u;
  bits ^= sign;
  uint8_t r = 0;
  if (bits >= (1087u << 20)) {  // >= 480 (or inf / NaN): NaN, e4m3fn has no infinity
    r = 0x7F;
  } else if (bits < (121u << 23)) {  // below the smallest normal, 2^-6: add 2^-9's denormaliser
    float f = 0;
    std::memcpy(&f, &bits, 4);
    const uint32_t denorm_bits = 141u << 23;
    float denorm = 0;
    std::memcpy(&denorm, &denorm_bits, 4);
    f += denorm;
    uint32_t fb = 0;
    std::memcpy(&fb, &f, 4);
    r = static_cast<uint8_t>(fb - denorm_bits);
  } else {
    const uint32_t mant_odd = (bits >> 20) & 1u;
    bits += (static_cast<uint32_t>(7 - 127) << 23) + 0x7FFFFu;
    bits += mant_odd;
    r = static_cast<uint8_t>(bits >> 20);
  }
  return static_cast<uint8_t>(r | (sign >> 24));
}

std::pair<torch::Tensor, torch::Tensor> quantize_e4m3_per_channel(const torch::Tensor& w) {
  PS_CHECK(w.device().is_cpu() && w.dim() >= 1, Error, "quantize_e4m3_per_channel needs a CPU tensor of dim >= 1");
  const int64_t rows = w.size(0);
  torch::Tensor wf = w.to(torch::kFloat32).contiguous().view({rows, -1});
  torch::Tensor amax = wf.abs().amax(1);
  // 448: e4m3fn's largest finite value. A row of zeros keeps scale 1 (0 / 1 = 0).
  torch::Tensor scale = torch::where(amax > 0, amax / 448.0f, torch::ones_like(amax));
  torch::Tensor q = (wf / scale.unsqueeze(1)).contiguous();
  torch::Tensor bytes = torch::empty(q.sizes(), torch::kUInt8);
  const float* src = q.data_ptr<float>();
  uint8_t* dst = bytes.data_ptr<uint8_t>();
  at::parallel_for(0, q.numel(), 1 << 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) dst[i] = e4m3_from_float(src[i]);
  });
  return {bytes.view(w.sizes()), scale};
}

torch::Tensor dequantize_fp8_by_table(const torch::Tensor& bytes, Fp8Format f, const torch::Tensor& scale,
                                      c10::ScalarType out) {
  const torch::Tensor table = device_table(f, bytes.device());
  torch::Tensor v = table.index_select(0, bytes.reshape({-1}).to(torch::kInt32)).view(bytes.sizes());
  return finish(std::move(v), scale, out);
}

torch::Tensor dequantize_fp8(const torch::Tensor& bytes, Fp8Format f, const torch::Tensor& scale,
                             c10::ScalarType out) {
  check_bytes(bytes, f);
#ifdef PIPESWAP_FUSED_CUDA
  FusedArgs a;
  if (fused_args(bytes, scale, out, &a)) {
    torch::Tensor v = torch::empty(bytes.sizes(), bytes.options().dtype(out));
    launch_fused(bytes, f, scale, a, v);
    return v;
  }
#endif
  return dequantize_aten(bytes, f, scale, out);
}

torch::Tensor dequantize_fp8_by_aten(const torch::Tensor& bytes, Fp8Format f, const torch::Tensor& scale,
                                     c10::ScalarType out) {
  check_bytes(bytes, f);
  return dequantize_aten(bytes, f, scale, out);
}

void dequantize_fp8_into(const torch::Tensor& bytes, Fp8Format f, const torch::Tensor& scale, torch::Tensor& out) {
  check_bytes(bytes, f);
  PS_CHECK(out.is_contiguous() && out.numel() == bytes.numel() && out.device() == bytes.device(), Error,
           "dequantize_fp8_into: out must be contiguous with the bytes' {} elements on {}, got {} on {}",
           bytes.numel(), bytes.device().str(), shape_str(out.sizes()), out.device().str());
#ifdef PIPESWAP_FUSED_CUDA
  FusedArgs a;
  if (fused_args(bytes, scale, out.scalar_type(), &a)) {
    launch_fused(bytes, f, scale, a, out);
    return;
  }
#endif
  out.view(bytes.sizes()).copy_(dequantize_aten(bytes, f, scale, out.scalar_type()));
}

bool fp8_fused_kernel() {
#ifdef PIPESWAP_FUSED_CUDA
  return compat::kHasNativeStream;
#else
  return false;
#endif
}

std::optional<std::string> fp8_aux_owner(const std::string& name) {
  if (name == "scaled_fp8") return std::string();
  for (const char* tail : {".scale_weight", ".scale_input", ".input_scale"})
    if (ends_with(name, tail)) return name.substr(0, name.size() - std::strlen(tail)) + ".weight";
  if (ends_with(name, "_scale")) return name.substr(0, name.size() - 6);  // "<m>.weight_scale", "<name>_scale"
  return std::nullopt;
}

Fp8Found find_fp8(const Checkpoint& ckpt, const std::string& name, const std::vector<int64_t>& shape) {
  const TensorLocation loc = ckpt.locate(name);
  const TensorInfo& info = *loc.info;
  const bool dot_weight = ends_with(name, ".weight");
  const std::string module = dot_weight ? name.substr(0, name.size() - 7) : name;
  std::vector<std::string> scales, ignored, found;
  if (dot_weight && ckpt.has(module + ".scale_weight")) scales.push_back(module + ".scale_weight");
  if (ckpt.has(name + "_scale")) scales.push_back(name + "_scale");
  for (const std::string& k : {module + ".scale_input", module + ".input_scale"})
    if (dot_weight && ckpt.has(k)) ignored.push_back(k);
  found = scales;
  found.insert(found.end(), ignored.begin(), ignored.end());
  const std::string block_wise = name + "_scale_inv";
  if (ckpt.has(block_wise)) found.push_back(block_wise);
  auto fail = [&](const std::string& what) {
    PS_THROW(CheckpointError,
             "weight '{}' in {} is {} {}: {}; scale keys found: {}. pipeswap reads F8_E4M3 / F8_E5M2 weights with "
             "a per-tensor or per-output-channel float scale named '<module>.scale_weight' or '<weight>_scale'",
             name, loc.file->path(), dtype_name(info.dtype), shape_str(info.shape), what, keys_list(found));
  };
  if (ckpt.has(block_wise)) fail("block-wise scales ('weight_scale_inv') are not supported");
  Fp8Found out;
  out.ignored = ignored;
  const auto format = fp8_format(info.dtype);
  if (!format) {
    if (!scales.empty()) fail("it has a scale but is not stored in fp8");
    return out;
  }
  out.storage.format = *format;
  if (scales.size() > 1) fail("it has scales in two spellings; which one applies is ambiguous");
  if (scales.empty()) {
    if (ckpt.has_fp8_scales()) {
      // List what the module has, to show what the file calls it.
      for (const auto& n : ckpt.tensor_names())
        if (n != name && n.rfind(module, 0) == 0 && n.find("scale") != std::string::npos) found.push_back(n);
      fail("the file carries fp8 scales but this weight has none");
    }
    return out;  // a plain fp8 file: scale 1
  }
  const TensorLocation sloc = ckpt.locate(scales[0]);
  const TensorInfo& s = *sloc.info;
  if (s.dtype != DType::F32 && s.dtype != DType::BF16 && s.dtype != DType::F16)
    fail(fmt::format("its scale '{}' is {}, not a float type", scales[0], dtype_name(s.dtype)));
  const int64_t n = s.numel();
  const int64_t rows = shape.empty() ? 1 : shape[0];
  if (n == 1) {
    out.storage.scale = Fp8Scale::kPerTensor;
  } else if (n == rows && (s.shape == std::vector<int64_t>{rows} || s.shape == std::vector<int64_t>{rows, 1})) {
    out.storage.scale = Fp8Scale::kPerChannel;
  } else {
    fail(fmt::format("its scale '{}' has shape {}: neither one value (per tensor) nor [{}] / [{}, 1] (per output "
                     "channel)",
                     scales[0], shape_str(s.shape), rows, rows));
  }
  out.scale_name = scales[0];
  return out;
}

}  // namespace pipeswap
