// The lazy tier's reader alone against raw O_DIRECT reads of the same bytes, interleaved so that a
// virtual disk's drift (10-40% from minute to minute) hits both alike. Prints one JSON object.
//
//   build/bench/disk_read_bw FILE [--workers 1] [--rounds 2] [--group-mib 200]
//
// The file's tensors, in offset order, are cut into groups of about --group-mib (a swapped block's
// worth). Each of --workers threads takes every workers-th group, as disk workers take units, and
// all threads read their groups of one step at once, either raw (aligned O_DIRECT preads of 16 MiB
// into one buffer and nothing else, as dd does: bench/disk_bw.sh) or with
// SafetensorsFile::read_many into a slab laid out like offload's (tensors 256-aligned). Steps
// alternate between the two, and rounds swap which steps are which, so every group is read once
// each way per two rounds and no bytes are read twice in a row (a virtual disk's host may cache
// what was just read). A step's time is its wall time between barriers: the rates are those of
// `workers` streams together. Both reads bypass the page cache.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "pipeswap/core/log.h"
#include "pipeswap/core/safetensors.h"

using namespace pipeswap;

namespace {

constexpr uint64_t kRequest = uint64_t{16} << 20;
constexpr uint64_t kAlign = 4096;

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
using Buffer = std::unique_ptr<char, FreeDeleter>;

Buffer aligned_buffer(uint64_t bytes) {
  void* p = nullptr;
  if (::posix_memalign(&p, kAlign, std::max<uint64_t>(bytes, kAlign)) != 0) throw std::bad_alloc();
  return Buffer(static_cast<char*>(p));
}

struct Group {
  std::vector<const TensorInfo*> tensors;
  uint64_t begin = 0, end = 0;  // file bytes
  uint64_t bytes = 0;           // tensor bytes
  uint64_t slab = 0;            // slab bytes (256-aligned tensors)
};

// dd's read: 16 MiB O_DIRECT requests into one buffer, nothing copied.
void read_raw(int fd, const Group& g, char* buf) {
  const uint64_t stop = (g.end + kAlign - 1) / kAlign * kAlign;
  for (uint64_t pos = g.begin / kAlign * kAlign; pos < stop; pos += kRequest) {
    const ssize_t got = ::pread(fd, buf, std::min(kRequest, stop - pos), static_cast<off_t>(pos));
    if (got <= 0) break;
  }
}

// Every thread waits until all have arrived (std::barrier is C++20; the tree is C++17).
class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}
  void arrive_and_wait() {
    std::unique_lock<std::mutex> lock(mu_);
    const uint64_t gen = gen_;
    if (++arrived_ == n_) {
      arrived_ = 0;
      ++gen_;
      cv_.notify_all();
      return;
    }
    cv_.wait(lock, [&] { return gen_ != gen; });
  }

 private:
  const int n_;
  int arrived_ = 0;
  uint64_t gen_ = 0;
  std::mutex mu_;
  std::condition_variable cv_;
};

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: disk_read_bw FILE [--workers N] [--rounds R] [--group-mib M]\n";
    return 2;
  }
  const std::string path = argv[1];
  int workers = 1, rounds = 2;
  uint64_t group_bytes = uint64_t{200} << 20;
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--workers") workers = std::max(1, std::atoi(argv[i + 1]));
    if (a == "--rounds") rounds = std::max(1, std::atoi(argv[i + 1]));
    if (a == "--group-mib") group_bytes = static_cast<uint64_t>(std::max(1, std::atoi(argv[i + 1]))) << 20;
  }
  try {
    auto file = SafetensorsFile::open(path);
    std::vector<Group> groups(1);
    for (const TensorInfo& t : file->tensors()) {
      if (t.nbytes() == 0) continue;
      Group& g = groups.back();
      if (g.tensors.empty()) g.begin = file->data_offset() + t.begin;
      g.tensors.push_back(&t);
      g.end = file->data_offset() + t.end;
      g.bytes += t.nbytes();
      g.slab = (g.slab + t.nbytes() + 255) / 256 * 256;
      if (g.bytes >= group_bytes) groups.emplace_back();
    }
    if (groups.back().tensors.empty()) groups.pop_back();
    const int fd = ::open(path.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
    if (fd < 0) {
      std::cerr << "disk_read_bw: O_DIRECT open of " << path << " refused\n";
      return 1;
    }
    uint64_t max_slab = 0;
    for (const Group& g : groups) max_slab = std::max(max_slab, g.slab);
    const size_t steps = (groups.size() + static_cast<size_t>(workers) - 1) / static_cast<size_t>(workers);
    Barrier sync(workers);
    std::vector<double> raw_s(static_cast<size_t>(workers)), many_s(static_cast<size_t>(workers));
    std::vector<uint64_t> raw_bytes(static_cast<size_t>(workers)), many_bytes(static_cast<size_t>(workers));
    std::vector<uint64_t> step_bytes(steps);  // every thread's groups of one step together
    for (size_t gi = 0; gi < groups.size(); ++gi) step_bytes[gi / static_cast<size_t>(workers)] += groups[gi].bytes;
    std::vector<std::thread> threads;
    for (int w = 0; w < workers; ++w) {
      threads.emplace_back([&, w] {
        Buffer raw = aligned_buffer(kRequest);
        // A slab as offload lays them out: tensors 256-aligned from a 64-aligned base.
        std::vector<char> slab(max_slab + 64);
        char* base = slab.data() + (64 - reinterpret_cast<uintptr_t>(slab.data()) % 64) % 64;
        for (int r = 0; r < rounds; ++r) {
          for (size_t s = 0; s < steps; ++s) {
            const size_t gi = s * static_cast<size_t>(workers) + static_cast<size_t>(w);
            const Group* g = gi < groups.size() ? &groups[gi] : nullptr;
            std::vector<ReadRequest> requests;
            if (g) {
              uint64_t off = 0;
              for (const TensorInfo* t : g->tensors) {
                requests.push_back({t, base + off});
                off = (off + t->nbytes() + 255) / 256 * 256;
              }
            }
            // One method per step for every thread: `workers` streams of one kind at a time.
            const bool raw_step = (s + static_cast<size_t>(r)) % 2 == 0;
            sync.arrive_and_wait();
            const auto t0 = std::chrono::steady_clock::now();
            if (g && raw_step) read_raw(fd, *g, raw.get());
            if (g && !raw_step) file->read_many(requests);
            sync.arrive_and_wait();
            (raw_step ? raw_s : many_s)[static_cast<size_t>(w)] += seconds_since(t0);
            (raw_step ? raw_bytes : many_bytes)[static_cast<size_t>(w)] += step_bytes[s];
          }
        }
      });
    }
    for (auto& t : threads) t.join();
    ::close(fd);
    // Every thread's phase ends at the same barrier: thread 0's sums are the wall times.
    nlohmann::json j = {{"bench", "disk_read_bw"},
                        {"file", path},
                        {"workers", workers},
                        {"groups", groups.size()},
                        {"raw_bytes", raw_bytes[0]},
                        {"read_many_bytes", many_bytes[0]},
                        {"direct_io_used", file->direct_io_used()},
                        {"raw_gbs", raw_bytes[0] / raw_s[0] / 1e9},
                        {"read_many_gbs", many_bytes[0] / many_s[0] / 1e9},
                        {"fraction_of_raw", (many_bytes[0] / many_s[0]) / (raw_bytes[0] / raw_s[0])}};
    std::cout << j.dump() << std::endl;
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "disk_read_bw: " << e.what() << "\n";
    return 1;
  }
}
