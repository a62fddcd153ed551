// The bounds of every numeric flag, applied where CLI11 reads the value (command line and --config
// alike), before anything converts it: integers are read as numbers ("1e3" is 1000), checked to be
// whole and in range, and only then converted, so no value wraps or truncates; reals must be finite
// and in range; sizes take units and stop at 2^62 bytes. An error names the flag, the value and the
// range. The ranges are listed in docs/reliability.md.
#pragma once

#include <CLI/CLI.hpp>

#include <cstdint>
#include <string>

namespace pipeswap::launcher::flags {

// Largest --steps, --repeat and --micro-batches: far above any real job, small enough that
// per-step and per-micro-batch bookkeeping stays small and fits an int.
constexpr int64_t kMaxCount = 100000;
constexpr int64_t kMaxDiskWorkers = 64;
// The device ring holds depth + 1 slots; the plan also stops at the rank's swapped units.
constexpr int64_t kMaxPrefetchDepth = 1024;
// --threads: at most this many per core of the machine (0: automatic).
constexpr int64_t kThreadsPerCore = 4;
// --comm-timeout: from a millisecond to a year, in seconds.
constexpr double kMinTimeout = 0.001;
constexpr double kMaxTimeout = 365.0 * 24 * 3600;
// --guidance and --shift: finite, and far above what a sampler uses (guidance 1..20, shift 1..17).
constexpr double kMaxGuidance = 1000;
constexpr double kMaxShift = 1000;
// generate (and plan for a Wan repo): far above a real video (Wan2.1: 81 frames at 480x832 or
// 720x1280), small enough that every latent and token count stays well inside int64.
constexpr int64_t kMaxFrames = 10001;
constexpr int64_t kMaxPixels = 16384;
// --fps of the MP4.
constexpr double kMaxFps = 1000;
// --seed: any non-negative int64 (read exactly, not through a double).
constexpr int64_t kMaxSeed = INT64_MAX;
// --vram-budget auto, as the integer CLI11 stores.
constexpr int64_t kAutoBudget = -1;

// Threads allowed on this machine: kThreadsPerCore per core.
int64_t max_threads();

// An integer in [lo, hi]; `what` says what the number is, for the message.
CLI::Validator integer(int64_t lo, int64_t hi, const std::string& what);
// A finite real in [lo, hi] (lo excluded when `lo_open`).
CLI::Validator real(double lo, double hi, const std::string& what, bool lo_open = false);
// A byte size above 0 and at most 2^62, rewritten as its number of bytes ("24GB" -> 24000000000).
// With `allow_auto`, "auto" becomes kAutoBudget. `as_written` (when given) keeps the text as the user
// wrote it ("24GB"), for messages.
CLI::Validator byte_size(const std::string& flag, bool allow_auto = false, std::string* as_written = nullptr);

}  // namespace pipeswap::launcher::flags
