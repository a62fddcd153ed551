#include "pipeswap/core/checkpoint_index.h"

#include <algorithm>

#include "pipeswap/core/error.h"
#include "pipeswap/core/json.h"
#include "pipeswap/core/printable.h"

namespace pipeswap {
namespace {

// A shard name from the index must stay inside the checkpoint directory, and print as it is.
bool is_plain_file_name(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos &&
         std::none_of(name.begin(), name.end(), [](char c) { return static_cast<unsigned char>(c) < 0x20; });
}

}  // namespace

std::map<std::string, std::string> parse_checkpoint_index(const std::string& path, std::string_view text) {
  using nlohmann::json;
  json index;
  try {
    index = parse_json(text);  // a tensor mapped twice (to one shard or two) is an error naming it
  } catch (const JsonError& e) {
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
             path, printable(tensor), file.type_name());
    const std::string name = file.get<std::string>();
    PS_CHECK(is_plain_file_name(name), CheckpointError,
             "checkpoint index '{}': tensor '{}' points to shard '{}', which is not a plain file name in the model "
             "directory: shard names must not contain '/' or control characters, or be '..'; fix or re-download the "
             "index",
             path, printable(tensor), printable(name));
    weight_map[tensor] = name;
  }
  return weight_map;
}

}  // namespace pipeswap
