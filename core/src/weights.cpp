#include "pipeswap/core/weights.h"

#include <set>

#include "pipeswap/core/error.h"

namespace pipeswap {

void WeightView::add(const std::string& local, torch::Tensor t) { items_.push_back(Item{local, std::move(t), {}}); }

void WeightView::add_fp8(const std::string& local, Fp8Weight w) {
  PS_CHECK(w.format != Fp8Format::kNone && w.bytes.scalar_type() == torch::kUInt8, Error,
           "fp8 weight '{}' must be uint8 bytes with a format", local);
  items_.push_back(Item{local, {}, std::move(w)});
}

const WeightView::Item* WeightView::find(const std::string& local) const {
  for (const auto& it : items_)
    if (it.local == local) return &it;
  return nullptr;
}

bool WeightView::has(const std::string& local) const { return find(local) != nullptr; }

const WeightView::Fp8Weight* WeightView::fp8(const std::string& local) const {
  const Item* it = find(local);
  return it != nullptr && it->fp8.format != Fp8Format::kNone ? &it->fp8 : nullptr;
}

torch::Tensor WeightView::operator[](const std::string& local) const {
  const Item* it = find(local);
  PS_CHECK(it != nullptr, Error, "weight '{}' is not in this part's view (architecture declaration bug)", local);
  if (it->fp8.format == Fp8Format::kNone) return it->tensor;
  if (it->fp8.dequantised.defined()) return it->fp8.dequantised;
  return dequantize_fp8(it->fp8.bytes, it->fp8.format, it->fp8.scale, it->fp8.dtype);
}

std::vector<std::string> WeightView::fp8_names() const {
  std::vector<std::string> names;
  for (const auto& it : items_)
    if (it.fp8.format != Fp8Format::kNone) names.push_back(it.local);
  return names;
}

void WeightView::set_dequantised(const std::string& local, torch::Tensor value) {
  for (auto& it : items_) {
    if (it.local != local || it.fp8.format == Fp8Format::kNone) continue;
    PS_CHECK(value.sizes() == it.fp8.bytes.sizes() && value.scalar_type() == it.fp8.dtype, Error,
             "dequantised copy of '{}' is {} {}, the weight is {} {}", local, c10::toString(value.scalar_type()),
             shape_str(value), c10::toString(it.fp8.dtype), shape_str(it.fp8.bytes));
    it.fp8.dequantised = std::move(value);
    return;
  }
  PS_THROW(Error, "'{}' is not an fp8 weight of this view", local);
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

int64_t model_bytes(const ModelParts& model, c10::ScalarType dtype) {
  std::set<std::string> seen;
  int64_t bytes = 0;
  auto add = [&](const std::vector<PartSpec>& parts) {
    for (const auto& part : parts)
      for (const auto& t : part.tensors)
        if (seen.insert(t.checkpoint).second) bytes += tensor_bytes(t.shape, dtype);
  };
  add(model.prologue_parts());
  for (int b = 0; b < model.num_blocks(); ++b) add(block_parts(model, b));
  add(model.epilogue_parts());
  return bytes;
}

int64_t total_nbytes(const std::vector<torch::Tensor>& tensors) {
  int64_t n = 0;
  for (const auto& t : tensors)
    if (t.defined()) n += static_cast<int64_t>(t.nbytes());
  return n;
}

}  // namespace pipeswap
