#pragma once
#include "pipeswap/models/architecture.h"
namespace pipeswap::models {
std::unique_ptr<Architecture> make_llama(const nlohmann::json& config);
}
