#include "pipeswap/core/printable.h"

#include <fmt/format.h>

namespace pipeswap {
namespace {

bool is_control(unsigned char c) { return c < 0x20 || c == 0x7f; }

void append_escaped(std::string& out, unsigned char c) { out += fmt::format("\\x{:02x}", c); }

}  // namespace

std::string printable(std::string_view name, size_t max_bytes) {
  size_t take = name.size() <= max_bytes ? name.size() : max_bytes;
  // Not in the middle of a UTF-8 sequence: back up over continuation bytes (10xxxxxx).
  while (take < name.size() && take > 0 && (static_cast<unsigned char>(name[take]) & 0xC0) == 0x80) --take;
  std::string out;
  out.reserve(take + 16);
  for (size_t i = 0; i < take; ++i) {
    const auto c = static_cast<unsigned char>(name[i]);
    if (is_control(c)) {
      append_escaped(out, c);
    } else {
      out += static_cast<char>(c);
    }
  }
  if (take < name.size()) out += fmt::format("... ({} bytes)", name.size());
  return out;
}

std::string printable_message(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (const char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    if (is_control(c) && c != '\n' && c != '\t') {
      append_escaped(out, c);
    } else {
      out += ch;
    }
  }
  return out;
}

}  // namespace pipeswap
