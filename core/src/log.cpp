#include "pipeswap/core/log.h"

#include <spdlog/sinks/stdout_sinks.h>

#include "pipeswap/core/error.h"
#include "pipeswap/core/identity.h"

namespace pipeswap {
namespace {

std::string pattern_for(const RankIdentity& id) {
  return fmt::format("[%H:%M:%S.%e] [{} r{} {}] [%^%l%$] %v", id.host, id.rank, id.device);
}

spdlog::logger& logger() {
  static std::shared_ptr<spdlog::logger> l = [] {
    auto created = std::make_shared<spdlog::logger>("pipeswap", std::make_shared<spdlog::sinks::stderr_sink_mt>());
    created->set_level(spdlog::level::info);
    created->flush_on(spdlog::level::trace);
    created->set_pattern(pattern_for(rank_identity()));
    return created;
  }();
  return *l;
}

}  // namespace

spdlog::logger& log() { return logger(); }

void refresh_log_prefix() { logger().set_pattern(pattern_for(rank_identity())); }

void set_log_level(const std::string& level) {
  auto lvl = spdlog::level::from_str(level);
  // from_str maps anything unknown to "off"; only accept "off" when it was asked for.
  if (lvl == spdlog::level::off && level != "off") {
    PS_THROW(ConfigError, "unknown --log-level '{}': use one of trace, debug, info, warn, error, off", level);
  }
  logger().set_level(lvl);
}

}  // namespace pipeswap
