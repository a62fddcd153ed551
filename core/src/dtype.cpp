#include "pipeswap/core/dtype.h"

#include "pipeswap/core/error.h"

namespace pipeswap {
namespace {
struct Row {
  DType d;
  const char* name;
  size_t size;
  c10::ScalarType st;
};
constexpr Row kRows[] = {
    {DType::F64, "F64", 8, c10::ScalarType::Double}, {DType::F32, "F32", 4, c10::ScalarType::Float},
    {DType::F16, "F16", 2, c10::ScalarType::Half},   {DType::BF16, "BF16", 2, c10::ScalarType::BFloat16},
    {DType::I64, "I64", 8, c10::ScalarType::Long},   {DType::I32, "I32", 4, c10::ScalarType::Int},
    {DType::I16, "I16", 2, c10::ScalarType::Short},  {DType::I8, "I8", 1, c10::ScalarType::Char},
    {DType::U8, "U8", 1, c10::ScalarType::Byte},     {DType::BOOL, "BOOL", 1, c10::ScalarType::Bool},
    // After U8, so that from_scalar_type(kByte) stays U8: the fp8 carrier type.
    {DType::F8_E4M3, "F8_E4M3", 1, c10::ScalarType::Byte}, {DType::F8_E5M2, "F8_E5M2", 1, c10::ScalarType::Byte},
};
const Row& row(DType d) {
  for (const Row& r : kRows)
    if (r.d == d) return r;
  PS_THROW(Error, "unknown DType {}", static_cast<int>(d));
}
}  // namespace

std::optional<DType> dtype_from_safetensors(const std::string& name) {
  for (const Row& r : kRows)
    if (name == r.name) return r.d;
  return std::nullopt;
}
const char* dtype_name(DType d) { return row(d).name; }
size_t dtype_size(DType d) { return row(d).size; }
c10::ScalarType to_scalar_type(DType d) { return row(d).st; }
DType from_scalar_type(c10::ScalarType t) {
  for (const Row& r : kRows)
    if (r.st == t) return r.d;
  PS_THROW(ConfigError, "tensor type {} cannot be stored in safetensors", c10::toString(t));
}

std::optional<c10::ScalarType> parse_float_dtype(const std::string& w) {
  if (w == "fp32" || w == "float32" || w == "f32") return c10::ScalarType::Float;
  if (w == "bf16" || w == "bfloat16") return c10::ScalarType::BFloat16;
  if (w == "fp16" || w == "float16" || w == "half" || w == "f16") return c10::ScalarType::Half;
  return std::nullopt;
}

const char* dtype_word(c10::ScalarType t) {
  switch (t) {
    case c10::ScalarType::Float: return "float32";
    case c10::ScalarType::BFloat16: return "bfloat16";
    case c10::ScalarType::Half: return "float16";
    default: return c10::toString(t);
  }
}

}  // namespace pipeswap
