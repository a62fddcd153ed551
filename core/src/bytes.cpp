#include "pipeswap/core/bytes.h"

#include <cctype>
#include <cmath>
#include <cstdlib>


namespace pipeswap {

std::optional<double> byte_count(const std::string& text) {
  const char* begin = text.c_str();
  char* end = nullptr;
  const double v = std::strtod(begin, &end);
  const size_t used = (end == nullptr || text.empty()) ? 0 : static_cast<size_t>(end - begin);
  std::string unit = text.substr(used);
  for (char& c : unit) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  double mul = 0;
  if (unit.empty() || unit == "b") mul = 1;
  else if (unit == "k" || unit == "kb") mul = 1e3;
  else if (unit == "m" || unit == "mb") mul = 1e6;
  else if (unit == "g" || unit == "gb") mul = 1e9;
  else if (unit == "t" || unit == "tb") mul = 1e12;
  else if (unit == "kib") mul = 1024.0;
  else if (unit == "mib") mul = 1024.0 * 1024;
  else if (unit == "gib") mul = 1024.0 * 1024 * 1024;
  else if (unit == "tib") mul = 1024.0 * 1024 * 1024 * 1024;
  // strtod also reads "inf", "nan" and hexadecimal: only finite numbers count.
  if (used == 0 || mul == 0 || !std::isfinite(v) || v < 0) return std::nullopt;
  return v * mul;
}

}  // namespace pipeswap
