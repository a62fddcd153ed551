#include "pipeswap/core/checkpoint_index.h"

#include <nlohmann/json.hpp>

#include "pipeswap/core/error.h"

namespace pipeswap {
namespace {

// A shard name from the index must stay inside the checkpoint directory.
bool is_plain_file_name(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos &&
         name.find('\0') == std::string::npos;
}

}  // namespace

std::map<std::string, std::string> parse_checkpoint_index(const std::string& path, std::string_view text) {
  using nlohmann::json;
  json index;
  try {
    index = json::parse(text);
  } catch (const json::exception& e) {
    PS_THROW(CheckpointError,
             "checkpoint index '{}' is not valid JSON ({}): re-download the checkpoint or fix the file", path,
             e.what());
  }
  auto wm = index.is_object() ? index.find("weight_map") : index.end();
  PS_CHECK(index.is_object() && wm != index.end() && wm->is_object(), CheckpointError,
           "checkpoint index '{}' has no \"weight_map\" object (tensor name -> shard file): re-download the "
           "checkpoint",
           path);
  std::map<std::string, std::string> weight_map;
  for (const auto& [tensor, file] : wm->items()) {
    PS_CHECK(file.is_string(), CheckpointError,
             "checkpoint index '{}': weight_map entry for tensor '{}' is {}, not a shard file name: re-download the "
             "checkpoint",
             path, tensor, file.type_name());
    const std::string name = file.get<std::string>();
    PS_CHECK(is_plain_file_name(name), CheckpointError,
             "checkpoint index '{}': tensor '{}' points to shard '{}', which is not a plain file name in the model "
             "directory: shard names must not contain '/' or be '..'; fix or re-download the index",
             path, tensor, name);
    weight_map[tensor] = name;
  }
  return weight_map;
}

}  // namespace pipeswap
