// The seeded random driver of flags_fuzz.cpp, for CI where libFuzzer is not at hand (g++ builds it):
//   flags_fuzz_driver [--inputs N] [--seed S] [--exec PIPESWAP --runs M]
// N random inputs in flags_fuzz's record format go through the parser in this process (a crash, an
// uncaught exception or a bound broken aborts). With --exec, M of them also run as `PIPESWAP plan ...`
// in a child with a time limit: each must exit 0, 1 or 2 (never a signal, never the time limit).
// Values come from a pool of hostile ones (huge, tiny, negative, non-finite, hexadecimal, special
// files, deep JSON configs) and from random bytes.
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "flags_fuzz.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

constexpr unsigned kNumFlags = kFuzzFlagCount;

std::vector<std::string> hostile_values(const std::string& dir) {
  std::vector<std::string> v = {
      "0", "1", "-1", "2", "-0", "1e308", "-1e308", "1e-308", "4.9e-324", "1e300", "inf", "-inf", "nan", "NaN",
      "infinity", "0x7fffffff", "0x1p1023", "2147483647", "2147483648", "-2147483649", "9223372036854775807",
      "9223372036854775808", "18446744073709551616", "1e19", "99999999999999999999999", "2000000000", "1000000",
      "10000", "100000", "100001", "1e5", "1.5", "0.0001", "0.001", "1e-9", "31536000", "31536001", "1e30",
      "4611686018427387904", "4611686018427387905", "0B", "1KiB", "24GB", "1e30GB", "nanGB", "infGB", "-5GB", "auto",
      "", " ", "true", "false", "maybe", "cpu", "cuda:0", "cpu=1e308,cpu=1e308", "cpu=1,cpu=nan", "cpu=0,cpu=0",
      "cpu=inf", "cpu=-1", "cuda:99999", "cpu,,cpu", "=", ",", "cpu=1=2", "\x1b[31mred", std::string(3000, 'x'),
      "9", "81", "4.5e3", "16384", "16385", "/dev/null", "/dev/zero", "/dev/stdin", "/proc/self/status", "/", ".", dir, dir + "/fifo", dir + "/deep.json",
      dir + "/help.json", dir + "/dup.json", dir + "/huge.json", dir + "/nested-key.json", dir + "/nope.json"};
  return v;
}

void write_configs(const std::string& dir) {
  ::mkdir(dir.c_str(), 0755);
  ::mkfifo((dir + "/fifo").c_str(), 0644);
  std::ofstream(dir + "/deep.json") << std::string(100000, '[') << std::string(100000, ']');
  std::ofstream(dir + "/help.json") << "{\"help\": true}";
  std::ofstream(dir + "/dup.json") << "{\"steps\": 1, \"steps\": 2}";
  std::ofstream(dir + "/huge.json") << "{\"threads\": 1e300, \"comm_timeout\": -1e308, \"max_memory\": 0}";
  std::ofstream(dir + "/nested-key.json") << "{\"device_chain\": [[[[\"cpu\"]]]], \"micro_batches\": [1]}";
}

std::string random_input(std::mt19937_64& rng, const std::vector<std::string>& pool, bool text_only) {
  std::string in(1, static_cast<char>(rng() % 4));  // the subcommand
  const int records = static_cast<int>(rng() % 9);
  for (int r = 0; r < records; ++r) {
    in += '\0';
    const unsigned pick = static_cast<unsigned>(rng() % (2 * kNumFlags + 2));
    in += static_cast<char>(pick < 2 * kNumFlags ? pick : 200);  // 200: a raw argument
    if (!text_only && rng() % 4 == 0) {
      const int n = static_cast<int>(rng() % 24);
      for (int k = 0; k < n; ++k) {
        char c = static_cast<char>(rng() % 256);
        in += c == '\0' ? '0' : c;
      }
    } else {
      in += pool[rng() % pool.size()];
    }
  }
  return in;
}

// The input's arguments after the subcommand, quoted for bash.
std::string shell_args(const std::string& in) {
  const auto args = flags_fuzz_args(reinterpret_cast<const uint8_t*>(in.data()), in.size());
  std::string out;
  for (size_t i = 2; i < args.size(); ++i) {
    std::string q = " '";
    for (char c : args[i]) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
    out += q + "'";
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  long inputs = 20000, runs = 0;
  uint64_t seed = 24;
  std::string exe;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--inputs") inputs = std::atol(argv[i + 1]);
    if (a == "--seed") seed = std::strtoull(argv[i + 1], nullptr, 10);
    if (a == "--exec") exe = argv[i + 1];
    if (a == "--runs") runs = std::atol(argv[i + 1]);
  }
  const std::string dir = "/tmp/pipeswap-flags-fuzz-" + std::to_string(::getpid());
  write_configs(dir);
  const auto pool = hostile_values(dir);
  std::mt19937_64 rng(seed);
  // CLI11 prints --help and --version to stdout: keep the log readable.
  if (!std::freopen("/dev/null", "w", stdout)) return 2;
  for (long k = 0; k < inputs; ++k) {
    const std::string in = random_input(rng, pool, false);
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(in.data()), in.size());
  }
  std::fprintf(stderr, "flags_fuzz_driver: %ld inputs parsed (seed %llu)\n", inputs,
               static_cast<unsigned long long>(seed));
  int failures = 0;
  for (long k = 0; k < runs; ++k) {
    // Always `plan`: it loads no weights, so every run is short.
    const std::string cmd = "cd " + dir + " && timeout -k 5 30 " + exe + " plan --log-level off" +
                            shell_args(random_input(rng, pool, true)) + " >/dev/null 2>&1";
    const int status = std::system(cmd.c_str());
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (code > 2) {
      ++failures;
      std::fprintf(stderr, "flags_fuzz_driver: exit %d%s from:\n  %s\n", code,
                   code == 124 || code == 137 ? " (hung past 30 s)" : "", cmd.c_str());
    }
  }
  if (runs > 0) std::fprintf(stderr, "flags_fuzz_driver: %ld runs of `pipeswap plan`, %d failed\n", runs, failures);
  std::system(("rm -rf " + dir).c_str());
  return failures == 0 ? 0 : 1;
}
