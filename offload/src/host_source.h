// Host sources: where a swapped unit's bytes are on the host when the copy thread needs them (see
// block_weights.h for the threads): read once at start-up, or streamed from disk by worker threads
// within the host cache budget (lazy_load).
#pragma once

#include <torch/types.h>

#include <memory>
#include <vector>

#include "pipeswap/core/checkpoint.h"
#include "pipeswap/offload/residency.h"
#include "swap_backend.h"

namespace pipeswap::offload {

class HostSource {
 public:
  virtual ~HostSource() = default;
  // Copy thread: blocks until the bytes of sequence position g are in host memory; returns them.
  virtual torch::Tensor wait(int64_t g) = 0;
  // Copy thread: position g's bytes have been copied out; the buffer may be reused.
  virtual void done(int64_t g) = 0;
  // True when the bytes wait() returns stay valid for the whole job (read once at start-up): then
  // nothing waits on the host for a copy to finish, the copy stream's events order everything.
  virtual bool keeps_bytes() const { return false; }
  // Positions [0, limit) will be asked for; nothing past it is read.
  virtual void set_limit(int64_t limit) = 0;
  virtual int64_t peak_bytes() const = 0;
  virtual void stop() = 0;
};

// Swapped `units` (in compute order) on the host: every one read at start-up, or with lazy_load
// streamed by `num_disk_workers` threads within layout's host budget. `pinned` reports whether the
// host memory is page-locked (written by disk workers later with lazy_load).
std::unique_ptr<HostSource> make_host_source(std::shared_ptr<const Checkpoint> ckpt, std::vector<const Unit*> units,
                                             const SwapLayout& layout, const OffloadOptions& opts, SwapBackend& backend,
                                             bool& pinned);

}  // namespace pipeswap::offload
