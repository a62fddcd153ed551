#include "fp8_ahead.h"

#include <c10/core/StreamGuard.h>

#include "pipeswap/core/error.h"
#include "pipeswap/core/fp8.h"
#include "pipeswap/core/torch_compat.h"
#include "pipeswap/offload/residency.h"

namespace pipeswap::offload {

Fp8Ahead::Fp8Ahead(torch::Device device, int64_t workspace_bytes) : device_(device), workspace_bytes_(workspace_bytes) {
  for (auto& w : workspace_)
    w = torch::empty({workspace_bytes}, torch::TensorOptions().dtype(torch::kUInt8).device(device));
  if (device.is_cuda()) {
    guard_impl_.emplace(device.type());
    side_ = guard_impl_->getStreamFromGlobalPool(device);
    for (int i = 0; i < 2; ++i) {
      written_.emplace_back(device.type());
      free_.emplace_back(device.type());
    }
  }
}

Fp8Ahead::~Fp8Ahead() {
  // The workspaces go back to the caching allocator on the compute stream's account: the side stream must
  // be done writing them first (teardown only).
  for (auto& e : written_) {
    try {
      compat::synchronize_event(e);
    } catch (...) {
    }
  }
}

Fp8Ahead::Prepared& Fp8Ahead::prepared(const WeightView& src, int i) {
  auto& both = prepared_[&src];
  Prepared& p = both[static_cast<size_t>(i)];
  if (p.view) return p;
  p.view = std::make_unique<WeightView>(src);
  p.names = src.fp8_names();
  int64_t offset = 0;
  for (const auto& name : p.names) {
    const WeightView::Fp8Weight& w = *src.fp8(name);
    const int64_t n = w.bytes.numel() * static_cast<int64_t>(c10::elementSize(w.dtype));
    PS_CHECK(offset + n <= workspace_bytes_, Error,
             "the fp8 workspace ({} bytes) is smaller than this phase's fp8 weights in the compute dtype (bug: "
             "fp8_workspace_bytes and the store disagree)",
             workspace_bytes_);
    torch::Tensor out = workspace_[static_cast<size_t>(i)].narrow(0, offset, n).view(w.dtype).view(w.bytes.sizes());
    p.view->set_dequantised(name, out);
    p.outs.push_back(out);
    offset += (n + kFp8WorkspaceAlign - 1) / kFp8WorkspaceAlign * kFp8WorkspaceAlign;
  }
  return p;
}

void Fp8Ahead::dequantise(Prepared& p, const WeightView& src) {
  for (size_t k = 0; k < p.names.size(); ++k) {
    const WeightView::Fp8Weight& w = *src.fp8(p.names[k]);
    dequantize_fp8_into(w.bytes, w.format, w.scale, p.outs[k]);
  }
}

const WeightView& Fp8Ahead::take(const WeightView& src) {
  PS_CHECK(current_ < 0, Error, "a phase was acquired while another is held: the fp8 dequantise ahead holds one");
  const bool hit = ahead_ == &src;
  // A miss overwrites the workspace a stale copy made ahead is not in.
  const int i = hit ? ahead_ws_ : (ahead_ws_ >= 0 ? 1 - ahead_ws_ : 1 - last_);
  ahead_ = nullptr;
  ahead_ws_ = -1;
  Prepared& p = prepared(src, i);
  if (p.names.empty()) return src;
  // Compute reads (hit) or overwrites (miss) workspace i only after the side stream's last write to it.
  if (async()) written_[static_cast<size_t>(i)].block(guard_impl_->getStream(device_));
  if (hit) {
    ++hits_;
  } else {
    ++misses_;
    dequantise(p, src);  // on the compute stream, in front of the phase, as per use did
  }
  current_ = i;
  last_ = i;
  return *p.view;
}

void Fp8Ahead::prepare(const WeightView& next, const InputsReady& inputs_ready) {
  const int j = 1 - (current_ >= 0 ? current_ : last_);
  Prepared& p = prepared(next, j);
  if (p.names.empty()) return;
  if (async()) {
    const c10::StreamGuard guard(*side_);
    free_[static_cast<size_t>(j)].block(*side_);  // the phase that read workspace j has run
    if (inputs_ready) inputs_ready(*side_);
    dequantise(p, next);
    written_[static_cast<size_t>(j)].record(*side_);
  } else {
    dequantise(p, next);
  }
  ahead_ = &next;
  ahead_ws_ = j;
}

void Fp8Ahead::release() {
  if (current_ < 0) return;
  if (async()) free_[static_cast<size_t>(current_)].record(guard_impl_->getStream(device_));
  current_ = -1;
}

}  // namespace pipeswap::offload
