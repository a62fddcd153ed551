#include "pipeswap/offload/residency.h"

#include <algorithm>
#include <cmath>
#include <map>

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

Fp8Dequantise parse_fp8_dequantise(const std::string& s) {
  if (s == "auto") return Fp8Dequantise::kAuto;
  if (s == "ahead") return Fp8Dequantise::kAhead;
  if (s == "per-use") return Fp8Dequantise::kPerUse;
  PS_THROW(ConfigError, "unknown --fp8-dequantise '{}': use auto, ahead or per-use", s);
}

const char* to_string(Fp8Dequantise d) {
  switch (d) {
    case Fp8Dequantise::kAhead: return "ahead";
    case Fp8Dequantise::kPerUse: return "per-use";
    default: return "auto";
  }
}

bool dequantise_ahead(const OffloadOptions& o, bool cuda) {
  if (o.storage.block.empty() || !o.storage.any_fp8()) return false;
  return o.fp8_dequantise == Fp8Dequantise::kAhead || (o.fp8_dequantise == Fp8Dequantise::kAuto && cuda);
}

int64_t fp8_workspace_bytes(const ModelParts& model, const WeightStorage& storage, c10::ScalarType dtype) {
  if (model.num_blocks() == 0 || storage.block.empty()) return 0;
  int64_t most = 0;
  const int nphases = static_cast<int>(model.phase_names().size());
  for (int p = 0; p < nphases; ++p) {
    const std::vector<Fp8Storage> st = storage.phase(model, p);
    const std::vector<TensorRef> tensors = model.phase_tensors(0, p);
    int64_t n = 0;
    for (size_t i = 0; i < st.size() && i < tensors.size(); ++i) {
      if (!st[i].fp8()) continue;
      n += (tensor_bytes(tensors[i].shape, dtype) + kFp8WorkspaceAlign - 1) / kFp8WorkspaceAlign * kFp8WorkspaceAlign;
    }
    most = std::max(most, n);
  }
  return most;
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

bool WeightStorage::any_fp8() const {
  for (const auto& s : block)
    if (s.fp8()) return true;
  return !components.empty();
}

std::vector<Fp8Storage> WeightStorage::phase(const ModelParts& model, int phase) const {
  if (block.empty()) return {};
  size_t first = 0;
  for (int p = 0; p < phase; ++p) first += model.phase_tensors(0, p).size();
  const size_t n = model.phase_tensors(0, phase).size();
  PS_CHECK(first + n <= block.size(), Error, "fp8 storage of {} block tensors, phase {} needs {}", block.size(),
           phase, first + n);
  return std::vector<Fp8Storage>(block.begin() + static_cast<std::ptrdiff_t>(first),
                                 block.begin() + static_cast<std::ptrdiff_t>(first + n));
}

std::vector<Fp8Storage> WeightStorage::part(const PartSpec& spec) const {
  if (components.empty()) return {};
  std::vector<Fp8Storage> out;
  for (const auto& t : spec.tensors) {
    auto it = components.find(t.checkpoint);
    out.push_back(it == components.end() ? Fp8Storage{} : it->second);
  }
  return out;
}

namespace {
std::vector<const TensorRef*> component_tensors(const std::vector<PartSpec>& pro, const std::vector<PartSpec>& epi) {
  std::vector<const TensorRef*> out;
  for (const auto* side : {&pro, &epi})
    for (const auto& p : *side)
      for (const auto& t : p.tensors) out.push_back(&t);
  return out;
}
}  // namespace

std::vector<int64_t> WeightStorage::encode(const ModelParts& model) const {
  std::vector<int64_t> out;
  if (!any_fp8()) return out;
  int64_t nblock = 0;
  for (int p = 0; p < static_cast<int>(model.phase_names().size()); ++p)
    nblock += static_cast<int64_t>(model.phase_tensors(0, p).size());
  out.push_back(block.empty() ? 0 : nblock);
  for (const auto& s : block) out.push_back(s.code());
  const auto pro = model.prologue_parts();
  const auto epi = model.epilogue_parts();
  for (const TensorRef* t : component_tensors(pro, epi)) {
    auto it = components.find(t->checkpoint);
    out.push_back(it == components.end() ? 0 : it->second.code());
  }
  return out;
}

WeightStorage WeightStorage::decode(const ModelParts& model, const std::vector<int64_t>& codes) {
  WeightStorage w;
  if (codes.empty()) return w;
  const size_t nblock = static_cast<size_t>(codes[0]);
  PS_CHECK(codes.size() >= 1 + nblock, Error, "fp8 storage codes: {} values for {} block tensors", codes.size(),
           nblock);
  for (size_t i = 0; i < nblock; ++i) w.block.push_back(Fp8Storage::from_code(codes[1 + i]));
  const auto pro = model.prologue_parts();
  const auto epi = model.epilogue_parts();
  const auto refs = component_tensors(pro, epi);
  PS_CHECK(codes.size() == 1 + nblock + refs.size(), Error, "fp8 storage codes: {} values, expected {}", codes.size(),
           1 + nblock + refs.size());
  for (size_t i = 0; i < refs.size(); ++i) {
    const Fp8Storage s = Fp8Storage::from_code(codes[1 + nblock + i]);
    if (s.fp8()) w.components[refs[i]->checkpoint] = s;
  }
  return w;
}

void Unit::add(SlabLayout part) {
  base.push_back(bytes);
  for (const auto& e : part.entries) tensor_bytes += e.disk_bytes;
  bytes = align_up(bytes + part.bytes, kSlabAlignment);
  parts.push_back(std::move(part));
}

std::vector<Unit> make_units(const ModelParts& model, int block, Granularity g, c10::ScalarType dtype,
                             c10::ScalarType disk_dtype, const WeightStorage& storage) {
  const auto parts = block_parts(model, block);
  const int nphases = static_cast<int>(parts.size());
  std::vector<Unit> units;
  auto add_unit = [&](int p0, int p1) {
    Unit u;
    u.block = block;
    u.first_phase = p0;
    u.end_phase = p1;
    for (int p = p0; p < p1; ++p) u.add(make_layout(parts[p], dtype, storage.phase(model, p), disk_dtype));
    units.push_back(std::move(u));
  };
  if (g == Granularity::kPhase) {
    for (int p = 0; p < nphases; ++p) add_unit(p, p + 1);
  } else {
    add_unit(0, nphases);
  }
  return units;
}

Unit component_unit(const PartSpec& part, c10::ScalarType dtype, c10::ScalarType disk_dtype,
                    const WeightStorage& storage) {
  Unit u;
  u.add(make_layout(part, dtype, storage.part(part), disk_dtype));
  return u;
}

std::vector<int> SwapLayout::swapped_block_ids() const {
  std::vector<int> ids;
  for (size_t b = 0; b < swapped_blocks.size(); ++b)
    if (swapped_blocks[b]) ids.push_back(first_block + static_cast<int>(b));
  return ids;
}

std::vector<int> SwapLayout::cached_block_ids() const {
  std::map<int, bool> whole;  // swapped block -> every unit of it cached
  for (const Unit& u : units) {
    if (!u.swapped) continue;
    auto it = whole.emplace(u.block, true).first;
    it->second = it->second && u.cached;
  }
  std::vector<int> ids;
  for (const auto& [block, all] : whole)
    if (all) ids.push_back(block);
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
  int64_t swapped_units = 0;
  for (int b = 0; b < n; ++b) {
    for (Unit& u : make_units(model, first_block + b, opts.granularity, dtype, opts.stored_dtype.value_or(dtype),
                                 opts.storage)) {
      u.swapped = l.swapped_blocks[static_cast<size_t>(b)];
      if (u.swapped) {
        ++swapped_units;
        l.swapped_bytes += u.bytes;
        l.slot_bytes = std::max(l.slot_bytes, u.bytes);
      } else {
        l.resident_bytes += u.bytes;
      }
      l.units.push_back(std::move(u));
    }
  }
  if (swapped_units == 0) return l;
  // Deeper than the swapped units there is nothing more to fetch ahead: the depth stops there.
  const int depth = static_cast<int>(std::min<int64_t>(opts.prefetch_depth, swapped_units));
  l.num_slots = opts.use_non_blocking ? depth + 1 : 1;
  if (!opts.lazy_load) {
    l.host_bytes = l.swapped_bytes;
    PS_CHECK(opts.max_memory == 0 || l.host_bytes <= opts.max_memory, ConfigError,
             "swapping {} block(s) keeps {} bytes in host memory but --max-memory is {}: add --lazy-load to stream "
             "them from disk, or raise --max-memory",
             swap, l.host_bytes, opts.max_memory);
    return l;
  }
  // lazy_load: the host cache keeps every unit that fits (all of them when the budget holds them).
  int64_t room = opts.max_memory == 0 ? l.swapped_bytes : opts.max_memory;
  for (Unit& u : l.units) {
    if (!u.swapped) continue;
    if (u.bytes <= room) {
      u.cached = true;
      room -= u.bytes;
      l.sticky_bytes += u.bytes;
      l.sticky_disk_bytes += u.tensor_bytes;
    } else {
      l.streamed_bytes += u.bytes;
      l.streamed_disk_bytes += u.tensor_bytes;
      l.staging_bytes = std::max(l.staging_bytes, u.bytes);
    }
  }
  if (l.streamed_bytes > 0) l.staging_buffers = std::max(2, opts.num_disk_workers + 1);
  l.host_bytes = l.sticky_bytes + l.staging_buffers * l.staging_bytes;
  return l;
}

}  // namespace pipeswap::offload
