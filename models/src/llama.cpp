#include "llama.h"
namespace pipeswap::models { std::unique_ptr<Architecture> make_llama(const nlohmann::json&) { return nullptr; } }
