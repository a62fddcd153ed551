// libFuzzer target: the bytes of a whole safetensors file -> the header checks SafetensorsFile::open
// runs (safetensors_header.h). Whatever the bytes, the outcome is a CheckpointError or a header
// whose tensors all lie inside the data section, sorted and non-overlapping, each holding exactly
// numel * element-size bytes. The header text is copied into a string of the claimed length, as
// open() does, only after the length check: with -malloc_limit_mb a lying length shows up as a crash.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "pipeswap/core/error.h"
#include "pipeswap/core/safetensors_header.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 8) return 0;  // open() refuses these before reading the prefix
  unsigned char prefix[8];
  std::memcpy(prefix, data, 8);
  try {
    const uint64_t n = pipeswap::safetensors_header_length("fuzz.safetensors", prefix, size);
    const std::string text(reinterpret_cast<const char*>(data) + 8, static_cast<size_t>(n));
    const uint64_t data_size = size - 8 - n;
    const pipeswap::SafetensorsHeader h = pipeswap::parse_safetensors_header("fuzz.safetensors", text, data_size);
    uint64_t prev_end = 0;
    for (const pipeswap::TensorInfo& t : h.tensors) {
      if (t.begin > t.end || t.end > data_size || t.begin < prev_end) std::abort();
      const uint64_t elements = static_cast<uint64_t>(t.numel());
      if (elements * pipeswap::dtype_size(t.dtype) != t.nbytes()) std::abort();
      prev_end = t.end;
    }
  } catch (const pipeswap::CheckpointError&) {
    // the expected outcome for most inputs
  }
  return 0;
}
