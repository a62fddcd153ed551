// Which of a rank's blocks stay on its device and which are swapped in from host memory or disk,
// in users' words: blocks_to_swap, offload_ratio, the resident policy, offload_granularity,
// prefetch depth (the lookahead buffer), use_non_blocking, lazy_load, num_disk_workers, max_memory.
// Pure arithmetic: the plan uses it before anything loads, the engine uses the same answer.
#pragma once

#include <cstdint>
#include <optional>

#include <c10/core/ScalarType.h>
#include <string>
#include <vector>

namespace pipeswap::offload {

enum class ResidentPolicy { kSuffix, kPrefix, kInterleaved };
enum class Granularity { kBlock, kPhase };

ResidentPolicy parse_resident_policy(const std::string& s);  // suffix|prefix|interleaved
Granularity parse_granularity(const std::string& s);         // block|phase
const char* to_string(ResidentPolicy p);
const char* to_string(Granularity g);

struct OffloadOptions {
  std::optional<int> blocks_to_swap;    // of this rank's blocks
  std::optional<double> offload_ratio;  // instead of blocks_to_swap: fraction of this rank's blocks
  ResidentPolicy policy = ResidentPolicy::kSuffix;
  Granularity granularity = Granularity::kBlock;
  int prefetch_depth = 1;          // K: copies in flight ahead of compute; the device ring has K+1 slots
  bool use_non_blocking = true;    // false: synchronous copies, no prefetch
  bool lazy_load = false;          // swapped units come from the safetensors files when needed
  int num_disk_workers = 2;        // threads reading from disk (lazy_load)
  int64_t max_memory = 0;          // host cache budget in bytes (lazy_load); 0: unlimited
  // The checkpoint's dtype, for the bytes a read from disk moves (a bf16 checkpoint computed in fp32
  // reads half its slab bytes); unset: the compute dtype.
  std::optional<c10::ScalarType> stored_dtype;
  // Non-block components (embeddings, head): kept on the host and moved in when used
  // (offload_txt_emb, offload_img_emb, or by name), or kept nowhere and read from disk when used.
  bool offload_txt_emb = false;
  bool offload_img_emb = false;
  std::vector<std::string> offload_components;
  std::vector<std::string> on_demand_components;
  bool any_swapping() const { return (blocks_to_swap && *blocks_to_swap > 0) || (offload_ratio && *offload_ratio > 0); }
};

// Number of this rank's `n` blocks to swap: blocks_to_swap, or round(offload_ratio * n). Throws
// ConfigError for a negative count, a count above n, or a ratio outside [0, 1].
int blocks_to_swap_for(const OffloadOptions& o, int n);

// Marks which of blocks [0, n) (rank-local indices) are swapped: suffix swaps the last `swap`,
// prefix the first, interleaved spreads the resident ones evenly so each resident block's compute
// hides the next swapped block's copy.
std::vector<bool> choose_swapped(int n, int swap, ResidentPolicy policy);

// Parses "12GB", "512MiB", "1.5G", "1000000" (bytes) into bytes; throws ConfigError naming `flag`.
int64_t parse_bytes(const std::string& text, const std::string& flag);

}  // namespace pipeswap::offload
