// The safetensors header, parsed from memory: what SafetensorsFile::open trusts before it reads any
// tensor byte. Apart from the file reader so that it needs no LibTorch and can be fuzzed on bytes
// (tests/fuzz): a hostile header must end in a CheckpointError, never in a crash or an allocation
// sized by a number the header claims.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "pipeswap/core/dtype.h"

namespace pipeswap {

// Largest JSON header we accept (the reference implementation uses the same bound).
constexpr uint64_t kMaxSafetensorsHeader = 100ull << 20;

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets relative to the start of the data section
  uint64_t end = 0;
  uint64_t nbytes() const { return end - begin; }
  int64_t numel() const;
};

struct SafetensorsHeader {
  std::vector<TensorInfo> tensors;  // sorted by offset, non-overlapping, inside the data section
  std::map<std::string, std::string> metadata;
};

// The JSON header's length from the file's first 8 bytes (little-endian), checked against
// kMaxSafetensorsHeader and the file's size before anyone allocates it. `path` names the file in
// messages. Throws CheckpointError.
uint64_t safetensors_header_length(const std::string& path, const unsigned char (&prefix)[8], uint64_t file_size);

// Parses and validates the JSON header `text` of a file whose data section (the bytes after the
// header) is `data_size` bytes: every dtype known, every shape's byte size equal to its offset
// range, offsets inside the data section and non-overlapping. Throws CheckpointError naming `path`.
SafetensorsHeader parse_safetensors_header(const std::string& path, std::string_view text, uint64_t data_size);

}  // namespace pipeswap
