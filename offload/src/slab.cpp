#include "pipeswap/offload/slab.h"

#include <algorithm>
#include <memory>
#include <utility>
#include <vector>

#include "pipeswap/core/dtype.h"
#include "pipeswap/core/error.h"
#include "pipeswap/core/shape.h"

namespace pipeswap::offload {

SlabLayout make_layout(const PartSpec& part, c10::ScalarType dtype, const std::vector<Fp8Storage>& fp8,
                       std::optional<c10::ScalarType> disk_dtype) {
  PS_CHECK(fp8.empty() || fp8.size() == part.tensors.size(), Error,
           "part {}: {} fp8 storage entries for {} tensors", part.name, fp8.size(), part.tensors.size());
  SlabLayout layout;
  layout.part = part.name;
  layout.dtype = dtype;
  const c10::ScalarType disk = disk_dtype.value_or(dtype);
  int64_t off = 0;
  for (size_t i = 0; i < part.tensors.size(); ++i) {
    const auto& t = part.tensors[i];
    SlabLayout::Entry e;
    e.local = t.local;
    e.checkpoint = t.checkpoint;
    e.shape = t.shape;
    e.offset = off;
    if (!fp8.empty() && fp8[i].fp8()) {
      e.fp8 = fp8[i];
      e.nbytes = tensor_bytes(t.shape, torch::kUInt8);
      e.scale_numel = e.fp8.scale_numel(t.shape);
      e.scale_offset = align_up(off + e.nbytes, kSlabAlignment);
      off = e.scale_numel > 0 ? align_up(e.scale_offset + 4 * e.scale_numel, kSlabAlignment) : e.scale_offset;
      e.disk_bytes = e.fp8.quantise ? tensor_bytes(t.shape, disk) : e.nbytes + 4 * e.scale_numel;
    } else {
      e.nbytes = tensor_bytes(t.shape, dtype);
      off = align_up(off + e.nbytes, kSlabAlignment);
      e.disk_bytes = tensor_bytes(t.shape, disk);
    }
    layout.entries.push_back(std::move(e));
  }
  layout.bytes = std::max<int64_t>(off, kSlabAlignment);
  return layout;
}

torch::Tensor entry_view(const SlabLayout& layout, const SlabLayout::Entry& e, const torch::Tensor& slab) {
  PS_CHECK(!e.fp8.fp8(), Error, "entry_view of fp8 weight '{}'", e.checkpoint);
  return slab.narrow(0, e.offset, e.nbytes).view(layout.dtype).view(e.shape);
}

namespace {
// The scale's view, shaped to broadcast over the weight: [rows, 1, ...] per channel, [1] per tensor.
torch::Tensor scale_view(const SlabLayout::Entry& e, const torch::Tensor& slab) {
  if (e.scale_numel == 0) return torch::Tensor();
  torch::Tensor s = slab.narrow(0, e.scale_offset, 4 * e.scale_numel).view(torch::kFloat32);
  if (e.fp8.scale == Fp8Scale::kPerChannel && e.shape.size() > 1) {
    std::vector<int64_t> shape(e.shape.size(), 1);
    shape[0] = e.scale_numel;
    return s.view(shape);
  }
  return s;
}
}  // namespace

void add_entry_view(const SlabLayout& layout, const SlabLayout::Entry& e, const torch::Tensor& slab,
                    const std::string& local, WeightView& view) {
  if (!e.fp8.fp8()) {
    view.add(local, entry_view(layout, e, slab));
    return;
  }
  WeightView::Fp8Weight w;
  w.bytes = slab.narrow(0, e.offset, e.nbytes).view(e.shape);
  w.scale = scale_view(e, slab);
  w.format = e.fp8.format;
  w.dtype = layout.dtype;
  view.add_fp8(local, std::move(w));
}

void add_views(const SlabLayout& layout, const torch::Tensor& slab, WeightView& view) {
  for (const auto& e : layout.entries) add_entry_view(layout, e, slab, e.local, view);
}

namespace {
// An fp8 entry: the bytes as stored (or quantised from a wider weight), the scale as float32.
struct Fp8Read {
  const SlabLayout::Entry* entry;
  TensorLocation loc;
  std::string scale_name;
};

void check_fp8_entry(const Checkpoint& ckpt, const SlabLayout::Entry& e, const TensorLocation& loc,
                     std::vector<Fp8Read>& fp8_reads) {
  const TensorInfo& info = *loc.info;
  if (e.fp8.quantise) {
    PS_CHECK(c10::isFloatingType(to_scalar_type(info.dtype)) && !is_fp8(info.dtype), CheckpointError,
             "tensor '{}' in {} is {}: --weight-dtype fp8 quantises bf16 / fp16 / fp32 weights", e.checkpoint,
             loc.file->path(), dtype_name(info.dtype));
    fp8_reads.push_back({&e, loc, ""});
    return;
  }
  const Fp8Found found = find_fp8(ckpt, e.checkpoint, e.shape);
  PS_CHECK(found.storage == e.fp8, CheckpointError,
           "weight '{}' in {} is {} with {} scale, but the plan expects {} with {} scale (from block 0 and the "
           "components' headers): pipeswap needs every block stored alike",
           e.checkpoint, loc.file->path(), dtype_name(info.dtype),
           found.storage.scale == Fp8Scale::kNone          ? "no"
           : found.storage.scale == Fp8Scale::kPerTensor ? "a per-tensor"
                                                           : "a per-channel",
           found.storage.fp8() ? dtype_name(fp8_dtype(e.fp8.format)) : "a float type",
           e.fp8.scale == Fp8Scale::kNone ? "no" : e.fp8.scale == Fp8Scale::kPerTensor ? "a per-tensor" : "a per-channel");
  fp8_reads.push_back({&e, loc, found.scale_name});
}
}  // namespace

void read_part(const Checkpoint& ckpt, const SlabLayout& layout, torch::Tensor& host_slab) {
  PS_CHECK(host_slab.device().is_cpu() && host_slab.numel() >= layout.bytes, Error,
           "read_part needs a CPU slab of {} bytes for {}", layout.bytes, layout.part);
  auto* base = static_cast<uint8_t*>(host_slab.data_ptr());
  // Tensors already in the slab's dtype go straight into the slab with one read_many per shard, so
  // the disk sees a few large requests instead of one small read per tensor. A part's tensors can
  // live in several shards; the list keeps shards in first-use order (a part touches one or two).
  std::vector<std::pair<std::shared_ptr<const SafetensorsFile>, std::vector<ReadRequest>>> direct;
  auto read_direct = [&](const TensorLocation& loc, void* dst) {
    auto it = std::find_if(direct.begin(), direct.end(), [&](const auto& d) { return d.first == loc.file; });
    if (it == direct.end()) it = direct.insert(direct.end(), {loc.file, {}});
    it->second.push_back({loc.info, dst});
  };
  struct Converted {
    const SlabLayout::Entry* entry;
    TensorLocation loc;
  };
  std::vector<Converted> converted;
  std::vector<Fp8Read> fp8_reads;
  // Every shape and dtype is checked before anything is read: a mismatched checkpoint costs no I/O.
  for (const auto& e : layout.entries) {
    TensorLocation loc = ckpt.locate(e.checkpoint);
    const TensorInfo& info = *loc.info;
    PS_CHECK(info.shape == e.shape, CheckpointError,
             "tensor '{}' in {} has shape {} but config.json implies {}: the checkpoint does not match its "
             "config.json",
             e.checkpoint, loc.file->path(), shape_str(info.shape), shape_str(e.shape));
    if (e.fp8.fp8()) {
      check_fp8_entry(ckpt, e, loc, fp8_reads);
      if (!e.fp8.quantise) read_direct(loc, base + e.offset);
      continue;
    }
    PS_CHECK(!is_fp8(info.dtype), CheckpointError,
             "weight '{}' in {} is stored in {}, but the plan expects a float type (from block 0 and the components' "
             "headers): pipeswap needs every block stored alike",
             e.checkpoint, loc.file->path(), dtype_name(info.dtype));
    const c10::ScalarType file_type = to_scalar_type(info.dtype);
    if (file_type == layout.dtype) {
      read_direct(loc, base + e.offset);
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
  for (const auto& f : fp8_reads) {
    const SlabLayout::Entry& e = *f.entry;
    torch::Tensor scale_dst =
        e.scale_numel > 0 ? host_slab.narrow(0, e.scale_offset, 4 * e.scale_numel).view(torch::kFloat32)
                          : torch::Tensor();
    if (e.fp8.quantise) {
      const TensorInfo& info = *f.loc.info;
      torch::Tensor tmp = torch::empty(info.shape, torch::TensorOptions().dtype(to_scalar_type(info.dtype)));
      f.loc.file->read_into(info, tmp.data_ptr());
      auto [bytes, scale] = quantize_e4m3_per_channel(tmp);
      host_slab.narrow(0, e.offset, e.nbytes).copy_(bytes.reshape({-1}));
      scale_dst.copy_(scale.reshape({-1}));
    } else if (!f.scale_name.empty()) {
      scale_dst.copy_(ckpt.locate(f.scale_name).file->read(f.scale_name).reshape({-1}).to(torch::kFloat32));
    }
  }
}

}  // namespace pipeswap::offload
