#include "pipeswap/offload/residency.h"

#include <algorithm>
#include <cmath>

#include "pipeswap/core/error.h"

namespace pipeswap::offload {

ResidentPolicy parse_resident_policy(const std::string& s) {
  if (s == "suffix") return ResidentPolicy::kSuffix;
  if (s == "prefix") return ResidentPolicy::kPrefix;
  if (s == "interleaved") return ResidentPolicy::kInterleaved;
  PS_THROW(ConfigError, "unknown --resident-policy '{}': use suffix (the last blocks swap, as block-swap nodes do), "
                        "prefix or interleaved", s);
}

Granularity parse_granularity(const std::string& s) {
  if (s == "block") return Granularity::kBlock;
  if (s == "phase") return Granularity::kPhase;
  PS_THROW(ConfigError, "unknown --offload-granularity '{}': use block or phase", s);
}

const char* to_string(ResidentPolicy p) {
  switch (p) {
    case ResidentPolicy::kPrefix: return "prefix";
    case ResidentPolicy::kInterleaved: return "interleaved";
    default: return "suffix";
  }
}
const char* to_string(Granularity g) { return g == Granularity::kPhase ? "phase" : "block"; }

SwapOrder parse_swap_order(const std::string& s) {
  if (s == "auto") return SwapOrder::kAuto;
  if (s == "per-micro-batch") return SwapOrder::kPerMicroBatch;
  if (s == "shared") return SwapOrder::kShared;
  PS_THROW(ConfigError, "unknown --swap-order '{}': use auto, per-micro-batch or shared", s);
}

const char* to_string(SwapOrder o) {
  switch (o) {
    case SwapOrder::kPerMicroBatch: return "per-micro-batch";
    case SwapOrder::kShared: return "shared";
    default: return "auto";
  }
}

void check_offload_options(const OffloadOptions& o) {
  if (o.blocks_to_swap) {
    PS_CHECK(*o.blocks_to_swap >= 0, ConfigError,
             "--blocks-to-swap {} is negative: give how many of each rank's blocks swap", *o.blocks_to_swap);
  }
  PS_CHECK(!(o.blocks_to_swap && o.offload_ratio), ConfigError,
           "--blocks-to-swap and --offload-ratio both given: use one of them");
  if (o.offload_ratio) {
    const double r = *o.offload_ratio;
    PS_CHECK(r >= 0 && r <= 1 && !std::isnan(r), ConfigError,
             "--offload-ratio {} is outside [0, 1]: it is the fraction of each rank's blocks that swap", r);
  }
  PS_CHECK(o.prefetch_depth >= 1, ConfigError, "--prefetch-depth must be at least 1 (got {})", o.prefetch_depth);
  PS_CHECK(o.num_disk_workers >= 1, ConfigError, "--num-disk-workers must be at least 1 (got {})", o.num_disk_workers);
}

int blocks_to_swap_for(const OffloadOptions& o, int n) {
  check_offload_options(o);
  if (o.offload_ratio) return static_cast<int>(std::lround(*o.offload_ratio * n));
  if (!o.blocks_to_swap) return 0;
  const int s = *o.blocks_to_swap;
  PS_CHECK(s <= n, ConfigError,
           "--blocks-to-swap {} is more than the {} block(s) this rank owns: use at most {} (or --offload-ratio 1)", s,
           n, n);
  return s;
}

std::vector<bool> choose_swapped(int n, int swap, ResidentPolicy policy) {
  std::vector<bool> swapped(n, false);
  swap = std::max(0, std::min(swap, n));
  switch (policy) {
    case ResidentPolicy::kSuffix:
      for (int i = n - swap; i < n; ++i) swapped[i] = true;
      break;
    case ResidentPolicy::kPrefix:
      for (int i = 0; i < swap; ++i) swapped[i] = true;
      break;
    case ResidentPolicy::kInterleaved: {
      // Resident block k of r sits at floor((k + 0.5) * n / r): evenly spread, none adjacent when r <= n/2.
      const int resident = n - swap;
      std::fill(swapped.begin(), swapped.end(), true);
      for (int k = 0; k < resident; ++k) swapped[static_cast<int>((k + 0.5) * n / resident)] = false;
      break;
    }
  }
  return swapped;
}

void Unit::add(SlabLayout part, c10::ScalarType disk_dtype) {
  base.push_back(bytes);
  for (const auto& e : part.entries) tensor_bytes += pipeswap::tensor_bytes(e.shape, disk_dtype);
  bytes = align_up(bytes + part.bytes, kSlabAlignment);
  parts.push_back(std::move(part));
}

std::vector<Unit> make_units(const ModelParts& model, int block, Granularity g, c10::ScalarType dtype,
                             c10::ScalarType disk_dtype) {
  const auto parts = block_parts(model, block);
  const int nphases = static_cast<int>(parts.size());
  std::vector<Unit> units;
  auto add_unit = [&](int p0, int p1) {
    Unit u;
    u.block = block;
    u.first_phase = p0;
    u.end_phase = p1;
    for (int p = p0; p < p1; ++p) u.add(make_layout(parts[p], dtype), disk_dtype);
    units.push_back(std::move(u));
  };
  if (g == Granularity::kPhase) {
    for (int p = 0; p < nphases; ++p) add_unit(p, p + 1);
  } else {
    add_unit(0, nphases);
  }
  return units;
}

Unit component_unit(const PartSpec& part, c10::ScalarType dtype, c10::ScalarType disk_dtype) {
  Unit u;
  u.add(make_layout(part, dtype), disk_dtype);
  return u;
}

std::vector<int> SwapLayout::swapped_block_ids() const {
  std::vector<int> ids;
  for (size_t b = 0; b < swapped_blocks.size(); ++b)
    if (swapped_blocks[b]) ids.push_back(first_block + static_cast<int>(b));
  return ids;
}

SwapLayout plan_swapping(const ModelParts& model, int first_block, int end_block, c10::ScalarType dtype,
                         const OffloadOptions& opts) {
  SwapLayout l;
  l.first_block = first_block;
  l.end_block = end_block;
  l.dtype = dtype;
  const int n = end_block - first_block;
  const int swap = blocks_to_swap_for(opts, n);
  l.swapped_blocks = choose_swapped(n, swap, opts.policy);
  std::vector<int64_t> swapped_units, unit_disk;
  for (int b = 0; b < n; ++b) {
    for (Unit& u : make_units(model, first_block + b, opts.granularity, dtype, opts.stored_dtype.value_or(dtype))) {
      u.swapped = l.swapped_blocks[static_cast<size_t>(b)];
      if (u.swapped) {
        swapped_units.push_back(u.bytes);
        unit_disk.push_back(u.tensor_bytes);
        l.swapped_bytes += u.bytes;
        l.slot_bytes = std::max(l.slot_bytes, u.bytes);
      } else {
        l.resident_bytes += u.bytes;
      }
      l.units.push_back(std::move(u));
    }
  }
  if (swapped_units.empty()) return l;
  // Deeper than the swapped units there is nothing more to fetch ahead: the depth stops there.
  const int depth = std::min<int64_t>(opts.prefetch_depth, static_cast<int64_t>(swapped_units.size()));
  l.num_slots = opts.use_non_blocking ? depth + 1 : 1;
  if (!opts.lazy_load) {
    l.host_bytes = l.swapped_bytes;
    PS_CHECK(opts.max_memory == 0 || l.host_bytes <= opts.max_memory, ConfigError,
             "swapping {} block(s) keeps {} bytes in host memory but --max-memory is {}: add --lazy-load to stream "
             "them from disk, or raise --max-memory",
             swap, l.host_bytes, opts.max_memory);
    return l;
  }
  // lazy_load: everything sticks when it fits; otherwise staging buffers first, then as many units
  // (in compute order) as the rest of the budget holds.
  int64_t all_disk = 0;
  for (int64_t d : unit_disk) all_disk += d;
  if (opts.max_memory == 0 || l.swapped_bytes <= opts.max_memory) {
    l.sticky_bytes = l.swapped_bytes;
    l.host_bytes = l.swapped_bytes;
    l.sticky_disk_bytes = all_disk;
    return l;
  }
  l.staging_buffers = std::max(2, opts.num_disk_workers + 1);
  const int64_t staging = l.staging_buffers * l.slot_bytes;
  PS_CHECK(opts.max_memory >= staging, ConfigError,
           "--max-memory {} is too small for lazy loading: it needs at least {} bytes ({} staging buffers of the "
           "largest swapped unit, {} bytes; fewer --num-disk-workers need fewer)",
           opts.max_memory, staging, l.staging_buffers, l.slot_bytes);
  int64_t room = opts.max_memory - staging;
  for (size_t i = 0; i < swapped_units.size(); ++i) {
    if (swapped_units[i] > room) break;
    l.sticky_bytes += swapped_units[i];
    l.sticky_disk_bytes += unit_disk[i];
    room -= swapped_units[i];
  }
  l.streamed_bytes = l.swapped_bytes - l.sticky_bytes;
  l.streamed_disk_bytes = all_disk - l.sticky_disk_bytes;
  l.host_bytes = staging + l.sticky_bytes;
  return l;
}

}  // namespace pipeswap::offload
