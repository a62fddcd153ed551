#include "pipeswap/models/wan_repo.h"

#include <dirent.h>
#include <sys/stat.h>

#include <fstream>
#include <memory>
#include <sstream>

#include "pickles.h"
#include "pipeswap/core/error.h"
#include "wan.h"

namespace pipeswap::models {
namespace {

using nlohmann::json;

constexpr const char* kLayout =
    "a Wan2.1 text-to-video repo in the diffusers layout (e.g. Wan-AI/Wan2.1-T2V-14B-Diffusers: model_index.json, "
    "tokenizer/, text_encoder/, transformer/, vae/, scheduler/)";

bool exists(const std::string& path, bool want_dir) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && (want_dir ? S_ISDIR(st.st_mode) : S_ISREG(st.st_mode));
}

std::string join(const std::string& dir, const std::string& name) {
  return !dir.empty() && dir.back() == '/' ? dir + name : dir + "/" + name;
}

// A small JSON file, or null when it is missing or not JSON (the caller says what that means).
json read_json(const std::string& path) {
  std::ifstream in(path);
  if (!in.good()) return nullptr;
  try {
    return json::parse(in);
  } catch (const json::exception&) {
    return nullptr;
  }
}

bool any_pickle(const std::string& dir) {
  std::unique_ptr<DIR, int (*)(DIR*)> d(::opendir(dir.c_str()), ::closedir);
  if (!d) return false;
  while (const dirent* e = ::readdir(d.get()))
    if (is_pickle_name(e->d_name)) return true;
  return false;
}

// model_index.json's entry for a component: ["library", "Class"], [null, null] when the pipeline has none.
bool listed(const json& index, const char* component) {
  const auto it = index.find(component);
  return it != index.end() && it->is_array() && !it->empty() && !it->at(0).is_null();
}

}  // namespace

ModelFolder classify_model_folder(const std::string& dir) {
  if (!exists(dir, true)) return ModelFolder::kMissing;
  if (exists(join(dir, "model_index.json"), false)) return ModelFolder::kWanDiffusersRepo;
  const json config = read_json(join(dir, "config.json"));
  if (config.is_object() && is_wan_config(config))
    return any_pickle(dir) ? ModelFolder::kWanOriginalRepo : ModelFolder::kDiffusionTransformer;
  if (any_pickle(dir)) return ModelFolder::kWanOriginalRepo;
  if (config.is_object() && (config.contains("model_type") || config.contains("architectures")))
    return ModelFolder::kLanguageModel;
  return ModelFolder::kOther;
}

WanRepo WanRepo::open(const std::string& dir) {
  switch (classify_model_folder(dir)) {
    case ModelFolder::kMissing:
      PS_THROW(CheckpointError, "model folder '{}' does not exist: pass --model DIR with {}", dir, kLayout);
    case ModelFolder::kWanOriginalRepo:
      PS_THROW(CheckpointError,
               "'{}' is Wan2.1's original layout (its text encoder and VAE are pickled .pth files): pipeswap never "
               "unpickles; download {}",
               dir, kLayout);
    case ModelFolder::kDiffusionTransformer:
      PS_THROW(CheckpointError,
               "'{}' holds a Wan DiT alone: generate needs the whole repo, {}. To sample this DiT with text embeddings "
               "you made yourself, use `pipeswap denoise --model {} --latents ... --context ...`",
               dir, kLayout, dir);
    case ModelFolder::kLanguageModel:
    case ModelFolder::kOther:
      PS_THROW(CheckpointError, "'{}' has no model_index.json: generate takes {}", dir, kLayout);
    case ModelFolder::kWanDiffusersRepo:
      break;
  }
  WanRepo repo;
  repo.dir = dir;
  const std::string index_path = join(dir, "model_index.json");
  repo.model_index = read_json(index_path);
  PS_CHECK(repo.model_index.is_object(), CheckpointError,
           "'{}' is not a JSON object: re-download the repo ({})", index_path, kLayout);
  const json& index = repo.model_index;
  const std::string cls = index.value("_class_name", std::string());
  PS_CHECK(cls != "WanImageToVideoPipeline", CheckpointError,
           "'{}' is a Wan image-to-video repo ({}): `pipeswap generate` runs text-to-video only so far; sample its "
           "transformer/ with `pipeswap denoise --image-cond ... --clip-fea ...`",
           dir, cls);
  PS_CHECK(cls == "WanPipeline", CheckpointError,
           "'{}': model_index.json's _class_name is '{}', not WanPipeline: generate takes {}", index_path, cls, kLayout);
  PS_CHECK(!listed(index, "transformer_2") && (!index.contains("boundary_ratio") || index["boundary_ratio"].is_null()),
           CheckpointError,
           "'{}' is a Wan2.2 two-expert repo (transformer_2, boundary_ratio): pipeswap generate runs Wan2.1 "
           "text-to-video repos",
           dir);
  PS_CHECK(!index.value("expand_timesteps", false), CheckpointError,
           "'{}' is a Wan2.2 TI2V repo (expand_timesteps): pipeswap generate runs Wan2.1 text-to-video repos", dir);
  struct Part {
    const char* name;
    std::string* folder;
    const char* holds;
  };
  const Part parts[] = {
      {"tokenizer", &repo.tokenizer, "spiece.model"},
      {"text_encoder", &repo.text_encoder, "config.json and model-*.safetensors"},
      {"transformer", &repo.transformer, "config.json and diffusion_pytorch_model*.safetensors"},
      {"vae", &repo.vae, "config.json and diffusion_pytorch_model.safetensors"},
      {"scheduler", &repo.scheduler, "scheduler_config.json"},
  };
  for (const Part& p : parts) {
    *p.folder = join(dir, p.name);
    PS_CHECK(exists(*p.folder, true), CheckpointError,
             "repo '{}' lacks its {}/ folder ({}): is the download complete? generate takes {}", dir, p.name, p.holds,
             kLayout);
    refuse_pickles(*p.folder, std::string(p.name) + "/", fmt::format("the {}/ folder of {}", p.name, kLayout));
  }
  return repo;
}

}  // namespace pipeswap::models
