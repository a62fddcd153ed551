#include "pipeswap/core/host_memory.h"

#include <c10/core/CPUAllocator.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <unordered_map>

#include "pipeswap/core/torch_compat.h"

namespace pipeswap {
namespace {

std::atomic<int64_t> g_bytes{0};
std::atomic<int64_t> g_peak{0};
std::atomic<bool> g_installed{false};

// Wraps the allocator that was in place: each allocation's own DataPtr is kept, keyed by its address, and
// the caller gets a DataPtr whose context is that address (so the raw allocate/deallocate interface still
// works) and whose deleter gives the original back.
class CountingAllocator final : public compat::AllocatorBase {
 public:
  explicit CountingAllocator(c10::Allocator* base) : base_(base) {}

  c10::DataPtr allocate_bytes(size_t n) const override {
    c10::DataPtr inner = base_->allocate(n);
    void* data = inner.get();
    if (data == nullptr) return inner;  // zero bytes
    const c10::Device device = inner.device();
    {
      std::lock_guard<std::mutex> lock(mutex());
      live().emplace(data, Live{std::move(inner), static_cast<int64_t>(n)});
    }
    const int64_t now = g_bytes.fetch_add(static_cast<int64_t>(n)) + static_cast<int64_t>(n);
    int64_t peak = g_peak.load();
    while (now > peak && !g_peak.compare_exchange_weak(peak, now)) {
    }
    return c10::DataPtr(data, data, &release, device);
  }
  c10::DeleterFnPtr raw_deleter() const override { return &release; }

 private:
  struct Live {
    c10::DataPtr inner;
    int64_t bytes = 0;
  };
  // Function-local statics: the deleter may run during static destruction, after a namespace-scope map.
  static std::mutex& mutex() {
    static auto* m = new std::mutex();
    return *m;
  }
  static std::unordered_map<void*, Live>& live() {
    static auto* m = new std::unordered_map<void*, Live>();
    return *m;
  }
  static void release(void* data) {
    Live freed;
    {
      std::lock_guard<std::mutex> lock(mutex());
      auto it = live().find(data);
      if (it == live().end()) return;
      freed = std::move(it->second);
      live().erase(it);
    }
    g_bytes.fetch_sub(freed.bytes);
    // freed.inner's destructor hands the memory back to the wrapped allocator, outside the lock.
  }

  c10::Allocator* base_;
};

}  // namespace

void count_host_tensor_memory() {
  static std::once_flag once;
  std::call_once(once, [] {
    // Never destroyed: tensors may outlive every other static.
    static auto* counting = new CountingAllocator(c10::GetCPUAllocator());
    c10::SetCPUAllocator(counting, /*priority=*/100);
    g_installed = true;
  });
}

bool host_tensor_memory_counted() { return g_installed.load(); }
int64_t host_tensor_bytes() { return g_bytes.load(); }
int64_t host_tensor_peak() { return std::max(g_peak.load(), g_bytes.load()); }
void reset_host_tensor_peak() { g_peak = g_bytes.load(); }

}  // namespace pipeswap
