#include "progress.h"

#include <unistd.h>

#include <cstdlib>
#include <iostream>
#include <utility>

#include "pipeswap/core/identity.h"
#include "pipeswap/core/log.h"
#include "pipeswap/pipeline/plan.h"

namespace pipeswap::launcher {
namespace {

double progress_interval() {
  if (const char* v = std::getenv("PIPESWAP_PROGRESS_INTERVAL"); v != nullptr && *v != '\0') {
    char* end = nullptr;
    const double s = std::strtod(v, &end);
    if (end != v && s >= 0) return s;
  }
  return 1.0;
}

}  // namespace

Progress::Progress(std::string what, int64_t total, Unit unit)
    : what_(std::move(what)),
      total_(total),
      unit_(unit),
      start_(std::chrono::steady_clock::now()),
      last_print_(start_),
      terminal_(::isatty(STDERR_FILENO) == 1),
      enabled_(log().should_log(spdlog::level::info)),
      interval_(terminal_ ? 0.1 : progress_interval()) {}

Progress::~Progress() {
  if (open_line_) std::cerr << "\n" << std::flush;
}

std::string Progress::clock(double seconds) {
  const int64_t s = seconds < 0 ? 0 : static_cast<int64_t>(seconds + 0.5);
  if (s >= 3600) return fmt::format("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
  return fmt::format("{:02}:{:02}", s / 60, s % 60);
}

std::string Progress::line(const std::string& what, int64_t done, int64_t total, Unit unit, double elapsed,
                           const std::string& note) {
  const double left = done > 0 ? elapsed * static_cast<double>(total - done) / static_cast<double>(done) : 0;
  const std::string eta = done > 0 ? clock(left) : "?";
  std::string count, rate;
  if (unit == Unit::kBytes) {
    const int pct = total > 0 ? static_cast<int>(100 * done / total) : 100;
    count = fmt::format("{}% {}/{}", pct, pipeline::format_bytes(done), pipeline::format_bytes(total));
    rate = elapsed > 0 ? pipeline::format_bytes(static_cast<int64_t>(static_cast<double>(done) / elapsed)) + "/s"
                       : "?/s";
  } else {
    count = fmt::format("{}/{}", done, total);
    if (done == 0 || elapsed <= 0) {
      rate = "? it/s";
    } else if (elapsed / static_cast<double>(done) > 1.0) {
      rate = fmt::format("{:.2f} s/it", elapsed / static_cast<double>(done));
    } else {
      rate = fmt::format("{:.2f} it/s", static_cast<double>(done) / elapsed);
    }
  }
  return fmt::format("{} {}{}{} [{}<{}, {}]", what, count, note.empty() ? "" : " ", note, clock(elapsed), eta, rate);
}

void Progress::update(int64_t done, const std::string& note) {
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  const bool last = done >= total_;
  // Bytes: a line once an interval has passed (so work done within one prints nothing), and the last
  // one only to end a bar that was shown.
  if (unit_ == Unit::kBytes &&
      (last ? !printed_ : std::chrono::duration<double>(now - last_print_).count() < interval_)) {
    return;
  }
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const std::string text = line(what_, done, total_, unit_, elapsed, note);
  if (terminal_) {
    // Redrawn in place, with the rank prefix the log lines carry; the newline comes with the last update.
    const RankIdentity& id = rank_identity();
    std::cerr << fmt::format("\r[{} r{} {}] {}\033[K{}", id.host, id.rank, id.device, text, last ? "\n" : "")
              << std::flush;
    open_line_ = !last;
  } else {
    log().info("{}", text);
  }
  printed_ = true;
  last_print_ = now;
}

}  // namespace pipeswap::launcher
