#include "pipeswap/core/checkpoint.h"

#include <cstring>

#include <sys/stat.h>

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>

#include "pipeswap/core/checkpoint_index.h"
#include "pipeswap/core/error.h"
#include "pipeswap/core/log.h"

namespace pipeswap {
namespace {

using nlohmann::json;

// Weight file stems: transformers' "model", diffusers' (and Wan2.1's) "diffusion_pytorch_model".
constexpr const char* kStems[] = {"model", "diffusion_pytorch_model"};
constexpr const char* kConfigFile = "config.json";

bool is_regular_file(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string join_path(const std::string& dir, const std::string& name) {
  return !dir.empty() && dir.back() == '/' ? dir + name : dir + "/" + name;
}

// The text of a small file (config.json, the index); `what` says what the file is for in messages.
std::string read_text_file(const std::string& path, const char* what) {
  PS_CHECK(is_regular_file(path), CheckpointError,
           "{} '{}' is missing: a Hugging Face checkpoint directory needs config.json and model.safetensors (or "
           "model.safetensors.index.json with its shards)",
           what, path);
  std::ifstream in(path, std::ios::binary);
  PS_CHECK(in.good(), CheckpointError, "cannot read {} '{}': check its permissions", what, path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

json read_json_file(const std::string& path, const char* what) {
  const std::string text = read_text_file(path, what);
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    PS_THROW(CheckpointError, "{} '{}' is not valid JSON ({}): re-download the checkpoint or fix the file", what, path,
             e.what());
  }
}

}  // namespace

std::shared_ptr<Checkpoint> Checkpoint::open(const std::string& dir) {
  struct stat st {};
  const bool exists = ::stat(dir.c_str(), &st) == 0;
  if (exists && !S_ISDIR(st.st_mode)) {
    // A weight file or config.json given for the directory that holds it.
    const auto slash = dir.find_last_of('/');
    PS_THROW(CheckpointError,
             "--model {} is a file, not a directory: give the checkpoint's directory, the one holding config.json and "
             "the .safetensors files (--model {})",
             dir, slash == std::string::npos ? std::string(".") : dir.substr(0, std::max<size_t>(slash, 1)));
  }
  PS_CHECK(exists, CheckpointError,
           "model directory '{}' does not exist: pass --model DIR with a Hugging Face checkpoint (config.json + "
           "model.safetensors)",
           dir);
  // The constructor is private, so make_shared cannot reach it; the pointer is owned at once.
  std::shared_ptr<Checkpoint> ck(new Checkpoint());
  ck->dir_ = dir;

  const std::string config_path = join_path(dir, kConfigFile);
  ck->config_ = read_json_file(config_path, "model config");
  PS_CHECK(ck->config_.is_object(), CheckpointError,
           "model config '{}' is JSON but not an object (it is {}): re-download the checkpoint or fix the file",
           config_path, ck->config_.type_name());

  std::string index_path, single_path, single_name;
  for (const char* stem : kStems) {
    if (index_path.empty() && is_regular_file(join_path(dir, fmt::format("{}.safetensors.index.json", stem))))
      index_path = join_path(dir, fmt::format("{}.safetensors.index.json", stem));
    if (single_path.empty() && is_regular_file(join_path(dir, fmt::format("{}.safetensors", stem)))) {
      single_name = fmt::format("{}.safetensors", stem);
      single_path = join_path(dir, single_name);
    }
  }
  if (!index_path.empty()) {
    ck->weight_map_ = parse_checkpoint_index(index_path, read_text_file(index_path, "checkpoint index"));
    std::set<std::string> files;
    for (const auto& [tensor, file] : ck->weight_map_) files.insert(file);
    // Check every shard is present now, so a partial download fails at start-up and not mid-run.
    for (const std::string& name : files) {
      PS_CHECK(is_regular_file(join_path(dir, name)), CheckpointError,
               "checkpoint shard '{}' listed in '{}' is missing from '{}' ({} shards listed): the download is "
               "incomplete; re-download the checkpoint",
               name, index_path, dir, files.size());
    }
    log().debug("checkpoint '{}': {} tensors in {} shards", dir, ck->weight_map_.size(), files.size());
  } else if (!single_path.empty()) {
    auto file = SafetensorsFile::open(single_path);
    for (const TensorInfo& t : file->tensors()) ck->weight_map_[t.name] = single_name;
    ck->shards_[single_name] = std::move(file);
    log().debug("checkpoint '{}': {} tensors in one file", dir, ck->weight_map_.size());
  } else {
    PS_THROW(CheckpointError,
             "model directory '{}' has neither model.safetensors nor model.safetensors.index.json (nor diffusers' "
             "diffusion_pytorch_model.safetensors[.index.json]): pass --model DIR with a Hugging Face or diffusers "
             "checkpoint",
             dir);
  }
  return ck;
}

bool Checkpoint::has(const std::string& tensor) const { return weight_map_.count(tensor) != 0; }

bool Checkpoint::has_fp8_scales() const {
  auto ends = [](const std::string& s, const char* t) {
    const size_t n = std::strlen(t);
    return s.size() >= n && s.compare(s.size() - n, n, t) == 0;
  };
  for (const auto& [name, file] : weight_map_)
    if (name == "scaled_fp8" || ends(name, ".scale_weight") || ends(name, ".weight_scale")) return true;
  return false;
}

std::shared_ptr<const SafetensorsFile> Checkpoint::shard(const std::string& file) const {
  // Held while opening, so two threads asking for the same shard open it once.
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = shards_.find(file);
  if (it != shards_.end()) return it->second;
  auto opened = SafetensorsFile::open(join_path(dir_, file));
  shards_.emplace(file, opened);
  return opened;
}

TensorLocation Checkpoint::locate(const std::string& tensor) const {
  auto it = weight_map_.find(tensor);
  PS_CHECK(it != weight_map_.end(), CheckpointError,
           "tensor '{}' is not in the checkpoint '{}' ({} tensors): does --model point at the right model?", tensor,
           dir_, weight_map_.size());
  TensorLocation loc;
  loc.file = shard(it->second);
  loc.info = loc.file->find(tensor);
  PS_CHECK(loc.info != nullptr, CheckpointError,
           "checkpoint index in '{}' puts tensor '{}' in shard '{}', but that shard's header does not list it: the "
           "index and shards disagree; re-download the checkpoint",
           dir_, tensor, it->second);
  return loc;
}

std::vector<std::string> Checkpoint::tensor_names() const {
  std::vector<std::string> names;
  names.reserve(weight_map_.size());
  for (const auto& [name, file] : weight_map_) names.push_back(name);
  return names;
}

std::vector<std::string> Checkpoint::opened_files() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<std::string> files;
  for (const auto& [name, file] : shards_) files.push_back(name);
  return files;
}

uint64_t Checkpoint::bytes_read() const {
  std::lock_guard<std::mutex> lock(mutex_);
  uint64_t total = 0;
  for (const auto& [name, file] : shards_) total += file->bytes_read();
  return total;
}

}  // namespace pipeswap
