// A stable 64-bit hash of bytes (FNV-1a): the same on every host, build and run, unlike std::hash.
// For comparing settings across ranks and naming files, not for security.
#pragma once

#include <cstdint>
#include <string_view>

namespace pipeswap {

inline uint64_t stable_hash(std::string_view bytes, uint64_t h = 1469598103934665603ull) {
  for (const char c : bytes) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
  return h;
}

}  // namespace pipeswap
