// The block store of a rank (block_weights.h): resident units in slabs of their own, swapped units
// streamed through the device slots by a copy thread from a host source (host_source.h).
#include "pipeswap/offload/block_weights.h"

#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>

#include "component_weights.h"
#include "fp8_ahead.h"
#include "host_source.h"
#include "pipeswap/core/error.h"
#include "pipeswap/core/trace.h"
#include "swap_backend.h"
#include "unit_io.h"

namespace pipeswap::offload {
namespace {

// Waits of the copy thread shorter than this are the lock hand-over, not a starved copy thread.
constexpr int64_t kTracedWaitNs = 20'000;

class BlockStore final : public BlockWeights {
 public:
  BlockStore(const ModelParts& model, std::shared_ptr<const Checkpoint> ckpt, const OwnedParts& owned,
             const SwapLayout& layout, torch::Device device, const OffloadOptions& opts)
      : ckpt_(ckpt),
        first_block_(owned.first_block),
        end_block_(owned.end_block),
        opts_(opts),
        layout_(layout),
        components_(model, ckpt, owned, layout.dtype, device, opts) {
    PS_CHECK(layout.first_block == owned.first_block && layout.end_block == owned.end_block, Error,
             "the swap layout is for blocks [{}, {}), the rank owns [{}, {})", layout.first_block, layout.end_block,
             owned.first_block, owned.end_block);
    const int n = owned.end_block - owned.first_block;
    nphases_ = static_cast<int>(model.phase_names().size());
    device_bytes_ = components_.device_bytes();

    // Units in compute order; resident ones get slabs of their own now.
    unit_of_phase_.assign(static_cast<size_t>(n * nphases_), -1);
    views_.resize(static_cast<size_t>(n * nphases_));
    for (const Unit& u : layout_.units) {
      const int b = u.block - owned.first_block;
      if (!u.swapped) {
        torch::Tensor slab = load_unit(*ckpt, u, device, "read (resident)");
        device_bytes_ += u.bytes;
        std::vector<WeightView> per_part = unit_views(u, slab);
        for (int p = u.first_phase; p < u.end_phase; ++p)
          views_[static_cast<size_t>(b * nphases_ + p)] = std::move(per_part[static_cast<size_t>(p - u.first_phase)]);
        resident_slabs_.push_back(slab);
        continue;
      }
      for (int p = u.first_phase; p < u.end_phase; ++p)
        unit_of_phase_[static_cast<size_t>(b * nphases_ + p)] = static_cast<int>(units_.size());
      units_.push_back(&u);
    }
    // fp8 block weights: each phase's dequantised in one go, the next one's on a side stream (fp8_ahead.h).
    // Its workspaces are the plan's workspace (dequantise_ahead there too), not weight bytes.
    if (n > 0 && dequantise_ahead(opts, device.is_cuda())) {
      const int64_t ws = fp8_workspace_bytes(model, opts.storage, layout.dtype);
      if (ws > 0) ahead_ = std::make_unique<Fp8Ahead>(device, ws);
    }
    if (units_.empty()) return;

    backend_ = device.is_cpu() ? make_cpu_backend() : make_device_backend(device, layout_.num_slots);
    source_ = make_host_source(ckpt, units_, layout_, opts, *backend_, stats_.pinned);
    slots_.resize(static_cast<size_t>(layout_.num_slots));
    for (auto& s : slots_) s = backend_->device_slab(layout_.slot_bytes);
    device_bytes_ += layout_.slot_bytes * layout_.num_slots;
    slot_views_.resize(slots_.size() * units_.size());
    demand_ = layout_.num_slots - 1;  // prefetch the first K units before the first acquire
    startup_read_ = static_cast<int64_t>(ckpt_->bytes_read());
    if (opts.use_non_blocking) copier_ = std::thread([this] { copy_loop(); });
  }

  ~BlockStore() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
      cv_.notify_all();
    }
    if (source_) source_->stop();
    if (copier_.joinable()) copier_.join();
  }

  const WeightView& acquire(int block, int phase) override {
    const WeightView& w = acquire_bytes(block, phase);
    if (!ahead_) return w;
    const WeightView& out = ahead_->take(w);
    prepare_next(block, phase);
    return out;
  }

  // The phase's weights as they rest (fp8 as bytes), in the slot once its fill is waited for.
  const WeightView& acquire_bytes(int block, int phase) {
    const size_t idx = index(block, phase);
    const int u = unit_of_phase_[idx];
    if (u < 0) return views_[idx];
    const Unit& unit = *units_[static_cast<size_t>(u)];
    if (phase == unit.first_phase) {
      const int64_t g = next_++;
      PS_CHECK(static_cast<int>(g % static_cast<int64_t>(units_.size())) == u, Error,
               "blocks acquired out of order: block {} phase {} at sequence position {}", block, phase, g);
      PS_CHECK(g < limit_, Error, "block {} acquired past the declared sweeps (call expect_sweeps)", block);
      current_ = g;
      const int slot = static_cast<int>(g % static_cast<int64_t>(slots_.size()));
      if (opts_.use_non_blocking) {
        std::unique_lock<std::mutex> lock(mu_);
        demand_ = g + static_cast<int64_t>(slots_.size()) - 1;  // copies up to g + K may start
        cv_.notify_all();
        // Traced only when it blocks: the copy of g has not been issued yet.
        const int64_t t0 = (trace::enabled() && filled_ <= g) ? trace::now_ns() : 0;
        cv_.wait(lock, [&] { return filled_ > g || error_; });
        if (t0) trace::record(trace::Kind::kWait, "wait for slot", t0, trace::now_ns(), unit_args(unit, g, -1));
        if (error_) std::rethrow_exception(error_);
      } else {
        const torch::Tensor host = source_->wait(g);
        backend_->copy_sync(slots_[static_cast<size_t>(slot)], host, unit.bytes, unit_args(unit, g, unit.bytes));
        source_->done(g);
        ++stats_.copies;
      }
      backend_->compute_waits_for(slot);
    }
    const int slot = static_cast<int>(current_ % static_cast<int64_t>(slots_.size()));
    return slot_view(slot, u, phase);
  }

  void release(int block, int phase) override {
    if (ahead_) ahead_->release();
    const size_t idx = index(block, phase);
    const int u = unit_of_phase_[idx];
    if (u < 0 || phase != units_[static_cast<size_t>(u)]->end_phase - 1) return;
    const int slot = static_cast<int>(current_ % static_cast<int64_t>(slots_.size()));
    backend_->compute_releases(slot);
    std::lock_guard<std::mutex> lock(mu_);
    released_ = current_ + 1;
    cv_.notify_all();
  }

  const WeightView& acquire_prologue() override { return components_.acquire(Side::kPrologue); }
  void release_prologue() override { components_.release(Side::kPrologue); }
  const WeightView& acquire_epilogue() override { return components_.acquire(Side::kEpilogue); }
  void release_epilogue() override { components_.release(Side::kEpilogue); }
  int64_t device_bytes() const override { return device_bytes_; }

  void expect_sweeps(int sweeps) override {
    if (units_.empty()) return;
    std::lock_guard<std::mutex> lock(mu_);
    limit_ += static_cast<int64_t>(sweeps) * static_cast<int64_t>(units_.size());
    source_->set_limit(limit_);
    cv_.notify_all();
  }

  OffloadStats stats() const override {
    OffloadStats s = stats_;
    s.device_bytes = device_bytes_;
    s.host_peak_bytes = components_.host_bytes();
    if (source_) {
      s.host_peak_bytes += source_->peak_bytes();
      s.disk_bytes_read = static_cast<int64_t>(ckpt_->bytes_read()) - startup_read_;
    }
    std::lock_guard<std::mutex> lock(mu_);
    s.copies += copies_;
    if (ahead_) {
      s.fp8_ahead_hits = ahead_->hits();
      s.fp8_ahead_misses = ahead_->misses();
    }
    return s;
  }

 private:
  size_t index(int block, int phase) const {
    const int b = block - first_block_;
    PS_CHECK(b >= 0 && static_cast<size_t>(b * nphases_ + phase) < unit_of_phase_.size(), Error,
             "block {} is not owned by this rank", block);
    return static_cast<size_t>(b * nphases_ + phase);
  }

  // The fp8 dequantise ahead of the phase that follows (block, phase) in compute order (the next sweep's
  // first after the last), where its bytes are in place or their fill is issued: resident, a later phase
  // of the unit in use, or the next swapped position once the copy thread has issued its fill. Else
  // nothing: take() dequantises it at its acquire.
  void prepare_next(int block, int phase) {
    int nb = block, np = phase + 1;
    if (np == nphases_) {
      np = 0;
      nb = block + 1 < end_block_ ? block + 1 : first_block_;
    }
    const size_t idx = index(nb, np);
    const int u = unit_of_phase_[idx];
    if (u < 0) return ahead_->prepare(views_[idx], {});
    const Unit& unit = *units_[static_cast<size_t>(u)];
    const bool same_unit = unit_of_phase_[index(block, phase)] == u && np != unit.first_phase;
    const int64_t g = same_unit ? current_ : next_;
    if (!same_unit) {
      if (g % static_cast<int64_t>(units_.size()) != u || !opts_.use_non_blocking) return;
      std::lock_guard<std::mutex> lock(mu_);
      if (g >= limit_ || filled_ <= g) return;  // no fill of g issued yet (or none to come)
    }
    const int slot = static_cast<int>(g % static_cast<int64_t>(slots_.size()));
    ahead_->prepare(slot_view(slot, u, np),
                    [this, slot](const c10::Stream& side) { backend_->stream_waits_for(slot, side); });
  }

  // Views of unit u's tensors in a slot, built once per (slot, unit).
  const WeightView& slot_view(int slot, int u, int phase) {
    auto& per_phase = slot_views_[static_cast<size_t>(slot) * units_.size() + static_cast<size_t>(u)];
    const Unit& unit = *units_[static_cast<size_t>(u)];
    if (per_phase.empty()) per_phase = unit_views(unit, slots_[static_cast<size_t>(slot)]);
    return per_phase[static_cast<size_t>(phase - unit.first_phase)];
  }

  // The copy thread: fills slot g % (K+1) with position g once asked for, once the host bytes are
  // there, and once the slot's previous occupant (g - K - 1) was released.
  void copy_loop() {
    const int64_t nslots = static_cast<int64_t>(slots_.size());
    for (int64_t g = 0;; ++g) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stopping_ || (g <= demand_ && g < limit_ && released_ >= g - nslots + 1); });
        if (stopping_) return;
      }
      try {
        const int slot = static_cast<int>(g % nslots);
        const Unit& unit = *units_[static_cast<size_t>(g % static_cast<int64_t>(units_.size()))];
        const int64_t t0 = trace::enabled() ? trace::now_ns() : 0;
        const torch::Tensor host = source_->wait(g);
        // A wait for the disk tier (lazy_load) longer than taking the lock: the copy thread starved.
        if (t0 && trace::now_ns() - t0 > kTracedWaitNs) {
          trace::record(trace::Kind::kWait, "wait for disk", t0, trace::now_ns(), unit_args(unit, g, -1),
                        trace::Lane::kCopy);
        }
        trace::Args what = unit_args(unit, g, unit.bytes);
        what.slot = slot;
        backend_->fill_slot(slot, slots_[static_cast<size_t>(slot)], host, unit.bytes, what);
        {
          std::lock_guard<std::mutex> lock(mu_);
          filled_ = g + 1;
          ++copies_;
          cv_.notify_all();
        }
        // A buffer the source reuses (the lazy tier's staging) may be handed back only once its copy is
        // done; bytes kept for the whole job need no host wait: events alone order copy and compute.
        if (!source_->keeps_bytes()) backend_->wait_filled(slot);
        source_->done(g);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu_);
        error_ = std::current_exception();
        cv_.notify_all();
        return;
      }
    }
  }

  std::shared_ptr<const Checkpoint> ckpt_;
  int64_t startup_read_ = 0;  // checkpoint bytes read before the first sweep
  int first_block_;
  int end_block_;
  OffloadOptions opts_;
  int nphases_ = 1;
  const SwapLayout layout_;
  ComponentWeights components_;
  std::vector<torch::Tensor> resident_slabs_;
  std::vector<WeightView> views_;         // resident blocks, per (block, phase)
  std::vector<int> unit_of_phase_;        // (block, phase) -> swapped unit, -1 when resident
  std::vector<const Unit*> units_;        // swapped units in compute order (in layout_)
  std::unique_ptr<SwapBackend> backend_;  // made only when something swaps
  std::unique_ptr<HostSource> source_;
  std::vector<torch::Tensor> slots_;
  std::vector<std::vector<WeightView>> slot_views_;
  std::unique_ptr<Fp8Ahead> ahead_;  // fp8 block weights dequantised ahead; null: per use
  int64_t device_bytes_ = 0;
  OffloadStats stats_;

  // Stage thread only.
  int64_t next_ = 0;
  int64_t current_ = -1;

  // Shared with the copy thread.
  mutable std::mutex mu_;
  std::condition_variable cv_;
  int64_t demand_ = 0;    // copies of positions <= demand_ may start
  int64_t limit_ = 0;     // positions < limit_ will be used
  int64_t filled_ = 0;    // positions < filled_ are in their slots
  int64_t released_ = 0;  // positions < released_ are done with their slots
  int64_t copies_ = 0;
  bool stopping_ = false;
  std::exception_ptr error_;
  std::thread copier_;
};

}  // namespace

std::unique_ptr<BlockWeights> make_block_weights(const ModelParts& model, std::shared_ptr<const Checkpoint> ckpt,
                                                 const OwnedParts& owned, const SwapLayout& layout,
                                                 torch::Device device, const OffloadOptions& opts) {
  return std::make_unique<BlockStore>(model, std::move(ckpt), owned, layout, device, opts);
}

}  // namespace pipeswap::offload
