// Per-rank logging through one spdlog logger. Every line carries "[host rN device]".
// Library code logs through log(); tests silence it with set_log_level("off").
#pragma once

#include <spdlog/spdlog.h>

#include <memory>
#include <string>

namespace pipeswap {

// The library-wide logger (created on first use, writes to stderr).
spdlog::logger& log();

// Re-applies the pattern with the current rank identity (call after set_rank_identity).
void refresh_log_prefix();

// "trace", "debug", "info", "warn", "error", "off"; throws ConfigError for anything else.
void set_log_level(const std::string& level);

}  // namespace pipeswap
