// Command line and config files -> Options.
#pragma once

#include <optional>

#include "options.h"

namespace pipeswap::launcher {

// Parses argv (and a --config JSON file if given; flags on the command line win). Returns nullopt
// after printing help or a version (only where `print_help`: one rank of a job prints it); throws
// ConfigError for anything malformed, naming it and, for a word it does not know, what was probably meant.
std::optional<Options> parse_command_line(int argc, char** argv, bool print_help = true);

}  // namespace pipeswap::launcher
