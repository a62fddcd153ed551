// libFuzzer target: the bytes of a model.safetensors.index.json -> parse_checkpoint_index. Whatever
// the bytes, the outcome is a CheckpointError or a weight map whose every shard name is a plain
// file name inside the checkpoint directory.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "pipeswap/core/checkpoint_index.h"
#include "pipeswap/core/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto map = pipeswap::parse_checkpoint_index("fuzz/model.safetensors.index.json",
                                                      std::string_view(reinterpret_cast<const char*>(data), size));
    for (const auto& [tensor, file] : map) {
      if (file.empty() || file == "." || file == ".." || file.find('/') != std::string::npos ||
          file.find('\0') != std::string::npos)
        std::abort();
    }
  } catch (const pipeswap::CheckpointError&) {
    // the expected outcome for most inputs
  }
  return 0;
}
