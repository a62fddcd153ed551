#include "pipeswap/offload/slab.h"

#include <algorithm>
#include <memory>
#include <utility>
#include <vector>

#include "pipeswap/core/dtype.h"
#include "pipeswap/core/error.h"
#include "pipeswap/core/shape.h"

namespace pipeswap::offload {

SlabLayout make_layout(const PartSpec& part, c10::ScalarType dtype) {
  SlabLayout layout;
  layout.part = part.name;
  layout.dtype = dtype;
  int64_t off = 0;
  for (const auto& t : part.tensors) {
    SlabLayout::Entry e;
    e.local = t.local;
    e.checkpoint = t.checkpoint;
    e.shape = t.shape;
    e.nbytes = tensor_bytes(t.shape, dtype);
    e.offset = off;
    off = align_up(off + e.nbytes, kSlabAlignment);
    layout.entries.push_back(std::move(e));
  }
  layout.bytes = std::max<int64_t>(off, kSlabAlignment);
  return layout;
}

torch::Tensor entry_view(const SlabLayout& layout, const SlabLayout::Entry& e, const torch::Tensor& slab) {
  return slab.narrow(0, e.offset, e.nbytes).view(layout.dtype).view(e.shape);
}

void add_views(const SlabLayout& layout, const torch::Tensor& slab, WeightView& view) {
  for (const auto& e : layout.entries) view.add(e.local, entry_view(layout, e, slab));
}

void read_part(const Checkpoint& ckpt, const SlabLayout& layout, torch::Tensor& host_slab) {
  PS_CHECK(host_slab.device().is_cpu() && host_slab.numel() >= layout.bytes, Error,
           "read_part needs a CPU slab of {} bytes for {}", layout.bytes, layout.part);
  auto* base = static_cast<uint8_t*>(host_slab.data_ptr());
  // Tensors already in the slab's dtype go straight into the slab with one read_many per shard, so
  // the disk sees a few large requests instead of one small read per tensor. A part's tensors can
  // live in several shards; the list keeps shards in first-use order (a part touches one or two).
  std::vector<std::pair<std::shared_ptr<const SafetensorsFile>, std::vector<ReadRequest>>> direct;
  struct Converted {
    const SlabLayout::Entry* entry;
    TensorLocation loc;
  };
  std::vector<Converted> converted;
  // Every shape and dtype is checked before anything is read: a mismatched checkpoint costs no I/O.
  for (const auto& e : layout.entries) {
    TensorLocation loc = ckpt.locate(e.checkpoint);
    const TensorInfo& info = *loc.info;
    PS_CHECK(info.shape == e.shape, CheckpointError,
             "tensor '{}' in {} has shape {} but config.json implies {}: the checkpoint does not match its "
             "config.json",
             e.checkpoint, loc.file->path(), shape_str(info.shape), shape_str(e.shape));
    const c10::ScalarType file_type = to_scalar_type(info.dtype);
    if (file_type == layout.dtype) {
      auto it = std::find_if(direct.begin(), direct.end(), [&](const auto& d) { return d.first == loc.file; });
      if (it == direct.end()) it = direct.insert(direct.end(), {loc.file, {}});
      it->second.push_back({loc.info, base + e.offset});
    } else {
      PS_CHECK(c10::isFloatingType(file_type), CheckpointError,
               "tensor '{}' in {} is {} but a floating-point weight is expected", e.checkpoint, loc.file->path(),
               dtype_name(info.dtype));
      converted.push_back({&e, std::move(loc)});
    }
  }
  for (auto& [file, requests] : direct) file->read_many(std::move(requests));
  for (const auto& c : converted) {
    const TensorInfo& info = *c.loc.info;
    torch::Tensor tmp = torch::empty(info.shape, torch::TensorOptions().dtype(to_scalar_type(info.dtype)));
    c.loc.file->read_into(info, tmp.data_ptr());
    entry_view(layout, *c.entry, host_slab).copy_(tmp);
  }
}

}  // namespace pipeswap::offload
