// The weighted device chain: one entry per rank, a device and a relative weight
// ("cuda:0=60,cuda:1=40", "cpu=3,cpu=1", "auto"), and the partition of blocks it implies.
#pragma once

#include <string>
#include <vector>

namespace pipeswap::pipeline {

// The block-swap nodes' words for a job without a model or without devices; the errors for an empty
// --device-chain and for --model without a directory start with them.
inline constexpr const char* kNoModelOrChain = "Model is None or device_chain is empty";

struct DeviceSpec {
  enum class Kind { kCpu, kCuda };
  Kind kind = Kind::kCpu;
  int index = -1;  // cuda only: -1 means "the rank's local GPU" (plain "cuda")
  std::string str() const;
  bool is_cuda() const { return kind == Kind::kCuda; }
  bool operator==(const DeviceSpec& o) const { return kind == o.kind && index == o.index; }
};

// "cpu", "cuda", "cuda:N"; throws ConfigError "Invalid device: <name>" with the accepted forms.
DeviceSpec parse_device(const std::string& text);

struct ChainEntry {
  DeviceSpec device;
  double weight = 1.0;
};

struct DeviceChain {
  std::vector<ChainEntry> entries;
  // "auto": one entry per rank on its local device, weighted by free memory (auto_vram_balance).
  bool automatic = false;
  std::string str() const;
};

// Parses --device-chain (once, in the CLI). Entries are "device" or "device=weight" separated by
// commas; weights are relative (need not sum to 100). Throws ConfigError for: an empty chain
// (kNoModelOrChain), a bad device ("Invalid device: ..."), a negative / NaN / non-numeric weight, and
// a zero or negative total ("Total percentage is zero or negative"); each message says how to fix it.
DeviceChain parse_device_chain(const std::string& text);

// Number of blocks per entry: proportional to the weights by largest remainder, contiguous in chain
// order, every entry at least one block. Throws ConfigError when there are more entries than blocks,
// or when the weights sum to zero (no weights at all included).
std::vector<int> partition_blocks(int num_blocks, const std::vector<double>& weights);

}  // namespace pipeswap::pipeline
