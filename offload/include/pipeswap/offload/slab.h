// A part's weights as one slab: one contiguous byte range with every tensor at a fixed, aligned
// offset. Host cache entries and device slots are slabs too, so moving a part is one copy and model
// code gets tensor views that never change address.
#pragma once

#include <torch/types.h>

#include <optional>
#include <string>
#include <vector>

#include "pipeswap/core/checkpoint.h"
#include "pipeswap/core/fp8.h"
#include "pipeswap/core/weights.h"

namespace pipeswap::offload {

constexpr int64_t kSlabAlignment = 256;  // keeps every view aligned for vectorised kernels

inline int64_t align_up(int64_t v, int64_t a) { return (v + a - 1) / a * a; }

struct SlabLayout {
  struct Entry {
    std::string local;
    std::string checkpoint;
    std::vector<int64_t> shape;
    int64_t offset = 0;
    int64_t nbytes = 0;
    // fp8 (core/fp8.h): the entry holds nbytes = numel uint8 bytes at `offset` and, with a scale,
    // scale_numel float32 at scale_offset; views dequantise them to `dtype` on use.
    Fp8Storage fp8;
    int64_t scale_offset = 0;
    int64_t scale_numel = 0;
    int64_t disk_bytes = 0;  // what reading it from the checkpoint moves (scales counted as float32)
  };
  std::string part;
  c10::ScalarType dtype = c10::ScalarType::Float;  // the compute dtype: what plain entries hold
  std::vector<Entry> entries;
  int64_t bytes = 0;
};

// `fp8`: how each of the part's tensors rests, in order (empty: every one in `dtype`). `disk_dtype`: what
// the checkpoint stores the others in (for disk_bytes; unset: `dtype`).
SlabLayout make_layout(const PartSpec& part, c10::ScalarType dtype, const std::vector<Fp8Storage>& fp8 = {},
                       std::optional<c10::ScalarType> disk_dtype = std::nullopt);

// A view of one plain entry of `layout` in `slab` (a uint8 tensor of layout.bytes, any device).
torch::Tensor entry_view(const SlabLayout& layout, const SlabLayout::Entry& e, const torch::Tensor& slab);
// Adds entry `e` (plain or fp8) in `slab` to `view` under `local`.
void add_entry_view(const SlabLayout& layout, const SlabLayout::Entry& e, const torch::Tensor& slab,
                    const std::string& local, WeightView& view);
// Adds a view of every tensor in `slab` to `view`, under its local name.
void add_views(const SlabLayout& layout, const torch::Tensor& slab, WeightView& view);

// Fills a CPU slab from the checkpoint: reads each tensor once (straight into the slab when the
// dtypes agree, fp8 bytes included, else through a converted temporary). Checks every tensor's shape
// against the layout: a mismatch is a CheckpointError naming the tensor, both shapes and config.json.
// fp8 entries: the stored bytes and their scale (as float32), checked against the layout's format and
// scale kind (fp8.h's find_fp8 errors for variants it cannot handle); --weight-dtype fp8 entries are
// read wide and quantised here, on the host, once (quantize_e4m3_per_channel).
void read_part(const Checkpoint& ckpt, const SlabLayout& layout, torch::Tensor& host_slab);

}  // namespace pipeswap::offload
