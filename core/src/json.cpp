#include "pipeswap/core/json.h"

#include <fmt/format.h>

#include <set>
#include <string>
#include <vector>

#include "pipeswap/core/printable.h"

namespace pipeswap {

nlohmann::json parse_json(std::string_view text) {
  using nlohmann::json;
  // One entry per open object or array: the keys seen so far in an object (unused for arrays).
  std::vector<std::set<std::string>> open;
  auto check = [&](int /*depth*/, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
      case json::parse_event_t::array_start:
        if (open.size() >= static_cast<size_t>(kMaxJsonDepth))
          throw JsonError(fmt::format("arrays and objects nested more than {} deep", kMaxJsonDepth));
        open.emplace_back();
        break;
      case json::parse_event_t::object_end:
      case json::parse_event_t::array_end:
        if (!open.empty()) open.pop_back();
        break;
      case json::parse_event_t::key:
        if (!open.empty() && !open.back().insert(parsed.get<std::string>()).second)
          throw JsonError(fmt::format("key '{}' appears twice in one object", printable(parsed.get<std::string>())));
        break;
      case json::parse_event_t::value: break;
    }
    return true;
  };
  try {
    return json::parse(text.begin(), text.end(), check);
  } catch (const json::exception& e) {
    throw JsonError(printable(e.what(), 2 * kMaxPrintedName));  // quotes the token it stopped at
  }
}

}  // namespace pipeswap
