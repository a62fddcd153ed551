#include "pickles.h"

#include <dirent.h>
#include <sys/stat.h>

#include <memory>

#include "pipeswap/core/error.h"

namespace pipeswap::models {
namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

constexpr const char* kNeverUnpickles =
    "pipeswap never unpickles: use the diffusers layout of the Wan repo (e.g. Wan-AI/Wan2.1-T2V-14B-Diffusers: "
    "model_index.json, tokenizer/, text_encoder/, transformer/, vae/, scheduler/, weights in safetensors)";

}  // namespace

bool is_pickle_name(const std::string& name) {
  return ends_with(name, ".pth") || ends_with(name, ".pt") || ends_with(name, ".bin") || ends_with(name, ".ckpt") ||
         ends_with(name, ".pkl");
}

void refuse_pickles(const std::string& path, const std::string& component, const std::string& folder_hint) {
  struct stat st {};
  PS_CHECK(::stat(path.c_str(), &st) == 0, CheckpointError, "{} folder '{}' does not exist: pass {}", component, path,
           folder_hint);
  PS_CHECK(!(S_ISREG(st.st_mode) && is_pickle_name(path)), CheckpointError, "{} '{}' is a pickled PyTorch file: {}",
           component, path, kNeverUnpickles);
  PS_CHECK(S_ISDIR(st.st_mode), CheckpointError, "{} '{}' is not a folder: pass {}", component, path, folder_hint);
  std::unique_ptr<DIR, int (*)(DIR*)> d(::opendir(path.c_str()), ::closedir);
  if (!d) return;  // Checkpoint::open says what is wrong
  std::string pickle;
  bool safetensors = false;
  while (const dirent* e = ::readdir(d.get())) {
    const std::string name = e->d_name;
    safetensors = safetensors || ends_with(name, ".safetensors");
    if (pickle.empty() && is_pickle_name(name)) pickle = name;
  }
  PS_CHECK(safetensors || pickle.empty(), CheckpointError, "{} folder '{}' holds the pickled '{}' and no safetensors: {}",
           component, path, pickle, kNeverUnpickles);
}

}  // namespace pipeswap::models
