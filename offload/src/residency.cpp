#include "pipeswap/offload/residency.h"

#include <cctype>
#include <cmath>

#include "pipeswap/core/error.h"

namespace pipeswap::offload {

ResidentPolicy parse_resident_policy(const std::string& s) {
  if (s == "suffix") return ResidentPolicy::kSuffix;
  if (s == "prefix") return ResidentPolicy::kPrefix;
  if (s == "interleaved") return ResidentPolicy::kInterleaved;
  PS_THROW(ConfigError, "unknown --resident-policy '{}': use suffix (the last blocks swap, as block-swap nodes do), "
                        "prefix or interleaved", s);
}

Granularity parse_granularity(const std::string& s) {
  if (s == "block") return Granularity::kBlock;
  if (s == "phase") return Granularity::kPhase;
  PS_THROW(ConfigError, "unknown --offload-granularity '{}': use block or phase", s);
}

const char* to_string(ResidentPolicy p) {
  switch (p) {
    case ResidentPolicy::kPrefix: return "prefix";
    case ResidentPolicy::kInterleaved: return "interleaved";
    default: return "suffix";
  }
}
const char* to_string(Granularity g) { return g == Granularity::kPhase ? "phase" : "block"; }

int blocks_to_swap_for(const OffloadOptions& o, int n) {
  if (o.offload_ratio) {
    const double r = *o.offload_ratio;
    PS_CHECK(r >= 0 && r <= 1 && !std::isnan(r), ConfigError,
             "--offload-ratio {} is outside [0, 1]: it is the fraction of each rank's blocks that swap", r);
    return static_cast<int>(std::lround(r * n));
  }
  if (!o.blocks_to_swap) return 0;
  const int s = *o.blocks_to_swap;
  PS_CHECK(s >= 0, ConfigError, "--blocks-to-swap {} is negative: give how many of each rank's blocks swap", s);
  PS_CHECK(s <= n, ConfigError,
           "--blocks-to-swap {} is more than the {} block(s) this rank owns: use at most {} (or --offload-ratio 1)", s,
           n, n);
  return s;
}

std::vector<bool> choose_swapped(int n, int swap, ResidentPolicy policy) {
  std::vector<bool> swapped(n, false);
  swap = std::max(0, std::min(swap, n));
  switch (policy) {
    case ResidentPolicy::kSuffix:
      for (int i = n - swap; i < n; ++i) swapped[i] = true;
      break;
    case ResidentPolicy::kPrefix:
      for (int i = 0; i < swap; ++i) swapped[i] = true;
      break;
    case ResidentPolicy::kInterleaved: {
      // Resident block k of r sits at floor((k + 0.5) * n / r): evenly spread, none adjacent when r <= n/2.
      const int resident = n - swap;
      std::fill(swapped.begin(), swapped.end(), true);
      for (int k = 0; k < resident; ++k) swapped[static_cast<int>((k + 0.5) * n / resident)] = false;
      break;
    }
  }
  return swapped;
}

int64_t parse_bytes(const std::string& text, const std::string& flag) {
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
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
  PS_CHECK(used > 0 && mul > 0 && v >= 0 && std::isfinite(v), ConfigError,
           "{} '{}' is not a size: give bytes or a number with a unit, e.g. 24GB, 512MiB", flag, text);
  return static_cast<int64_t>(v * mul);
}

}  // namespace pipeswap::offload
