#include "pipeswap/offload/swapped_weights.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <exception>
#include <map>
#include <mutex>
#include <thread>

#include "pipeswap/core/error.h"
#include "pipeswap/core/log.h"
#include "pipeswap/core/trace.h"
#include "pipeswap/offload/slab.h"
#include "components.h"
#include "swap_backend.h"

namespace pipeswap::offload {
namespace {

// Waits of the copy thread shorter than this are the lock hand-over, not a starved copy thread.
constexpr int64_t kTracedWaitNs = 20'000;

// One swapped or resident unit: a whole block (all phases in one slab) or one phase.
struct Unit {
  int block = 0;
  int first_phase = 0;  // phases [first_phase, end_phase) live in this unit's slab
  int end_phase = 0;
  std::vector<SlabLayout> phases;  // one layout per phase of the unit
  std::vector<int64_t> base;       // byte offset of each phase's layout inside the slab
  int64_t bytes = 0;         // slab bytes (aligned)
  int64_t tensor_bytes = 0;  // bytes of the tensors themselves: what a read from disk moves
};

// `disk_dtype`: what the checkpoint stores, for tensor_bytes.
std::vector<Unit> make_units(const ModelParts& arch, int block, Granularity g, c10::ScalarType dtype,
                             c10::ScalarType disk_dtype) {
  const auto parts = block_parts(arch, block);
  const int nphases = static_cast<int>(parts.size());
  std::vector<Unit> units;
  auto add_unit = [&](int p0, int p1) {
    Unit u;
    u.block = block;
    u.first_phase = p0;
    u.end_phase = p1;
    for (int p = p0; p < p1; ++p) {
      u.base.push_back(u.bytes);
      u.phases.push_back(make_layout(parts[p], dtype));
      for (const auto& e : u.phases.back().entries) u.tensor_bytes += pipeswap::tensor_bytes(e.shape, disk_dtype);
      u.bytes = align_up(u.bytes + u.phases.back().bytes, kSlabAlignment);
    }
    units.push_back(std::move(u));
  };
  if (g == Granularity::kPhase) {
    for (int p = 0; p < nphases; ++p) add_unit(p, p + 1);
  } else {
    add_unit(0, nphases);
  }
  return units;
}

// What the --trace timeline says about a unit: its block, its phase when it is one phase alone.
trace::Args unit_args(const Unit& u, int64_t position, int64_t bytes) {
  trace::Args a;
  a.block = u.block;
  if (u.end_phase - u.first_phase == 1) a.phase = u.first_phase;
  a.position = position;
  a.bytes = bytes;
  return a;
}

void read_unit(const Checkpoint& ckpt, const Unit& u, torch::Tensor host, const char* what = "read",
               int64_t position = -1) {
  trace::Range traced(trace::Kind::kDisk, what, unit_args(u, position, u.tensor_bytes));
  for (size_t i = 0; i < u.phases.size(); ++i) {
    torch::Tensor part = host.narrow(0, u.base[i], u.phases[i].bytes);
    read_part(ckpt, u.phases[i], part);
  }
}

// --------------------------------------------------------------------------------------------
// Host sources: where a swapped unit's bytes are on the host when the copy thread needs them.

class HostSource {
 public:
  virtual ~HostSource() = default;
  // Copy thread: blocks until the bytes of sequence position g are in host memory; returns them.
  virtual torch::Tensor wait(int64_t g) = 0;
  // Copy thread: position g's bytes have been copied out; the buffer may be reused.
  virtual void done(int64_t g) = 0;
  // Positions [0, limit) will be asked for; nothing past it is read.
  virtual void set_limit(int64_t limit) = 0;
  virtual int64_t peak_bytes() const = 0;
  virtual void stop() = 0;
};

// Every swapped unit read into host memory once at start-up.
class PreloadedSource final : public HostSource {
 public:
  PreloadedSource(const Checkpoint& ckpt, const std::vector<const Unit*>& units, SwapBackend& backend, bool& pinned) {
    for (const Unit* u : units) {
      slabs_.push_back(backend.host_slab(u->bytes, pinned));
      read_unit(ckpt, *u, slabs_.back(), "read (preload)");
      bytes_ += u->bytes;
    }
  }
  torch::Tensor wait(int64_t g) override { return slabs_[static_cast<size_t>(g % static_cast<int64_t>(slabs_.size()))]; }
  void done(int64_t) override {}
  void set_limit(int64_t) override {}
  int64_t peak_bytes() const override { return bytes_; }
  void stop() override {}

 private:
  std::vector<torch::Tensor> slabs_;
  int64_t bytes_ = 0;
};

// lazy_load: disk worker threads read units from the safetensors files ahead of the copy thread.
// Units that fit in the budget ("sticky", first in compute order) are read once and kept; the rest
// stream through staging buffers every sweep. Host memory never exceeds the budget: sticky entries
// plus staging buffers are sized by plan_swapping to fit in it.
class LazySource final : public HostSource {
 public:
  LazySource(std::shared_ptr<const Checkpoint> ckpt, std::vector<const Unit*> units, const SwapLayout& layout,
             int workers, SwapBackend& backend, bool& pinned)
      : ckpt_(std::move(ckpt)), units_(std::move(units)), backend_(backend) {
    int64_t sticky = 0;
    for (const Unit* u : units_) {
      const bool keep = sticky + u->bytes <= layout.sticky_bytes;
      sticky_.push_back(keep);
      if (keep) sticky += u->bytes;
    }
    loaded_.assign(units_.size(), torch::Tensor());
    state_.assign(units_.size(), kNotLoaded);
    for (int i = 0; i < layout.staging_buffers; ++i) {
      staging_.push_back(backend.host_slab(layout.slot_bytes, pinned));
      free_staging_.push_back(i);
      bytes_ += layout.slot_bytes;
    }
    peak_ = bytes_;
    pinned_ = &pinned;
    for (int i = 0; i < std::max(1, workers); ++i) threads_.emplace_back([this] { worker(); });
  }
  ~LazySource() override { stop(); }

  torch::Tensor wait(int64_t g) override {
    const size_t u = unit_of(g);
    std::unique_lock<std::mutex> lock(mu_);
    if (sticky_[u]) {
      cv_.wait(lock, [&] { return state_[u] == kLoaded || error_ || stopping_; });
      rethrow_locked();
      return loaded_[u];
    }
    cv_.wait(lock, [&] { return ready_.count(g) || error_ || stopping_; });
    rethrow_locked();
    return staging_[static_cast<size_t>(ready_.at(g))];
  }

  void done(int64_t g) override {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = ready_.find(g);
    if (it == ready_.end()) return;  // sticky: stays
    free_staging_.push_back(it->second);
    ready_.erase(it);
    consumed_ = g + 1;
    cv_.notify_all();
  }

  void set_limit(int64_t limit) override {
    std::lock_guard<std::mutex> lock(mu_);
    limit_ = limit;
    cv_.notify_all();
  }
  int64_t peak_bytes() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return peak_;
  }
  void stop() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
      cv_.notify_all();
    }
    for (auto& t : threads_)
      if (t.joinable()) t.join();
    threads_.clear();
  }

 private:
  enum State { kNotLoaded, kLoading, kLoaded };
  size_t unit_of(int64_t g) const { return static_cast<size_t>(g % static_cast<int64_t>(units_.size())); }
  void rethrow_locked() {
    if (error_) std::rethrow_exception(error_);
    PS_CHECK(!stopping_, Error, "swapping stopped while a unit was awaited");
  }

  // Next position a worker may read, or -1 to wait. Positions are taken in sequence order; a
  // streamed one needs a free staging buffer; nobody reads more than one sweep ahead of the copy
  // thread or past the limit.
  void worker() {
    while (true) {
      int64_t g = -1;
      int buffer = -1;
      size_t u = 0;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] {
          if (stopping_ || error_) return true;
          while (next_ < limit_ && next_ < consumed_ + static_cast<int64_t>(units_.size())) {
            const size_t nu = unit_of(next_);
            if (sticky_[nu] && state_[nu] != kNotLoaded) {
              ++next_;  // kept from an earlier sweep (or being read by another worker)
              continue;
            }
            return !sticky_[nu] ? !free_staging_.empty() : true;
          }
          return false;
        });
        if (stopping_ || error_) return;
        g = next_++;
        u = unit_of(g);
        if (sticky_[u]) {
          state_[u] = kLoading;
        } else {
          buffer = free_staging_.front();
          free_staging_.pop_front();
        }
      }
      try {
        torch::Tensor dst;
        if (sticky_[u]) {
          bool pinned = false;
          dst = backend_.host_slab(units_[u]->bytes, pinned);
          std::lock_guard<std::mutex> lock(mu_);
          *pinned_ = pinned;  // the engine reports whether its host memory is page-locked
        } else {
          dst = staging_[static_cast<size_t>(buffer)];
        }
        read_unit(*ckpt_, *units_[u], dst, sticky_[u] ? "read (kept)" : "read", g);
        std::lock_guard<std::mutex> lock(mu_);
        if (sticky_[u]) {
          loaded_[u] = dst;
          state_[u] = kLoaded;
          bytes_ += units_[u]->bytes;
          peak_ = std::max(peak_, bytes_);
        } else {
          ready_[g] = buffer;
        }
        cv_.notify_all();
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu_);
        if (!error_) error_ = std::current_exception();
        cv_.notify_all();
        return;
      }
    }
  }

  std::shared_ptr<const Checkpoint> ckpt_;
  std::vector<const Unit*> units_;
  SwapBackend& backend_;
  std::vector<bool> sticky_;
  std::vector<torch::Tensor> loaded_;
  std::vector<State> state_;
  std::vector<torch::Tensor> staging_;
  std::deque<int> free_staging_;
  std::map<int64_t, int> ready_;  // position -> staging buffer holding it
  int64_t next_ = 0;
  int64_t consumed_ = 0;
  int64_t limit_ = 0;
  int64_t bytes_ = 0;
  int64_t peak_ = 0;
  bool stopping_ = false;
  std::exception_ptr error_;
  bool* pinned_ = nullptr;  // the engine's stats flag, written under mu_
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::thread> threads_;
};

// --------------------------------------------------------------------------------------------

class SwappedWeightsImpl final : public BlockWeights {
 public:
  SwappedWeightsImpl(const ModelParts& arch, std::shared_ptr<const Checkpoint> ckpt, const OwnedParts& owned,
                     c10::ScalarType dtype, torch::Device device, const OffloadOptions& opts,
                     std::unique_ptr<SwapBackend> backend)
      : backend_(std::move(backend)),
        ckpt_(ckpt),
        first_block_(owned.first_block),
        opts_(opts),
        components_(arch, ckpt, owned, dtype, device, opts) {
    const int n = owned.end_block - owned.first_block;
    nphases_ = static_cast<int>(arch.phase_names().size());
    layout_ = plan_swapping(arch, owned.first_block, owned.end_block, dtype, opts);
    device_bytes_ = components_.device_bytes();

    // Units in compute order; resident ones get slabs of their own now.
    unit_of_phase_.assign(static_cast<size_t>(n * nphases_), -1);
    views_.resize(static_cast<size_t>(n * nphases_));
    for (int b = 0; b < n; ++b) {
      for (Unit& u : make_units(arch, owned.first_block + b, opts.granularity, dtype, opts.stored_dtype.value_or(dtype))) {
        if (!layout_.swapped_blocks[static_cast<size_t>(b)]) {
          torch::Tensor host = torch::empty({u.bytes}, torch::kUInt8);
          read_unit(*ckpt, u, host, "read (resident)");
          torch::Tensor slab = device.is_cpu() ? host : host.to(device);
          device_bytes_ += u.bytes;
          for (int p = u.first_phase; p < u.end_phase; ++p) {
            auto& view = views_[static_cast<size_t>(b * nphases_ + p)];
            const size_t i = static_cast<size_t>(p - u.first_phase);
            add_views(u.phases[i], slab.narrow(0, u.base[i], u.phases[i].bytes), view);
          }
          resident_slabs_.push_back(slab);
          continue;
        }
        for (int p = u.first_phase; p < u.end_phase; ++p)
          unit_of_phase_[static_cast<size_t>(b * nphases_ + p)] = static_cast<int>(units_.size());
        units_.push_back(std::move(u));
      }
    }
    if (units_.empty()) return;

    std::vector<const Unit*> ptrs;
    for (const Unit& u : units_) ptrs.push_back(&u);
    if (opts.lazy_load) {
      source_ = std::make_unique<LazySource>(ckpt, ptrs, layout_, opts.num_disk_workers, *backend_, stats_.pinned);
    } else {
      source_ = std::make_unique<PreloadedSource>(*ckpt, ptrs, *backend_, stats_.pinned);
    }
    slots_.resize(static_cast<size_t>(layout_.num_slots));
    for (auto& s : slots_) s = backend_->device_slab(layout_.slot_bytes);
    device_bytes_ += layout_.slot_bytes * layout_.num_slots;
    slot_views_.resize(slots_.size() * units_.size());
    demand_ = layout_.num_slots - 1;  // prefetch the first K units before the first acquire
    startup_read_ = static_cast<int64_t>(ckpt_->bytes_read());
    if (opts.use_non_blocking) copier_ = std::thread([this] { copy_loop(); });
  }

  ~SwappedWeightsImpl() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
      cv_.notify_all();
    }
    if (source_) source_->stop();
    if (copier_.joinable()) copier_.join();
  }

  const WeightView& acquire(int block, int phase) override {
    const size_t idx = index(block, phase);
    const int u = unit_of_phase_[idx];
    if (u < 0) return views_[idx];
    const Unit& unit = units_[static_cast<size_t>(u)];
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
    const size_t idx = index(block, phase);
    const int u = unit_of_phase_[idx];
    if (u < 0 || phase != units_[static_cast<size_t>(u)].end_phase - 1) return;
    const int slot = static_cast<int>(current_ % static_cast<int64_t>(slots_.size()));
    backend_->compute_releases(slot);
    std::lock_guard<std::mutex> lock(mu_);
    released_ = current_ + 1;
    cv_.notify_all();
  }

  const WeightView& acquire_prologue() override { return components_.acquire(true); }
  void release_prologue() override { components_.release(true); }
  const WeightView& acquire_epilogue() override { return components_.acquire(false); }
  void release_epilogue() override { components_.release(false); }
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
    return s;
  }

 private:
  size_t index(int block, int phase) const {
    const int b = block - first_block_;
    PS_CHECK(b >= 0 && static_cast<size_t>(b * nphases_ + phase) < unit_of_phase_.size(), Error,
             "block {} is not owned by this rank", block);
    return static_cast<size_t>(b * nphases_ + phase);
  }

  // Views of unit u's tensors in a slot, built once per (slot, unit).
  const WeightView& slot_view(int slot, int u, int phase) {
    auto& per_phase = slot_views_[static_cast<size_t>(slot) * units_.size() + static_cast<size_t>(u)];
    const Unit& unit = units_[static_cast<size_t>(u)];
    if (per_phase.empty()) {
      per_phase.resize(unit.phases.size());
      for (size_t i = 0; i < unit.phases.size(); ++i) {
        add_views(unit.phases[i], slots_[static_cast<size_t>(slot)].narrow(0, unit.base[i], unit.phases[i].bytes),
                  per_phase[i]);
      }
    }
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
        const Unit& unit = units_[static_cast<size_t>(g % static_cast<int64_t>(units_.size()))];
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
        backend_->wait_filled(slot);
        source_->done(g);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu_);
        error_ = std::current_exception();
        cv_.notify_all();
        return;
      }
    }
  }

  std::unique_ptr<SwapBackend> backend_;
  std::shared_ptr<const Checkpoint> ckpt_;
  int64_t startup_read_ = 0;  // checkpoint bytes read before the first sweep
  int first_block_;
  OffloadOptions opts_;
  int nphases_ = 1;
  SwapLayout layout_;
  Components components_;
  std::vector<torch::Tensor> resident_slabs_;
  std::vector<WeightView> views_;          // resident blocks, per (block, phase)
  std::vector<int> unit_of_phase_;         // (block, phase) -> swapped unit, -1 when resident
  std::vector<Unit> units_;                // swapped units in compute order
  std::unique_ptr<HostSource> source_;
  std::vector<torch::Tensor> slots_;
  std::vector<std::vector<WeightView>> slot_views_;
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

SwapLayout plan_swapping(const ModelParts& arch, int first_block, int end_block, c10::ScalarType dtype,
                         const OffloadOptions& opts) {
  SwapLayout l;
  const int n = end_block - first_block;
  const int swap = blocks_to_swap_for(opts, n);
  l.swapped_blocks = choose_swapped(n, swap, opts.policy);
  std::vector<int64_t> swapped_units, unit_disk;
  for (int b = 0; b < n; ++b) {
    for (const Unit& u : make_units(arch, first_block + b, opts.granularity, dtype, opts.stored_dtype.value_or(dtype))) {
      if (l.swapped_blocks[static_cast<size_t>(b)]) {
        swapped_units.push_back(u.bytes);
        unit_disk.push_back(u.tensor_bytes);
        l.swapped_bytes += u.bytes;
        l.slot_bytes = std::max(l.slot_bytes, u.bytes);
      } else {
        l.resident_bytes += u.bytes;
      }
    }
  }
  if (swapped_units.empty()) return l;
  PS_CHECK(opts.prefetch_depth >= 1, ConfigError, "--prefetch-depth must be at least 1 (got {})", opts.prefetch_depth);
  PS_CHECK(opts.num_disk_workers >= 1, ConfigError, "--num-disk-workers must be at least 1 (got {})",
           opts.num_disk_workers);
  l.num_slots = opts.use_non_blocking ? opts.prefetch_depth + 1 : 1;
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

std::unique_ptr<BlockWeights> make_swapped_weights(const ModelParts& arch, std::shared_ptr<const Checkpoint> ckpt,
                                                   const OwnedParts& owned, c10::ScalarType dtype, torch::Device device,
                                                   const OffloadOptions& opts) {
  std::unique_ptr<SwapBackend> backend;
  if (device.is_cpu()) {
    backend = make_cpu_backend();
  } else {
    const int slots = opts.use_non_blocking ? opts.prefetch_depth + 1 : 1;
    backend = make_device_backend(device, slots);
  }
  return std::make_unique<SwappedWeightsImpl>(arch, std::move(ckpt), owned, dtype, device, opts, std::move(backend));
}

}  // namespace pipeswap::offload
