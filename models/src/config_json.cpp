#include "config_json.h"

#include <cmath>

#include "pipeswap/core/error.h"

namespace pipeswap::models {

bool has(const nlohmann::json& j, const std::string& key) {
  auto it = j.find(key);
  return it != j.end() && !it->is_null();
}

double as_number(const nlohmann::json& v, const std::string& where) {
  PS_CHECK(v.is_number(), CheckpointError, "config.json: '{}' must be a number, got {}", where, v.dump());
  return v.get<double>();
}

int64_t as_int(const nlohmann::json& v, const std::string& where) {
  if (v.is_number_integer()) return v.get<int64_t>();
  // Some exporters write integers as 4096.0.
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (std::floor(d) == d && std::fabs(d) < 9e15) return static_cast<int64_t>(d);
  }
  PS_THROW(CheckpointError, "config.json: '{}' must be an integer, got {}", where, v.dump());
}

int64_t require_positive(const nlohmann::json& c, const std::string& key, const std::string& family) {
  PS_CHECK(has(c, key), CheckpointError,
           "config.json: '{}' is missing; a {} checkpoint's config.json must set it (is this the right model "
           "directory?)",
           key, family);
  const int64_t v = as_int(c.at(key), key);
  PS_CHECK(v > 0, CheckpointError, "config.json: '{}' must be a positive integer, got {}", key, v);
  return v;
}

int64_t optional_positive(const nlohmann::json& c, const std::string& key, int64_t fallback) {
  if (!has(c, key)) return fallback;
  const int64_t v = as_int(c.at(key), key);
  PS_CHECK(v > 0, CheckpointError, "config.json: '{}' must be a positive integer, got {}", key, v);
  return v;
}

bool optional_bool(const nlohmann::json& c, const std::string& key, bool fallback) {
  if (!has(c, key)) return fallback;
  PS_CHECK(c.at(key).is_boolean(), CheckpointError, "config.json: '{}' must be true or false, got {}", key,
           c.at(key).dump());
  return c.at(key).get<bool>();
}

}  // namespace pipeswap::models
