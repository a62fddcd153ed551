// A part's weights as one slab: one contiguous byte range with every tensor at a fixed, aligned
// offset. Host cache entries and device slots are slabs too, so moving a part is one copy and model
// code gets tensor views that never change address.
#pragma once

#include <torch/types.h>

#include <string>
#include <vector>

#include "pipeswap/core/checkpoint.h"
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
  };
  std::string part;
  c10::ScalarType dtype = c10::ScalarType::Float;
  std::vector<Entry> entries;
  int64_t bytes = 0;
};

SlabLayout make_layout(const PartSpec& part, c10::ScalarType dtype);

// A view of one entry of `layout` in `slab` (a uint8 tensor of layout.bytes, any device).
torch::Tensor entry_view(const SlabLayout& layout, const SlabLayout::Entry& e, const torch::Tensor& slab);
// Adds a view of every tensor in `slab` to `view`, under its local name.
void add_views(const SlabLayout& layout, const torch::Tensor& slab, WeightView& view);

// Fills a CPU slab from the checkpoint: reads each tensor once (straight into the slab when the
// dtypes agree, else through a converted temporary). Checks every tensor's shape against the
// layout: a mismatch is a CheckpointError naming the tensor, both shapes and config.json.
void read_part(const Checkpoint& ckpt, const SlabLayout& layout, torch::Tensor& host_slab);

}  // namespace pipeswap::offload
