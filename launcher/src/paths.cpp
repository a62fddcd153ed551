// The files a job writes (--output, --trace, plan --json) against each other and against every file
// it reads: a target that is also an input would destroy it, and two targets that are one file
// would keep only the last written.
#include <sys/stat.h>

#include <filesystem>
#include <optional>
#include <utility>

#include "job.h"
#include "pipeswap/core/error.h"

namespace pipeswap::launcher {
namespace {

struct NamedPath {
  std::string what;  // "--output", "the model's config.json", ...
  std::string path;
};

// The same file: by device and inode where both exist (hard links, symlinks, ./x and x), else by the
// path with symlinks of its existing directories resolved.
bool same_file(const std::string& a, const std::string& b) {
  struct stat sa {}, sb {};
  const bool ea = ::stat(a.c_str(), &sa) == 0, eb = ::stat(b.c_str(), &sb) == 0;
  if (ea && eb) return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
  if (ea != eb) return false;
  std::error_code ec1, ec2;
  const auto ca = std::filesystem::weakly_canonical(std::filesystem::absolute(a), ec1);
  const auto cb = std::filesystem::weakly_canonical(std::filesystem::absolute(b), ec2);
  return !ec1 && !ec2 && ca == cb;
}

}  // namespace

void check_output_paths(const Options& o, const Job& job) {
  std::vector<NamedPath> outputs;
  if (o.command == "plan") {
    if (!o.json.empty()) outputs.push_back({"--json", o.json});
  } else {
    outputs.push_back({"--output", o.output});
    if (!o.trace.empty()) outputs.push_back({"--trace", o.trace});
  }
  std::vector<NamedPath> inputs;
  for (const auto& [flag, path] : {std::pair<const char*, const std::string&>{"--input", o.input},
                                   {"--config", o.config},
                                   {"--latents", o.latents},
                                   {"--context", o.context},
                                   {"--context-null", o.context_null},
                                   {"--image-cond", o.image_cond},
                                   {"--clip-fea", o.clip_fea}}) {
    if (!path.empty()) inputs.push_back({flag, path});
  }
  const std::string dir = job.ckpt->dir() + "/";
  inputs.push_back({"the model's config.json", dir + "config.json"});
  for (const char* index : {"model.safetensors.index.json", "diffusion_pytorch_model.safetensors.index.json"})
    inputs.push_back({"the model's checkpoint index", dir + index});
  for (const auto& [tensor, shard] : job.ckpt->weight_map()) {
    if (inputs.back().path != dir + shard) inputs.push_back({"a weight file of the model", dir + shard});
  }
  for (size_t i = 0; i < outputs.size(); ++i) {
    for (size_t j = i + 1; j < outputs.size(); ++j) {
      PS_CHECK(!same_file(outputs[i].path, outputs[j].path), ConfigError,
               "{} and {} name the same file ({}): each output needs a file of its own", outputs[i].what,
               outputs[j].what, outputs[i].path);
    }
    for (const auto& in : inputs) {
      PS_CHECK(!same_file(outputs[i].path, in.path), ConfigError,
               "{} {} is also {} ({}): writing it would destroy an input of the job; name another file",
               outputs[i].what, outputs[i].path, in.what, in.path);
    }
  }
}

}  // namespace pipeswap::launcher
