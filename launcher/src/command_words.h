// What the command-line parser (CLI11) does not do for users: a boolean written `--flag false` as
// well as `--flag=false`, and for a word it does not know, what was probably meant (the nearest
// flag, the command a flag belongs to, --model for a bare checkpoint path).
#pragma once

#include <CLI/CLI.hpp>

#include <string>
#include <vector>

namespace pipeswap::launcher {

// args: the command line after the program name, subcommand first. Joins `--flag VALUE` into
// `--flag=VALUE` for every boolean flag of the subcommand when VALUE is a boolean word (true, false,
// 1, 0, yes, no, on, off); throws ConfigError for a boolean flag followed by another plain word.
std::vector<std::string> join_boolean_values(const CLI::App& app, std::vector<std::string> args);

// A word that is no command: throws ConfigError naming it and the nearest command.
[[noreturn]] void reject_command(const CLI::App& app, const std::string& word);

// The words CLI11 left over in `cmd` (allow_extras): throws ConfigError naming the first one and
// what the user may have meant. Returns when there are none.
void reject_extras(const CLI::App& app, const CLI::App& cmd);

// The candidate nearest to `word` by edit distance (adjacent swaps count as one edit), or "" when none
// is close enough to suggest.
std::string nearest_word(const std::string& word, const std::vector<std::string>& candidates);

}  // namespace pipeswap::launcher
