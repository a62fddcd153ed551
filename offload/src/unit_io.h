// Units from the checkpoint into memory: the one path every resident block, swapped block and
// component takes (read into a host slab, then onto the device), each read traced on the disk lane.
#pragma once

#include <torch/types.h>

#include <vector>

#include "pipeswap/core/checkpoint.h"
#include "pipeswap/core/trace.h"
#include "pipeswap/offload/residency.h"

namespace pipeswap::offload {

// What the --trace timeline says about a unit: its block, its phase when it is one phase alone.
trace::Args unit_args(const Unit& u, int64_t position, int64_t bytes);

// Reads every part of `u` into `host` (a CPU slab of at least u.bytes), traced as `what`.
void read_unit(const Checkpoint& ckpt, const Unit& u, torch::Tensor host, const char* what, int64_t position = -1);
// read_unit into a new host slab, then onto `device` (the host slab itself on a CPU rank).
torch::Tensor load_unit(const Checkpoint& ckpt, const Unit& u, torch::Device device, const char* what);
// Views of `u`'s tensors in `slab`, one WeightView per part.
std::vector<WeightView> unit_views(const Unit& u, const torch::Tensor& slab);

}  // namespace pipeswap::offload
