#include "pipeswap/core/weights.h"

#include "pipeswap/core/error.h"

namespace pipeswap {

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

std::vector<PartSpec> block_parts(const ModelParts& model, int block) {
  std::vector<PartSpec> parts;
  const auto phases = model.phase_names();
  for (int p = 0; p < static_cast<int>(phases.size()); ++p) {
    parts.push_back(PartSpec{fmt::format("blocks.{}.{}", block, phases[p]), model.phase_tensors(block, p)});
  }
  return parts;
}

int64_t part_bytes(const PartSpec& part, c10::ScalarType dtype) {
  int64_t bytes = 0;
  for (const auto& t : part.tensors) bytes += tensor_bytes(t.shape, dtype);
  return bytes;
}

int64_t total_nbytes(const std::vector<torch::Tensor>& tensors) {
  int64_t n = 0;
  for (const auto& t : tensors)
    if (t.defined()) n += static_cast<int64_t>(t.nbytes());
  return n;
}

}  // namespace pipeswap
