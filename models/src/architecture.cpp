#include "pipeswap/models/architecture.h"

#include "pipeswap/core/error.h"
#include "pipeswap/core/fp8.h"
#include "llama.h"
#include "wan.h"

#include <set>

namespace pipeswap::models {

std::unique_ptr<Architecture> make_architecture(const nlohmann::json& config) {
  PS_CHECK(config.is_object(), CheckpointError, "config.json must hold a JSON object, got {}", config.type_name());
  if (is_wan_config(config)) return make_wan(config);
  const auto it = config.find("model_type");
  const std::string type = it != config.end() && it->is_string() ? it->get<std::string>() : "";
  if (type == "llama" || type == "qwen2" || type == "mistral") return make_llama(config);
  PS_THROW(CheckpointError,
           "config.json model_type '{}' is not supported: pipeswap runs llama, qwen2 and mistral (Hugging Face "
           "layout) and Wan2.1 DiT (original or diffusers WanTransformer3DModel layout) checkpoints",
           type);
}

void check_checkpoint_tensors(const Architecture& arch, const Checkpoint& ckpt) {
  std::set<std::string> declared;
  auto add = [&](const std::vector<PartSpec>& parts) {
    for (const auto& p : parts)
      for (const auto& t : p.tensors) declared.insert(t.checkpoint);
  };
  add(arch.prologue_parts());
  add(arch.epilogue_parts());
  for (int b = 0; b < arch.num_blocks(); ++b) add(block_parts(arch, b));
  const auto names = ckpt.tensor_names();
  const std::set<std::string> present(names.begin(), names.end());
  std::vector<std::string> missing, unexpected;
  for (const auto& n : declared)
    if (!present.count(n)) missing.push_back(n);
  // fp8 scales ("<m>.scale_weight", "<weight>_scale", input scales) of declared weights, and ComfyUI's
  // "scaled_fp8" marker, belong to the weights (core/fp8.h reads or ignores them).
  auto fp8_aux = [&](const std::string& n) {
    const auto owner = fp8_aux_owner(n);
    return owner && (owner->empty() || declared.count(*owner));
  };
  for (const auto& n : names)
    if (!declared.count(n) && !arch.ignores_tensor(n) && !fp8_aux(n)) unexpected.push_back(n);
  PS_CHECK(missing.empty(), CheckpointError,
           "checkpoint {} lacks tensor '{}'{} that its config.json implies for a {} model with {} blocks: is the "
           "download complete, and is config.json from the same model?",
           ckpt.dir(), missing.front(), missing.size() > 1 ? fmt::format(" (and {} more)", missing.size() - 1) : "",
           arch.family(), arch.num_blocks());
  PS_CHECK(unexpected.empty(), CheckpointError,
           "checkpoint {} holds tensor '{}'{} that a {} model with {} blocks does not have: config.json and the "
           "weights disagree (another model size or family?)",
           ckpt.dir(), unexpected.front(),
           unexpected.size() > 1 ? fmt::format(" (and {} more)", unexpected.size() - 1) : "", arch.family(),
           arch.num_blocks());
}

}  // namespace pipeswap::models
