#include "command_words.h"

#include <algorithm>
#include <cctype>
#include <filesystem>

#include "pipeswap/core/error.h"

namespace pipeswap::launcher {
namespace {

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

bool boolean_word(const std::string& s) {
  static const char* const kWords[] = {"true", "false", "1", "0", "yes", "no", "on", "off"};
  const std::string l = lower(s);
  return std::any_of(std::begin(kWords), std::end(kWords), [&](const char* w) { return l == w; });
}

// Optimal string alignment distance: insertions, deletions, substitutions and swaps of adjacent
// characters ("devcie" is one edit from "device").
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1, 0));
  for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[a.size()][b.size()];
}

// Long flag names of a command ("--device-chain"), hidden ones included: they are accepted.
std::vector<std::string> flags_of(const CLI::App& cmd) {
  std::vector<std::string> out;
  for (const CLI::Option* opt : cmd.get_options()) {
    for (const std::string& n : opt->get_lnames()) out.push_back("--" + n);
  }
  return out;
}

const CLI::Option* flag_option(const CLI::App& cmd, const std::string& arg) {
  if (arg.size() < 3 || arg.compare(0, 2, "--") != 0) return nullptr;
  const CLI::Option* opt = cmd.get_option_no_throw(arg);
  return (opt != nullptr && opt->get_expected_max() == 0) ? opt : nullptr;
}

}  // namespace

std::string nearest_word(const std::string& word, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_d = std::string::npos;
  for (const std::string& c : candidates) {
    const size_t d = edit_distance(lower(word), lower(c));
    if (d < best_d) {
      best_d = d;
      best = c;
    }
  }
  // Close enough to be a typo: a third of the word's letters at most (and at least two edits allowed).
  const size_t allowed = std::max<size_t>(2, word.size() / 3);
  return best_d <= allowed ? best : std::string();
}

std::vector<std::string> join_boolean_values(const CLI::App& app, std::vector<std::string> args) {
  if (args.empty()) return args;
  const CLI::App* cmd = nullptr;
  for (const CLI::App* sub : app.get_subcommands([](const CLI::App*) { return true; }))
    if (sub->get_name() == args[0]) cmd = sub;
  if (cmd == nullptr) return args;
  std::vector<std::string> out{args[0]};
  for (size_t i = 1; i < args.size(); ++i) {
    const CLI::Option* flag = flag_option(*cmd, args[i]);
    if (flag != nullptr && i + 1 < args.size() && !args[i + 1].empty() && args[i + 1][0] != '-') {
      PS_CHECK(boolean_word(args[i + 1]), ConfigError, "{} is true or false, not '{}': write {} false, {}=false or {}",
               args[i], args[i + 1], args[i], args[i], args[i]);
      out.push_back(args[i] + "=" + lower(args[i + 1]));
      ++i;
      continue;
    }
    out.push_back(args[i]);
  }
  return out;
}

void reject_command(const CLI::App& app, const std::string& word) {
  std::vector<std::string> names;
  for (const CLI::App* sub : app.get_subcommands([](const CLI::App*) { return true; }))
    names.push_back(sub->get_name());
  const std::string list = fmt::format("{}", fmt::join(names, ", "));
  if (!word.empty() && word[0] == '-') {
    PS_THROW(ConfigError, "give a command before the flags: pipeswap {{{}}} {} ... (see pipeswap --help)",
             fmt::join(names, "|"), word);
  }
  const std::string near = nearest_word(word, names);
  PS_THROW(ConfigError, "unknown command '{}'{} (commands: {}; see pipeswap --help)", word,
           near.empty() ? "" : fmt::format(": did you mean {}?", near), list);
}

void reject_extras(const CLI::App& app, const CLI::App& cmd) {
  const std::vector<std::string> extras = cmd.remaining();
  if (extras.empty()) return;
  const std::string& first = extras.front();
  const std::string name = cmd.get_name();
  if (!first.empty() && first[0] == '-') {
    const std::string flag = first.substr(0, first.find('='));
    for (const CLI::App* other : app.get_subcommands([](const CLI::App*) { return true; })) {
      if (other != &cmd && other->get_option_no_throw(flag) != nullptr) {
        PS_THROW(ConfigError, "{} is a flag of `pipeswap {}`, not of `pipeswap {}` (see pipeswap {} --help)", flag,
                 other->get_name(), name, name);
      }
    }
    // "-device-chain" and "--devcie-chain" alike: compare without the dashes, suggest with two.
    const size_t letters = flag.find_first_not_of('-');
    const std::string bare = letters == std::string::npos ? std::string() : flag.substr(letters);
    std::vector<std::string> bare_flags;
    for (const std::string& f : flags_of(cmd)) bare_flags.push_back(f.substr(2));
    const std::string near = nearest_word(bare, bare_flags);
    PS_THROW(ConfigError, "unknown flag {} for `pipeswap {}`{} (see pipeswap {} --help)", flag, name,
             near.empty() ? "" : fmt::format(": did you mean --{}?", near), name);
  }
  std::error_code ec;
  const bool path_like = first.find('/') != std::string::npos || std::filesystem::exists(first, ec);
  if (path_like && cmd.get_option_no_throw("--model") != nullptr) {
    PS_THROW(ConfigError,
             "unexpected argument '{}' for `pipeswap {}`: did you mean --model {}? (a checkpoint is given with "
             "--model DIR)",
             first, name, first);
  }
  PS_THROW(ConfigError, "unexpected argument '{}' for `pipeswap {}`: flags start with -- (see pipeswap {} --help)",
           first, name, name);
}

}  // namespace pipeswap::launcher
