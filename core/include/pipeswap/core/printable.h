// Names that come from files (tensor and shard names, config keys, JSON values) as they may be
// printed: control bytes escaped, and cut to a length a terminal and a log can take.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace pipeswap {

// Longest name printed whole; longer ones are cut and their length is stated.
constexpr size_t kMaxPrintedName = 200;

// `name` with bytes below 0x20 and 0x7f written as \xNN (a NUL in a shard name shows
// instead of ending the text, an escape sequence in a tensor name does not reach the terminal),
// cut to kMaxPrintedName bytes of the name as "...<first bytes>... (N bytes)". Valid UTF-8 passes
// through; the cut never splits a multi-byte character.
std::string printable(std::string_view name, size_t max_bytes = kMaxPrintedName);

// The same for a whole message: control bytes other than newline and tab escaped, nothing cut (the
// launcher's last defence for messages that quote file contents).
std::string printable_message(std::string_view text);

}  // namespace pipeswap
