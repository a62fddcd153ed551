// The dequantise ahead of a block store (issue 17): each phase's fp8 weights become the compute dtype in
// one go, into one of two fixed workspaces, and the next phase's are dequantised on a stream of their own
// while the current phase computes, instead of each weight at its lookup on the compute stream.
//
// Per use, an fp8 Wan2.1-14B block cost about 2.2 ms more than a bf16 one on an H100 (two ATen kernels per
// weight, on the compute stream, in front of the GEMM); at 1k tokens the block computes in about 1.25 ms,
// so only overlap can hide a dequantise (even the fused one moves 351 MB in and 703 MB out per block).
//
// Streams and events (the ahead's part of block_weights.h's contract):
//  - compute: the device's current stream; side: one stream from the pool, used only for dequantising
//    ahead (not the copy stream: a dequantise must not queue behind the next slot's 12 ms copy).
//  - written[i]: recorded on the side stream after a dequantise into workspace i; compute waits on it
//    (device-side) before the phase that reads workspace i.
//  - free[i]: recorded on the compute stream when the phase using workspace i is released; the next
//    dequantise into i on the side stream waits on it.
//  - The side stream also waits, before reading a swapped phase's bytes, for its slot's `ready` (through
//    the caller's `inputs_ready`). A slot is refilled only after its phases were released, which is after
//    their compute, which waited on written[i]: the side stream has read the bytes by then.
//  - A dequantise that take() needs and prepare() did not issue (the first phase, an unexpected order)
//    runs on the compute stream, after written[i] of the workspace it overwrites.
// No host waits. On a CPU rank (tests) every dequantise runs at once on the calling thread, into the same
// workspaces with the same bookkeeping.
//
// Stage thread only; one phase held at a time (acquire, compute, release), as the stages run them.
#pragma once

#include <c10/core/Event.h>
#include <c10/core/Stream.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <torch/types.h>

#include <array>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <vector>

#include "pipeswap/core/weights.h"

namespace pipeswap::offload {

class Fp8Ahead {
 public:
  // Makes the side stream's reads wait for a phase's bytes (a slot's ready event); empty: they rest.
  using InputsReady = std::function<void(const c10::Stream& side)>;

  // Two workspaces of `workspace_bytes` (fp8_workspace_bytes: the largest phase's fp8 tensors in the
  // compute dtype) on `device`.
  Fp8Ahead(torch::Device device, int64_t workspace_bytes);
  ~Fp8Ahead();
  Fp8Ahead(const Fp8Ahead&) = delete;
  Fp8Ahead& operator=(const Fp8Ahead&) = delete;

  // At acquire, after the compute stream waits for the phase's bytes: `src` (a view whose address stays
  // valid: the store's resident or slot views) with its fp8 weights in the compute dtype. The copy
  // prepare() made ahead when it was for `src`, else dequantised now on the compute stream. A view
  // without fp8 weights is returned as it is. Valid until release().
  const WeightView& take(const WeightView& src);
  // Right after take: dequantise `next` (the phase that will be acquired next) into the other workspace
  // on the side stream, after `inputs_ready`.
  void prepare(const WeightView& next, const InputsReady& inputs_ready);
  // At release: the workspace of the phase taken is free once the compute issued so far has run.
  void release();

  int64_t device_bytes() const { return 2 * workspace_bytes_; }
  // Counts for tests and the run's summary: phases taken from the copy made ahead, and made at take.
  int64_t hits() const { return hits_; }
  int64_t misses() const { return misses_; }

 private:
  struct Prepared {
    std::unique_ptr<WeightView> view;  // src with `dequantised` set into this workspace
    std::vector<std::string> names;    // its fp8 weights
    std::vector<torch::Tensor> outs;   // their copies in the workspace
  };
  // The view of `src` whose copies lie in workspace i, built once per (src, i).
  Prepared& prepared(const WeightView& src, int i);
  void dequantise(Prepared& p, const WeightView& src);
  bool async() const { return side_.has_value(); }

  torch::Device device_;
  int64_t workspace_bytes_;
  std::array<torch::Tensor, 2> workspace_;
  std::map<const WeightView*, std::array<Prepared, 2>> prepared_;
  std::optional<c10::impl::VirtualGuardImpl> guard_impl_;  // CUDA only
  std::optional<c10::Stream> side_;
  std::vector<c10::Event> written_, free_;
  int current_ = -1;                   // workspace of the phase taken, -1: none
  int last_ = 1;                       // workspace of the phase taken last
  const WeightView* ahead_ = nullptr;  // what prepare() issued, into workspace ahead_ws_
  int ahead_ws_ = -1;
  int64_t hits_ = 0, misses_ = 0;
};

}  // namespace pipeswap::offload
