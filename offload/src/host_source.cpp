#include "host_source.h"

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <exception>
#include <map>
#include <mutex>
#include <thread>

#include "pipeswap/core/error.h"
#include "unit_io.h"

namespace pipeswap::offload {
namespace {

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
  torch::Tensor wait(int64_t g) override {
    return slabs_[static_cast<size_t>(g % static_cast<int64_t>(slabs_.size()))];
  }
  void done(int64_t) override {}
  bool keeps_bytes() const override { return true; }
  void set_limit(int64_t) override {}
  int64_t peak_bytes() const override { return bytes_; }
  void stop() override {}

 private:
  std::vector<torch::Tensor> slabs_;
  int64_t bytes_ = 0;
};

// lazy_load: disk worker threads read units from the safetensors files ahead of the copy thread.
// The units the layout caches (every one that fits in the budget, chosen by plan_swapping) are read
// once and kept ("sticky"): never evicted, since under the sweeps' cyclic order any eviction would
// throw out a unit needed again before the units read in its place. The rest stream through the
// staging buffers every sweep. Host memory is what the layout says: the cached units plus the staging
// buffers.
class LazySource final : public HostSource {
 public:
  LazySource(std::shared_ptr<const Checkpoint> ckpt, std::vector<const Unit*> units, const SwapLayout& layout,
             int workers, SwapBackend& backend, bool& pinned)
      : ckpt_(std::move(ckpt)), units_(std::move(units)), backend_(backend) {
    for (const Unit* u : units_) sticky_.push_back(u->cached);
    loaded_.assign(units_.size(), torch::Tensor());
    state_.assign(units_.size(), kNotLoaded);
    for (int i = 0; i < layout.staging_buffers; ++i) {
      staging_.push_back(backend.host_slab(layout.staging_bytes, pinned));
      free_staging_.push_back(i);
      bytes_ += layout.staging_bytes;
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

}  // namespace

std::unique_ptr<HostSource> make_host_source(std::shared_ptr<const Checkpoint> ckpt, std::vector<const Unit*> units,
                                             const SwapLayout& layout, const OffloadOptions& opts, SwapBackend& backend,
                                             bool& pinned) {
  if (opts.lazy_load) {
    return std::make_unique<LazySource>(std::move(ckpt), std::move(units), layout, opts.num_disk_workers, backend,
                                        pinned);
  }
  return std::make_unique<PreloadedSource>(*ckpt, units, backend, pinned);
}

}  // namespace pipeswap::offload
