// The shard index of a sharded Hugging Face checkpoint (model.safetensors.index.json), parsed from
// memory: apart from Checkpoint so that it needs no LibTorch and can be fuzzed on bytes (tests/fuzz).
#pragma once

#include <map>
#include <string>
#include <string_view>

namespace pipeswap {

// Tensor name -> shard file name, from the index's "weight_map". Every shard name is a plain file
// name inside the checkpoint directory (no '/', not '.' or '..'). Throws CheckpointError naming
// `path` and what is wrong; reads no shard.
std::map<std::string, std::string> parse_checkpoint_index(const std::string& path, std::string_view text);

}  // namespace pipeswap
