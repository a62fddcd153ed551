// Helpers for tests that run the pipeswap executable.
#pragma once

#include <sys/wait.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include <gtest/gtest.h>

namespace pipeswap::test_support {

inline std::string build_dir() {
  const char* b = std::getenv("PIPESWAP_BUILD_DIR");
  return b ? b : ".";
}
inline std::string exe() { return build_dir() + "/pipeswap"; }

inline std::string source_dir() {
  if (const char* s = std::getenv("PIPESWAP_SOURCE_DIR")) return s;
  return std::string(__FILE__).substr(0, std::string(__FILE__).rfind("/tests/"));  // tests/test_util.h -> root
}

// The reference fixtures of tests/reference/make_*fixtures.py: the committed ones, or the directory in
// PIPESWAP_FIXTURES_DIR (tests/reference/check-live.sh points it at fixtures made afresh with other seeds).
inline std::string fixtures_dir() {
  if (const char* d = std::getenv("PIPESWAP_FIXTURES_DIR"); d != nullptr && d[0] != '\0') return d;
  return source_dir() + "/tests/reference/fixtures";
}
inline std::string fixture(const std::string& name) { return fixtures_dir() + "/" + name; }

// `denoise` with the Wan reference loop's model and inputs (4 steps, guidance 5, shift 3: see
// make_wan_fixtures.py); its "output" tensor is the loop's result.
inline std::string wan_reference_denoise(const std::string& model = "wan-t2v-diffusers") {
  const std::string io = fixture("wan-t2v-diffusers/denoise.safetensors");
  return " denoise --model " + fixture(model) + " --latents " + io + " --context " + io + " --context-null " + io +
         " --steps 4 --guidance 5 --shift 3";
}

struct Result {
  int code = -1;
  std::string output;
  double seconds = 0;
};

// Runs a shell command (bounded by `timeout`), capturing stdout and stderr together.
inline Result sh(const std::string& cmd, int timeout_s = 120) {
  Result r;
  const auto t0 = std::chrono::steady_clock::now();
  std::string full = "timeout -k 5 " + std::to_string(timeout_s) + " bash -c '" + cmd + "' 2>&1";
  FILE* p = popen(full.c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.output.append(buf.data(), n);
  int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

// Raw bytes of a file (outputs are compared byte for byte).
inline std::string file_bytes(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Whether two files hold the same bytes; on a difference says where, without printing the bytes.
inline ::testing::AssertionResult same_bytes(const std::string& a, const std::string& b) {
  const std::string x = file_bytes(a), y = file_bytes(b);
  if (x == y) return ::testing::AssertionSuccess();
  size_t i = 0;
  while (i < x.size() && i < y.size() && x[i] == y[i]) ++i;
  return ::testing::AssertionFailure() << a << " (" << x.size() << " bytes) and " << b << " (" << y.size()
                                       << " bytes) first differ at byte " << i;
}

}  // namespace pipeswap::test_support
