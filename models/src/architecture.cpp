#include "pipeswap/models/architecture.h"

#include "pipeswap/core/error.h"
#include "llama.h"

namespace pipeswap::models {

void WeightView::add(const std::string& local, torch::Tensor t) { items_.emplace_back(local, std::move(t)); }

const torch::Tensor* WeightView::find(const std::string& local) const {
  for (const auto& [name, t] : items_)
    if (name == local) return &t;
  return nullptr;
}

const torch::Tensor& WeightView::operator[](const std::string& local) const {
  const torch::Tensor* t = find(local);
  PS_CHECK(t != nullptr, Error, "weight '{}' is not in this part's view (architecture declaration bug)", local);
  return *t;
}

std::vector<PartSpec> block_parts(const Architecture& arch, int block) {
  std::vector<PartSpec> parts;
  auto phases = arch.phase_names();
  for (int p = 0; p < static_cast<int>(phases.size()); ++p) {
    parts.push_back(PartSpec{fmt::format("blocks.{}.{}", block, phases[p]), arch.phase_tensors(block, p)});
  }
  return parts;
}

std::unique_ptr<Architecture> make_architecture(const nlohmann::json& config) {
  std::string type = config.value("model_type", "");
  if (type == "llama" || type == "qwen2" || type == "mistral") return make_llama(config);
  PS_THROW(CheckpointError,
           "config.json model_type '{}' is not supported: pipeswap runs llama, qwen2 and mistral "
           "(HF layout) checkpoints",
           type);
}

}  // namespace pipeswap::models
