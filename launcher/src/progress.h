// Progress lines for long work, in the shape tqdm users know: what, how far, and time so far < time
// left, with the rate:
//   step 3/30 sigma 0.8123: 0.402311 s [00:01<00:10, 2.49 it/s]
//   loading 41% 11.2 MiB/27.1 MiB [00:02<00:03, 5.1 MiB/s]
// At info level (--log-level warn silences them). On a terminal one line is redrawn in place; when
// stderr is not a terminal (mpirun, pipes, files) each update is a line of its own, and byte counts
// update at most once per interval (PIPESWAP_PROGRESS_INTERVAL seconds, default 1).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace pipeswap::launcher {

class Progress {
 public:
  enum class Unit { kItems, kBytes };
  Progress(std::string what, int64_t total, Unit unit);
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  // `done` of the total so far; `note` follows the count ("sigma 0.81: 0.40 s"). Items: every call is
  // an update. Bytes: a line once an interval has passed since the start or the previous line (work
  // done within one interval prints nothing), and done == total ends a bar that was shown.
  void update(int64_t done, const std::string& note = {});

  // "01:05", "1:02:03": tqdm's clock.
  static std::string clock(double seconds);
  // The line for `done` of `total` after `elapsed` seconds (no prefix).
  static std::string line(const std::string& what, int64_t done, int64_t total, Unit unit, double elapsed,
                          const std::string& note);

 private:
  std::string what_;
  int64_t total_;
  Unit unit_;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_print_;
  bool printed_ = false;
  bool open_line_ = false;  // a terminal line drawn without its newline yet
  bool terminal_;
  bool enabled_;
  double interval_;
};

}  // namespace pipeswap::launcher
