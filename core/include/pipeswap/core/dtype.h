// Element types as safetensors names them, and their LibTorch counterparts.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstddef>
#include <optional>
#include <string>

namespace pipeswap {

// F8_E4M3 / F8_E5M2 (fp8 weights) have no LibTorch type in 1.13: they travel as uint8 bytes (to_scalar_type
// gives kByte) and are dequantised on the device (fp8.h).
enum class DType { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL, F8_E4M3, F8_E5M2 };
inline bool is_fp8(DType d) { return d == DType::F8_E4M3 || d == DType::F8_E5M2; }

// "F32", "BF16", ... as in a safetensors header; std::nullopt for anything else.
std::optional<DType> dtype_from_safetensors(const std::string& name);
const char* dtype_name(DType d);
size_t dtype_size(DType d);
c10::ScalarType to_scalar_type(DType d);
// Throws ConfigError for LibTorch types safetensors cannot hold.
DType from_scalar_type(c10::ScalarType t);

// User-facing dtype words: "fp32"/"float32", "bf16"/"bfloat16", "fp16"/"float16".
std::optional<c10::ScalarType> parse_float_dtype(const std::string& word);
// "float32", "bfloat16", "float16" (torch's names), else LibTorch's own.
const char* dtype_word(c10::ScalarType t);

}  // namespace pipeswap
