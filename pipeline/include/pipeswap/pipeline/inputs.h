// The jobs' inputs: token-id sequences from JSON or safetensors; tensors from safetensors.
#pragma once

#include <torch/types.h>

#include <string>

namespace pipeswap::pipeline {

// Accepts a JSON file holding [[ids...], ...], [ids...] (one sequence) or {"input_ids": ...}, or a
// safetensors file with an integer tensor "input_ids" of shape [T] or [B, T]. Returns int64 [B, T].
// Throws IoError (missing / unreadable file) or ConfigError (malformed content) naming the file and
// what is wrong: sequences of different lengths, negative or non-integer ids, empty input.
torch::Tensor read_token_input(const std::string& path);

// A floating-point tensor for the denoise job (latents, text embeddings, ...) from a safetensors file:
// the tensor called `name`, or the file's only tensor. `batched_dim` is its rank with the batch axis
// (a tensor one axis short is one sample). Returns float32 on the CPU, batch first. Errors name the
// flag, the file and what is wrong.
torch::Tensor read_tensor_input(const std::string& path, const std::string& flag, const std::string& name,
                                int batched_dim);

// Throws IoError when `path` cannot be written: its directory is missing or not writable. Checked
// before any work so a bad --output fails in a second, not after the whole run.
void check_output_path(const std::string& path);

}  // namespace pipeswap::pipeline
