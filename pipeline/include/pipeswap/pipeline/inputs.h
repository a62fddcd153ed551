// The forward job's input: token-id sequences from JSON or safetensors.
#pragma once

#include <torch/types.h>

#include <string>

namespace pipeswap::pipeline {

// Accepts a JSON file holding [[ids...], ...], [ids...] (one sequence) or {"input_ids": ...}, or a
// safetensors file with an integer tensor "input_ids" of shape [T] or [B, T]. Returns int64 [B, T].
// Throws IoError (missing / unreadable file) or ConfigError (malformed content) naming the file and
// what is wrong: sequences of different lengths, negative or non-integer ids, empty input.
torch::Tensor read_token_input(const std::string& path);

// Throws IoError when `path` cannot be written: its directory is missing or not writable. Checked
// before any work so a bad --output fails in a second, not after the whole run.
void check_output_path(const std::string& path);

}  // namespace pipeswap::pipeline
