// A tensor's shape as text and its size in bytes, written once for every folder. Header-only and
// free of LibTorch's tensor headers, so the parsers fuzzed without LibTorch (tests/fuzz) use it too.
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/ArrayRef.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cstdint>
#include <string>

namespace pipeswap {

// "[2, 12, 64]" for error messages.
inline std::string shape_str(c10::IntArrayRef shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

// Bytes of a tensor of `shape` in `dtype` (numel x element size): what a slab entry holds and what
// a read from disk moves.
inline int64_t tensor_bytes(c10::IntArrayRef shape, c10::ScalarType dtype) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n * static_cast<int64_t>(c10::elementSize(dtype));
}

}  // namespace pipeswap
