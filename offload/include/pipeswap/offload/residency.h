// Which of a rank's blocks stay on its device and which are swapped in from host memory or disk,
// in users' words: blocks_to_swap, offload_ratio, the resident policy, offload_granularity,
// prefetch depth (the lookahead buffer), use_non_blocking, lazy_load, num_disk_workers, max_memory.
//
// Decided once: plan_swapping turns the options into a SwapLayout (every unit of the rank's blocks,
// resident or swapped, and the memory that implies). The plan carries it, `pipeswap plan` prints it,
// and make_block_weights builds the rank's block store from it. Pure arithmetic: nothing here reads.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "pipeswap/core/fp8.h"
#include "pipeswap/core/weights.h"
#include "pipeswap/offload/slab.h"

namespace pipeswap::offload {

enum class ResidentPolicy { kSuffix, kPrefix, kInterleaved };
enum class Granularity { kBlock, kPhase };
// The order a rank runs the micro-batches it holds through its swapped blocks: one at a time through
// every block (each micro-batch refills every swapped slot; stages pipeline best), or block-outer, each
// fill serving every micro-batch of the group before it is released (a swapped block crosses the link
// once per step). auto: the plan's cost model picks per rank.
enum class SwapOrder { kAuto, kPerMicroBatch, kShared };
// How a rank's block fp8 weights become the compute dtype (issue 17): per use (each weight at its lookup,
// a temporary of one tensor), or ahead (each phase's fp8 weights in one go into one of two fixed
// workspaces, the next phase's on a side stream while the current one computes: fp8_ahead.h). auto: ahead
// on CUDA, per use on CPU ranks and where --fp8-gemm scaled-mm uses the bytes as they rest.
enum class Fp8Dequantise { kAuto, kAhead, kPerUse };

ResidentPolicy parse_resident_policy(const std::string& s);  // suffix|prefix|interleaved
Granularity parse_granularity(const std::string& s);         // block|phase
SwapOrder parse_swap_order(const std::string& s);            // auto|per-micro-batch|shared
const char* to_string(SwapOrder o);
Fp8Dequantise parse_fp8_dequantise(const std::string& s);  // auto|ahead|per-use
const char* to_string(Fp8Dequantise d);
const char* to_string(ResidentPolicy p);
const char* to_string(Granularity g);

// How weights rest (core/fp8.h): fp8 bytes plus a float32 scale, or in the compute dtype. Decided by the
// launcher from the checkpoint's headers (block 0 stands for every block: the loader holds the others
// to it) or by --weight-dtype fp8. Empty: every weight in the compute dtype.
struct WeightStorage {
  std::vector<Fp8Storage> block;                 // one block's tensors, phases in order, as declared
  std::map<std::string, Fp8Storage> components;  // fp8 non-block tensors, by checkpoint name
  bool any_fp8() const;
  // The storage of block phase `phase`'s tensors (empty: none fp8), and of a component part's.
  std::vector<Fp8Storage> phase(const ModelParts& model, int phase) const;
  std::vector<Fp8Storage> part(const PartSpec& part) const;
  // As integers (ranks agree on them) and back, given the model's declarations.
  std::vector<int64_t> encode(const ModelParts& model) const;
  static WeightStorage decode(const ModelParts& model, const std::vector<int64_t>& codes);
};

struct OffloadOptions {
  std::optional<int> blocks_to_swap;    // of this rank's blocks
  std::optional<double> offload_ratio;  // instead of blocks_to_swap: fraction of this rank's blocks
  ResidentPolicy policy = ResidentPolicy::kSuffix;
  Granularity granularity = Granularity::kBlock;
  SwapOrder swap_order = SwapOrder::kAuto;
  int prefetch_depth = 1;          // K: copies in flight ahead of compute; the device ring has K+1 slots
  bool use_non_blocking = true;    // false: synchronous copies, no prefetch
  bool lazy_load = false;          // swapped units come from the safetensors files when needed
  int num_disk_workers = 2;        // threads reading from disk (lazy_load)
  int64_t max_memory = 0;          // host cache size in bytes (lazy_load): swapped units that fit stay; 0: unlimited
  // The checkpoint's dtype, for the bytes a read from disk moves (a bf16 checkpoint computed in fp32
  // reads half its slab bytes); unset: the compute dtype.
  std::optional<c10::ScalarType> stored_dtype;
  WeightStorage storage;  // fp8 weights
  Fp8Dequantise fp8_dequantise = Fp8Dequantise::kAuto;
  // Non-block components (embeddings, head): kept on the host and moved in when used
  // (offload_txt_emb, offload_img_emb, or by name), or kept nowhere and read from disk when used.
  bool offload_txt_emb = false;
  bool offload_img_emb = false;
  std::vector<std::string> offload_components;
  std::vector<std::string> on_demand_components;
  bool any_swapping() const { return (blocks_to_swap && *blocks_to_swap > 0) || (offload_ratio && *offload_ratio > 0); }
};

// The options' own checks, the one place each offload flag is validated: throws ConfigError naming
// the flag for a negative --blocks-to-swap, both it and --offload-ratio, a ratio outside [0, 1], or
// --prefetch-depth / --num-disk-workers below 1.
void check_offload_options(const OffloadOptions& o);

// Whether a rank on a CUDA device (`cuda`) or a CPU dequantises its blocks' fp8 weights ahead: never
// without fp8 block weights; `ahead` on any device (CPU ranks too: the tests check its bookkeeping there);
// `auto` on CUDA.
bool dequantise_ahead(const OffloadOptions& o, bool cuda);
// One workspace of the dequantise ahead: the largest phase's fp8 tensors in `dtype`, each aligned to
// kFp8WorkspaceAlign bytes (0 without fp8 block weights). The store holds two (the phase in use and the
// one ahead); the plan counts the same.
inline constexpr int64_t kFp8WorkspaceAlign = 256;
int64_t fp8_workspace_bytes(const ModelParts& model, const WeightStorage& storage, c10::ScalarType dtype);

// Number of this rank's `n` blocks to swap: blocks_to_swap, or round(offload_ratio * n). Throws
// ConfigError as check_offload_options does, and for a count above n.
int blocks_to_swap_for(const OffloadOptions& o, int n);

// Marks which of blocks [0, n) (rank-local indices) are swapped: suffix swaps the last `swap`,
// prefix the first, interleaved spreads the resident ones evenly so each resident block's compute
// hides the next swapped block's copy.
std::vector<bool> choose_swapped(int n, int swap, ResidentPolicy policy);

// One slab's worth of weights: a whole block (all its phases), one phase of a block, or one non-block
// component. Its parts sit at aligned offsets in the slab, so moving a unit is one copy.
struct Unit {
  int block = -1;       // -1: a component
  int first_phase = 0;  // phases [first_phase, end_phase) of `block` live in this unit's slab
  int end_phase = 0;
  std::vector<SlabLayout> parts;  // one layout per phase (one for a component)
  std::vector<int64_t> base;      // byte offset of each part's layout inside the slab
  int64_t bytes = 0;              // slab bytes (aligned)
  int64_t tensor_bytes = 0;       // bytes of the tensors themselves as stored: what a read from disk moves
  bool swapped = false;           // streamed through the device slots (else resident)
  bool cached = false;            // lazy_load: swapped and kept in the host cache after its first read
  // Appends a part at the next aligned offset (its entries' disk_bytes add to tensor_bytes).
  void add(SlabLayout part);
};

// The units of one block in `dtype` (fp8 weights as `storage` says): one for the whole block, or one
// per phase. `disk_dtype`: what the checkpoint stores its other tensors in.
std::vector<Unit> make_units(const ModelParts& model, int block, Granularity g, c10::ScalarType dtype,
                             c10::ScalarType disk_dtype, const WeightStorage& storage = {});
// A non-block component as a unit of its own.
Unit component_unit(const PartSpec& part, c10::ScalarType dtype, c10::ScalarType disk_dtype,
                    const WeightStorage& storage = {});

// A rank's residency, decided once.
struct SwapLayout {
  int first_block = 0;  // the rank's blocks [first_block, end_block)
  int end_block = 0;
  // The compute dtype: what the slabs hold.
  c10::ScalarType dtype = c10::ScalarType::Float;
  std::vector<Unit> units;           // every unit of the rank's blocks, in compute order
  std::vector<bool> swapped_blocks;  // rank-local, [end_block - first_block)
  int64_t resident_bytes = 0;        // resident block slabs
  int64_t slot_bytes = 0;            // one slot: the largest swapped unit
  int num_slots = 0;                 // K+1 (1 without non-blocking copies), 0 when nothing swaps
  int64_t swapped_bytes = 0;         // all swapped units of one sweep
  int64_t host_bytes = 0;            // host memory for swapped units: all of them, or the cache and staging
  int64_t sticky_bytes = 0;          // lazy_load: units kept in the host cache after their first read
  int64_t streamed_bytes = 0;        // lazy_load: units read from disk every sweep
  int staging_buffers = 0;           // lazy_load: buffers streamed units pass through (beside the cache)
  int64_t staging_bytes = 0;         // lazy_load: one staging buffer (the largest streamed unit)
  int64_t sticky_disk_bytes = 0;     // tensor bytes (no slab padding) of the sticky units
  int64_t streamed_disk_bytes = 0;   // ... and of the streamed ones
  // Tensor bytes read from disk over `sweeps` sweeps (lazy_load): sticky units once, streamed ones
  // every sweep. Equals what the engine reads when the checkpoint's dtype is the compute dtype.
  int64_t disk_bytes(int sweeps) const { return sweeps <= 0 ? 0 : sticky_disk_bytes + streamed_disk_bytes * sweeps; }
  // Global indices of the swapped blocks.
  std::vector<int> swapped_block_ids() const;
  // lazy_load: global indices of the swapped blocks the host cache keeps whole (every unit cached).
  std::vector<int> cached_block_ids() const;
};

// The one place residency is decided; the engine follows it exactly. With lazy_load the host cache
// (max_memory) keeps every swapped unit that fits, read once: the units are taken in compute order and
// each one that still fits is kept. A cyclic scan (sweep after sweep through the same units) then reads
// exactly the units that do not fit on every sweep; an LRU cache would evict the unit needed next and
// read them all. The units that stream pass through staging buffers (num_disk_workers + 1 of the
// largest streamed unit) beside the cache, so the cache holds what it is sized for. Throws ConfigError
// when swapping without lazy_load would need more host memory than max_memory.
SwapLayout plan_swapping(const ModelParts& model, int first_block, int end_block, c10::ScalarType dtype,
                         const OffloadOptions& opts);

}  // namespace pipeswap::offload
