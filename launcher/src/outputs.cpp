#include "outputs.h"

#include <sys/stat.h>

#include <filesystem>
#include <optional>
#include <utility>

#include "pipeswap/core/error.h"
#include "pipeswap/core/log.h"

namespace pipeswap::launcher {
namespace fs = std::filesystem;
namespace {

// The file a path names after every symlink: (device, inode); unset when there is none.
std::optional<std::pair<dev_t, ino_t>> file_id(const std::string& path) {
  struct stat st {};
  if (path.empty() || ::stat(path.c_str(), &st) != 0) return std::nullopt;
  return std::make_pair(st.st_dev, st.st_ino);
}

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

}  // namespace

std::vector<JobFile> job_inputs(const Options& o, const std::string& model_dir) {
  std::vector<JobFile> in;
  // The checkpoint's files, and those one folder down (a diffusers repo keeps its weights in
  // transformer/, vae/, text_encoder/, ...).
  std::error_code ec;
  for (fs::directory_iterator it(model_dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->is_regular_file(ec)) {
      in.push_back({"a file of the --model checkpoint", it->path().string()});
    } else if (it->is_directory(ec)) {
      std::error_code sub_ec;
      for (fs::directory_iterator sub(it->path(), sub_ec), sub_end; !sub_ec && sub != sub_end; sub.increment(sub_ec))
        if (sub->is_regular_file(sub_ec)) in.push_back({"a file of the --model checkpoint", sub->path().string()});
    }
  }
  const std::pair<const char*, const std::string*> flags[] = {
      {"--input", &o.input},           {"--latents", &o.latents},
      {"--context", &o.context},       {"--context-null", &o.context_null},
      {"--image-cond", &o.image_cond}, {"--clip-fea", &o.clip_fea},
      {"--prompts", &o.prompts_file},  {"--prompt-ids", &o.prompt_ids},
      {"--config", &o.config}};
  for (const auto& [flag, path] : flags)
    if (!path->empty()) in.push_back({std::string("the ") + flag + " file", *path});
  return in;
}

std::vector<JobFile> job_outputs(const Options& o) {
  std::vector<JobFile> out;
  if (o.command == "plan") {
    if (!o.json.empty()) out.push_back({"--json", o.json});
    return out;
  }
  out.push_back({"--output", o.output});
  if (!o.save_latents.empty()) out.push_back({"--save-latents", o.save_latents});
  if (!o.trace.empty()) out.push_back({"--trace", o.trace});
  return out;
}

void check_outputs_are_not_inputs(const std::vector<JobFile>& outputs, const std::vector<JobFile>& inputs) {
  for (size_t i = 0; i < outputs.size(); ++i) {
    const JobFile& out = outputs[i];
    const auto id = file_id(out.path);
    if (!id) continue;  // a file that does not exist yet is no input
    for (const JobFile& in : inputs) {
      PS_CHECK(file_id(in.path) != id, ConfigError,
               "{} {} is {} ({}): writing it would destroy an input of the job; choose another {}", out.what,
               out.path, in.what, in.path, out.what);
    }
    for (size_t j = 0; j < i; ++j) {
      PS_CHECK(file_id(outputs[j].path) != id, ConfigError, "{} {} and {} {} are the same file: give each its own",
               outputs[j].what, outputs[j].path, out.what, out.path);
    }
  }
  // Two outputs that do not exist yet but are spelled alike.
  for (size_t i = 0; i < outputs.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      std::error_code ec1, ec2;
      // Absolute first: weakly_canonical keeps a relative name that does not exist yet as written.
      const fs::path a = fs::weakly_canonical(fs::absolute(outputs[i].path, ec1), ec1);
      const fs::path b = fs::weakly_canonical(fs::absolute(outputs[j].path, ec2), ec2);
      PS_CHECK(ec1 || ec2 || a != b, ConfigError, "{} {} and {} {} are the same file: give each its own",
               outputs[j].what, outputs[j].path, outputs[i].what, outputs[i].path);
    }
  }
}

void warn_unexpected_extension(const JobFile& file, const std::string& extension, const std::string& format) {
  if (file.path.empty() || ends_with(file.path, extension)) return;
  log().warn("{} {}: pipeswap writes {} there, but the name does not end in {}", file.what, file.path, format,
             extension);
}

void check_job_files(const Options& o, const std::string& model_dir) {
  const std::vector<JobFile> outputs = job_outputs(o);
  check_outputs_are_not_inputs(outputs, job_inputs(o, model_dir));
  for (const JobFile& f : outputs) {
    // generate's --output names its format by its extension (video_output.h checks it).
    if (f.what == "--output" && o.command != "generate") warn_unexpected_extension(f, ".safetensors", "safetensors");
    if (f.what == "--trace") warn_unexpected_extension(f, ".json", "a JSON timeline");
    if (f.what == "--save-latents") warn_unexpected_extension(f, ".safetensors", "safetensors");
    if (f.what == "--json") warn_unexpected_extension(f, ".json", "the plan as JSON");
  }
}

}  // namespace pipeswap::launcher
