// The files a job writes, checked on rank 0 before anything loads: none may be one of the job's
// inputs (the same file through a symlink or a hard link counts), nor another of its outputs; a name
// whose extension is not the format written gets a warning. (Issue 24's safe outputs extend this.)
#pragma once

#include <string>
#include <vector>

#include "options.h"

namespace pipeswap::launcher {

struct JobFile {
  std::string what;  // in users' words: "--input", "a file of the --model checkpoint"
  std::string path;
};

// The command's inputs (model files, input files, --config) and outputs (--output, --trace, --json).
// `model_dir`: the checkpoint directory (the demo's when --model is not given).
std::vector<JobFile> job_inputs(const Options& o, const std::string& model_dir);
std::vector<JobFile> job_outputs(const Options& o);

// Throws ConfigError naming the output and the input (or other output) it is.
void check_outputs_are_not_inputs(const std::vector<JobFile>& outputs, const std::vector<JobFile>& inputs);

// Warns when `file`'s name does not end in `extension` (".safetensors"), the `format` written there.
void warn_unexpected_extension(const JobFile& file, const std::string& extension, const std::string& format);

// Both, for the command `o` describes.
void check_job_files(const Options& o, const std::string& model_dir);

}  // namespace pipeswap::launcher
