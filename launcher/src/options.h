// Everything the command line and config files set, in users' words (kebab-case flags,
// snake_case config keys).
#pragma once

#include <string>

namespace pipeswap::launcher {

struct Options {
  std::string command;  // "run" | "plan"
  std::string model;    // empty: the built-in demo model
  std::string input;    // empty with the demo model: the demo's built-in prompt batch
  std::string output = "logits.safetensors";
  std::string device_chain;  // empty: every rank on cpu with equal weights
  bool workload_split = true;
  bool auto_vram_balance = false;
  std::string dtype = "auto";
  int micro_batches = 1;
  double comm_timeout = 60;  // seconds
  int threads = 0;           // 0: cores of this node / ranks on it
  std::string log_level = "info";
  std::string json;  // plan --json FILE
};

}  // namespace pipeswap::launcher
