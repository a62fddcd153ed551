// JSON from files a user or a download gave us (config.json, the checkpoint index, safetensors
// headers, --config, token inputs), parsed with two rules nlohmann's parser does not enforce: nesting
// at most kMaxJsonDepth deep (the serializer and other recursive code then cannot overflow the stack
// on what a hostile file nests), and no key twice in one object (which value would win is the
// parser's choice, and a checkpoint that lists a tensor twice is ambiguous).
#pragma once

#include <nlohmann/json.hpp>

#include <stdexcept>
#include <string_view>

namespace pipeswap {

constexpr int kMaxJsonDepth = 256;

// Invalid JSON, or JSON that breaks one of the rules above; what() says which and where (the key,
// escaped and cut by printable()). Callers add the file and what it is for.
class JsonError : public std::runtime_error {
  using std::runtime_error::runtime_error;
};

nlohmann::json parse_json(std::string_view text);

}  // namespace pipeswap
