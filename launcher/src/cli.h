// Command line and config files -> Options.
#pragma once

#include <optional>

#include "options.h"

namespace pipeswap::launcher {

// Parses argv (and a --config JSON file if given; flags on the command line win). Returns nullopt
// after printing help or a version; throws ConfigError for anything malformed, naming it.
std::optional<Options> parse_command_line(int argc, char** argv);

}  // namespace pipeswap::launcher
