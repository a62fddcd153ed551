#include "pipeswap/offload/slab.h"

#include "pipeswap/core/dtype.h"
#include "pipeswap/core/error.h"

namespace pipeswap::offload {
namespace {
int64_t align_up(int64_t v, int64_t a) { return (v + a - 1) / a * a; }

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}
}  // namespace

SlabLayout make_layout(const models::PartSpec& part, c10::ScalarType dtype) {
  SlabLayout layout;
  layout.part = part.name;
  layout.dtype = dtype;
  int64_t off = 0;
  for (const auto& t : part.tensors) {
    SlabLayout::Entry e;
    e.local = t.local;
    e.checkpoint = t.checkpoint;
    e.shape = t.shape;
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    e.nbytes = n * static_cast<int64_t>(c10::elementSize(dtype));
    e.offset = off;
    off = align_up(off + e.nbytes, kSlabAlignment);
    layout.entries.push_back(std::move(e));
  }
  layout.bytes = std::max<int64_t>(off, kSlabAlignment);
  return layout;
}

void add_views(const SlabLayout& layout, const torch::Tensor& slab, models::WeightView& view) {
  for (const auto& e : layout.entries) {
    view.add(e.local, slab.narrow(0, e.offset, e.nbytes).view(layout.dtype).view(e.shape));
  }
}

void read_part(const Checkpoint& ckpt, const SlabLayout& layout, torch::Tensor& host_slab) {
  PS_CHECK(host_slab.device().is_cpu() && host_slab.numel() >= layout.bytes, Error,
           "read_part needs a CPU slab of {} bytes for {}", layout.bytes, layout.part);
  auto* base = static_cast<uint8_t*>(host_slab.data_ptr());
  for (const auto& e : layout.entries) {
    TensorLocation loc = ckpt.locate(e.checkpoint);
    const TensorInfo& info = *loc.info;
    PS_CHECK(info.shape == e.shape, CheckpointError,
             "tensor '{}' in {} has shape {} but config.json implies {}: the checkpoint does not match its "
             "config.json",
             e.checkpoint, loc.file->path(), shape_str(info.shape), shape_str(e.shape));
    const c10::ScalarType file_type = to_scalar_type(info.dtype);
    if (file_type == layout.dtype) {
      loc.file->read_into(info, base + e.offset);
    } else {
      PS_CHECK(c10::isFloatingType(file_type), CheckpointError,
               "tensor '{}' in {} is {} but a floating-point weight is expected", e.checkpoint, loc.file->path(),
               dtype_name(info.dtype));
      torch::Tensor tmp = torch::empty(info.shape, torch::TensorOptions().dtype(file_type));
      loc.file->read_into(info, tmp.data_ptr());
      host_slab.narrow(0, e.offset, e.nbytes).view(layout.dtype).view(e.shape).copy_(tmp);
    }
  }
}

}  // namespace pipeswap::offload
