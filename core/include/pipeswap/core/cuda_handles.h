// RAII for the CUDA runtime handles pipeswap creates itself (LibTorch owns its own streams and
// events): unique_ptr with a deleter, so each is destroyed exactly once and never throws. For files
// built with the CUDA toolkit (PIPESWAP_HAVE_CUDA).
#pragma once

#ifdef PIPESWAP_HAVE_CUDA
#include <cuda_runtime_api.h>

#include <memory>

#include "pipeswap/core/error.h"

namespace pipeswap::cuda {

struct StreamDestroy {
  void operator()(cudaStream_t s) const noexcept { cudaStreamDestroy(s); }
};
using StreamPtr = std::unique_ptr<CUstream_st, StreamDestroy>;

// A stream of our own (flags: cudaStreamNonBlocking and the like) on the current device.
inline StreamPtr make_stream(unsigned flags) {
  cudaStream_t s = nullptr;
  PS_CHECK_CUDA(cudaStreamCreateWithFlags(&s, flags));
  return StreamPtr(s);
}

struct EventDestroy {
  void operator()(cudaEvent_t e) const noexcept { cudaEventDestroy(e); }
};
// Shared: a watchdog may hold an event as long as the thread that recorded it.
using EventPtr = std::shared_ptr<CUevent_st>;

// An event without timing (the cheap kind, for ordering only).
inline EventPtr make_event() {
  cudaEvent_t e = nullptr;
  PS_CHECK_CUDA(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  return EventPtr(e, EventDestroy());
}

}  // namespace pipeswap::cuda
#endif  // PIPESWAP_HAVE_CUDA
