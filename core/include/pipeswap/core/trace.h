// --trace FILE: a Chrome / Perfetto JSON timeline of what each rank did (compute per block and
// phase, slot fills, disk reads, sends, receives, and the waits between them), merged across ranks.
//
// Recording (this header, per process):
//  - Off by default; every recording call starts with one relaxed atomic load and does nothing else
//    while tracing is off (no allocation, no clock read, no lock).
//  - Thread-safe: the stage thread, the offload engine's copy thread and disk workers record into
//    one mutex-guarded buffer (events are per block or phase, never per kernel).
//  - One clock: std::chrono::steady_clock (CLOCK_MONOTONIC on Linux, shared by every process of a
//    host), in nanoseconds.
//  - Host ranges (Range, record) are the truth on CPU ranks. On a GPU, host-side ranges of
//    asynchronous work only show when it was issued, so DeviceRange records a timing-enabled
//    c10::Event pair on the stream instead; the pairs are resolved after the job (collect()) and
//    anchored to the host clock by one event that start() records and waits for. Where the LibTorch
//    version cannot time events (compat::kHasEventTiming), DeviceRange falls back to a host range.
//
// Writing (pipeline/job_trace.h): every rank hands collect()'s JSON to rank 0, which merges them with
// merge() into one file: pid = rank, tid = lane (compute, copy, disk, comm).
//
// Using it from a job (see launcher/src/commands.cpp, cmd_run):
//   pipeline::JobTrace trace(o.trace, device, rank);  // starts recording when the path is not empty
//   ... load weights, run the job: the engine and the stage loop record themselves ...
//   trace::Args tag; tag.micro_batch = j; tag.step = s;
//   trace::Context ctx(tag);                      // optional: tags this thread's events while alive
//   trace.finish(transport);                      // every rank; rank 0 writes the file
#pragma once

#include <c10/core/Device.h>
#include <c10/core/Stream.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pipeswap::trace {

enum class Kind : uint8_t { kCompute, kCopy, kDisk, kSend, kRecv, kWait };
// Rows of a rank's timeline (Chrome's tid).
// kNccl: the NCCL transport's sends and receives as the GPU ran them (device-timed on its comm stream),
// apart from kComm's host-side ranges, which on NCCL ranks only show when a transfer was issued.
enum class Lane : uint8_t { kCompute = 1, kCopy = 2, kDisk = 3, kComm = 4, kNccl = 5 };

const char* kind_name(Kind k);  // "compute", "copy", "disk", "send", "recv", "wait" (Chrome's cat)
const char* lane_name(Lane l);  // "compute", "copy", "disk", "comm", "nccl"
Lane default_lane(Kind k);      // compute, copy, disk, comm, comm, compute

// What an event was about; -1 (or empty) fields are left out of the file.
struct Args {
  int block = -1;
  int phase = -1;
  int micro_batch = -1;
  int step = -1;
  int peer = -1;           // send / recv: the other rank
  int slot = -1;           // copy: the device slot filled
  int64_t position = -1;   // swapping engine: sequence position of the unit
  int64_t bytes = -1;      // bytes moved (copy, disk, send, recv)
};

namespace detail {
extern std::atomic<bool> g_on;
}
// Whether this process records (one relaxed load).
inline bool enabled() noexcept { return detail::g_on.load(std::memory_order_relaxed); }

// Nanoseconds of the trace clock (steady_clock).
int64_t now_ns() noexcept;

// Starts recording in this process, dropping anything recorded before. `device`: where this rank
// computes. On a device whose events can be timed, waits once for the device's current stream
// (before any work of the job) to anchor device time to the host clock.
void start(c10::Device device, int rank);
// Stops recording; what was recorded stays until collect() or the next start().
void stop() noexcept;
// Whether DeviceRange times on the device (a GPU with LibTorch >= 2.5) rather than on the host.
bool device_timing() noexcept;

// This thread's default Args (micro-batch, step...), merged into every event it records while alive.
class Context {
 public:
  explicit Context(const Args& a);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

 private:
  Args saved_;
  bool on_;
};

// A finished host-side range (measured by the caller with now_ns()).
void record(Kind kind, std::string_view name, int64_t begin_ns, int64_t end_ns, const Args& args = {},
            std::optional<Lane> lane = std::nullopt);

// A host-side range from construction to destruction.
class Range {
 public:
  Range(Kind kind, std::string_view name, const Args& args = {}, std::optional<Lane> lane = std::nullopt);
  ~Range();
  Range(const Range&) = delete;
  Range& operator=(const Range&) = delete;
  // Fills in what is known only at the end (bytes received, ...).
  Args& args() { return args_; }

 private:
  bool on_;
  Kind kind_ = Kind::kCompute;
  std::optional<Lane> lane_;
  std::string name_;
  Args args_;
  int64_t t0_ = 0;
};

// The work issued to `stream` (default: the traced device's current stream on this thread) between
// construction and destruction, timed on the device where device_timing(); else a host range.
class DeviceRange {
 public:
  DeviceRange(Kind kind, std::string_view name, const Args& args = {}, std::optional<c10::Stream> stream = std::nullopt,
              std::optional<Lane> lane = std::nullopt);
  ~DeviceRange();
  DeviceRange(const DeviceRange&) = delete;
  DeviceRange& operator=(const DeviceRange&) = delete;

  struct Pending;  // an event pair waiting for collect() (trace.cpp)

 private:
  std::unique_ptr<Pending> pending_;  // device timing
  std::unique_ptr<Range> host_;       // host fallback
};

// After the job: resolves the device ranges (waiting for their events) and returns this rank's
// events as one JSON object (its rank, host, device, the clock reading `sync_ns` taken now, and the
// events in Chrome's format with pid = rank). Clears the buffer.
std::string collect();

// Rank 0: one Chrome trace from every rank's collect(), in rank order. Ranks on rank 0's host keep
// their timestamps (one monotonic clock); ranks on other hosts are shifted so that their `sync_ns`
// (taken right after a barrier) meets rank 0's. Time zero is the earliest event.
std::string merge(const std::vector<std::string>& per_rank);

}  // namespace pipeswap::trace
