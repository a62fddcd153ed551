// Reading config.json values the way Hugging Face does (null means "use the default"; integers
// may be written as 4096.0), with errors that name the key.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

namespace pipeswap::models {

// A key that is present and not null (HF treats `"key": null` as "use the default").
bool has(const nlohmann::json& j, const std::string& key);
// `where` is the key as a user finds it in config.json ("rope_scaling.factor").
double as_number(const nlohmann::json& v, const std::string& where);
int64_t as_int(const nlohmann::json& v, const std::string& where);
// A required positive integer; the error names the key and the model family.
int64_t require_positive(const nlohmann::json& c, const std::string& key, const std::string& family);
int64_t optional_positive(const nlohmann::json& c, const std::string& key, int64_t fallback);
bool optional_bool(const nlohmann::json& c, const std::string& key, bool fallback);

}  // namespace pipeswap::models
