#include "flags.h"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <optional>
#include <thread>

#include "pipeswap/core/bytes.h"
#include "pipeswap/core/printable.h"

namespace pipeswap::launcher::flags {
namespace {

// The whole text as a finite number, or nothing (strtod alone would take "12abc", "inf" and "nan").
bool read_number(const std::string& text, double* out) {
  if (text.empty()) return false;
  const char* begin = text.c_str();
  char* end = nullptr;
  const double v = std::strtod(begin, &end);
  if (end != begin + text.size() || !std::isfinite(v)) return false;
  *out = v;
  return true;
}

// Optional sign and decimal digits only: read exactly (a double would round above 2^53); nothing
// when the text is no plain integer or is beyond int64.
std::optional<int64_t> read_plain_integer(const std::string& text) {
  size_t i = text.size() > 0 && (text[0] == '-' || text[0] == '+') ? 1 : 0;
  if (i == text.size() || text.size() - i > 19) return std::nullopt;
  for (size_t k = i; k < text.size(); ++k)
    if (text[k] < '0' || text[k] > '9') return std::nullopt;
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  if (errno == ERANGE || end != text.c_str() + text.size()) return std::nullopt;
  return static_cast<int64_t>(v);
}

}  // namespace

int64_t max_threads() {
  return kThreadsPerCore * std::max<int64_t>(1, static_cast<int64_t>(std::thread::hardware_concurrency()));
}

CLI::Validator integer(int64_t lo, int64_t hi, const std::string& what) {
  return CLI::Validator(
      [lo, hi, what](std::string& text) -> std::string {
        if (const std::optional<int64_t> exact = read_plain_integer(text); exact && *exact >= lo && *exact <= hi) {
          text = std::to_string(*exact);
          return {};
        }
        double v = 0;
        // Compared as doubles before any conversion: a value far outside the range cannot wrap.
        const bool number = read_number(text, &v);
        // Below 2^63 as well: a bound of INT64_MAX reads as the double 2^63, which would not convert.
        if (number && v == std::floor(v) && v >= static_cast<double>(lo) && v <= static_cast<double>(hi) &&
            v < 9223372036854775808.0) {
          text = std::to_string(static_cast<int64_t>(v));
          return {};
        }
        return fmt::format("'{}' is {}: give {} from {} to {}", printable(text),
                           !number ? "not a finite number" : v != std::floor(v) ? "not a whole number" : "out of range",
                           what, lo, hi);
      },
      "");
}

CLI::Validator real(double lo, double hi, const std::string& what, bool lo_open) {
  return CLI::Validator(
      [lo, hi, what, lo_open](std::string& text) -> std::string {
        double v = 0;
        const bool number = read_number(text, &v);
        if (number && (lo_open ? v > lo : v >= lo) && v <= hi) return {};
        return fmt::format("'{}' is {}: give {} {} {} {} {}", printable(text),
                           number ? "out of range" : "not a finite number", what, lo_open ? "above" : "from", lo,
                           lo_open ? "and at most" : "to", hi);
      },
      "");
}

CLI::Validator byte_size(const std::string& flag, bool allow_auto, std::string* as_written) {
  return CLI::Validator(
      [flag, allow_auto, as_written](std::string& text) -> std::string {
        if (as_written) *as_written = text;
        if (allow_auto && text == "auto") {
          text = std::to_string(kAutoBudget);
          return {};
        }
        const std::optional<double> bytes = byte_count(text);
        if (!bytes)
          return fmt::format("'{}' is not a size: give a number of bytes, or one with a unit (24GB, 512MiB){}",
                             printable(text), allow_auto ? ", or auto" : "");
        if (*bytes > static_cast<double>(kMaxBytes))
          return fmt::format("'{}' is {:.4g} bytes, more than the largest size accepted, 2^62 bytes (4 EiB)",
                             printable(text), *bytes);
        if (*bytes < 1)
          return fmt::format("'{}' is 0 bytes: give a size from 1 byte to 2^62 bytes (leave {} out for no limit)",
                             printable(text), flag);
        text = std::to_string(static_cast<int64_t>(*bytes));
        return {};
      },
      "");
}

}  // namespace pipeswap::launcher::flags
