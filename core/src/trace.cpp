#include "pipeswap/core/trace.h"

#include <c10/core/Event.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <deque>
#include <limits>
#include <mutex>
#include <nlohmann/json.hpp>

#include "pipeswap/core/identity.h"
#include "pipeswap/core/log.h"
#include "pipeswap/core/torch_compat.h"

namespace pipeswap::trace {

namespace detail {
std::atomic<bool> g_on{false};
}

struct HostEvent {
  Kind kind;
  Lane lane;
  std::string name;
  Args args;
  int64_t begin_ns;
  int64_t end_ns;
};

struct DeviceRange::Pending {
  Kind kind;
  Lane lane;
  std::string name;
  Args args;
  c10::Stream stream;
  c10::Event begin;
  c10::Event end;
  int64_t host_begin_ns = 0;
  int64_t host_end_ns = 0;
};

namespace {

struct State {
  std::mutex mu;
  std::vector<HostEvent> host;
  std::deque<std::unique_ptr<DeviceRange::Pending>> device;
  c10::Device dev{c10::DeviceType::CPU};
  int rank = 0;
  bool device_timing = false;
  std::unique_ptr<c10::Event> anchor;  // recorded and complete at anchor_ns
  int64_t anchor_ns = 0;
};

// Never destroyed: events of a job that ended without collect() must not be torn down after the
// device runtime at exit.
State& state() {
  static State* s = new State;
  return *s;
}

thread_local Args t_context;

int64_t pick(int64_t mine, int64_t ctx) { return mine >= 0 ? mine : ctx; }
int pick(int mine, int ctx) { return mine >= 0 ? mine : ctx; }

Args with_context(const Args& a) {
  Args r = a;
  r.block = pick(a.block, t_context.block);
  r.phase = pick(a.phase, t_context.phase);
  r.micro_batch = pick(a.micro_batch, t_context.micro_batch);
  r.step = pick(a.step, t_context.step);
  r.peer = pick(a.peer, t_context.peer);
  r.slot = pick(a.slot, t_context.slot);
  r.position = pick(a.position, t_context.position);
  r.bytes = pick(a.bytes, t_context.bytes);
  return r;
}

void push(HostEvent e) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  s.host.push_back(std::move(e));
}

nlohmann::json args_json(const Args& a) {
  nlohmann::json j = nlohmann::json::object();
  if (a.block >= 0) j["block"] = a.block;
  if (a.phase >= 0) j["phase"] = a.phase;
  if (a.micro_batch >= 0) j["micro_batch"] = a.micro_batch;
  if (a.step >= 0) j["step"] = a.step;
  if (a.peer >= 0) j["peer"] = a.peer;
  if (a.slot >= 0) j["slot"] = a.slot;
  if (a.position >= 0) j["position"] = a.position;
  if (a.bytes >= 0) j["bytes"] = a.bytes;
  return j;
}

// "attention b3 mb1": the name Perfetto shows on the bar.
std::string display_name(const std::string& name, const Args& a) {
  std::string s = name;
  if (a.block >= 0) s += fmt::format(" b{}", a.block);
  if (a.micro_batch >= 0) s += fmt::format(" mb{}", a.micro_batch);
  if (a.step >= 0) s += fmt::format(" s{}", a.step);
  return s;
}

nlohmann::json event_json(Kind kind, Lane lane, const std::string& name, const Args& a, int64_t b, int64_t e) {
  return nlohmann::json{{"name", display_name(name, a)}, {"cat", kind_name(kind)}, {"tid", static_cast<int>(lane)},
                        {"b", b},  {"e", std::max(b, e)},   {"args", args_json(a)}};
}

}  // namespace

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::kCompute: return "compute";
    case Kind::kCopy: return "copy";
    case Kind::kDisk: return "disk";
    case Kind::kSend: return "send";
    case Kind::kRecv: return "recv";
    case Kind::kWait: return "wait";
  }
  return "?";
}

const char* lane_name(Lane l) {
  switch (l) {
    case Lane::kCompute: return "compute";
    case Lane::kCopy: return "copy";
    case Lane::kDisk: return "disk";
    case Lane::kComm: return "comm";
    case Lane::kNccl: return "nccl";
  }
  return "?";
}

Lane default_lane(Kind k) {
  switch (k) {
    case Kind::kCopy: return Lane::kCopy;
    case Kind::kDisk: return Lane::kDisk;
    case Kind::kSend:
    case Kind::kRecv: return Lane::kComm;
    default: return Lane::kCompute;
  }
}

int64_t now_ns() noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void start(c10::Device device, int rank) {
  State& s = state();
  {
    std::lock_guard<std::mutex> lock(s.mu);
    s.host.clear();
    s.device.clear();
    s.dev = device;
    s.rank = rank;
    s.device_timing = false;
    s.anchor.reset();
  }
  if (!device.is_cpu() && compat::kHasEventTiming) {
    try {
      // Device time 0 of the timeline: an event the host waits for, read off the host clock as
      // soon as it completes (error: the wake-up latency of the wait, microseconds).
      c10::impl::VirtualGuardImpl impl(device.type());
      auto anchor = std::make_unique<c10::Event>(device.type(), compat::timing_event_flag());
      anchor->record(impl.getStream(device));
      compat::synchronize_event(*anchor);
      const int64_t t = now_ns();
      std::lock_guard<std::mutex> lock(s.mu);
      s.anchor = std::move(anchor);
      s.anchor_ns = t;
      s.device_timing = true;
    } catch (const std::exception& e) {
      log().warn("--trace: cannot time events on {} ({}); device work is traced by when the host issued it",
                 device.str(), e.what());
    }
  } else if (!device.is_cpu()) {
    log().warn("--trace: LibTorch {} cannot time device events (2.5 or later can); device work is traced by when "
               "the host issued it",
               compat::torch_version());
  }
  detail::g_on.store(true, std::memory_order_relaxed);
}

void stop() noexcept { detail::g_on.store(false, std::memory_order_relaxed); }

bool device_timing() noexcept {
  if (!enabled()) return false;
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  return s.device_timing;
}

Context::Context(const Args& a) : on_(enabled()) {
  if (!on_) return;
  saved_ = t_context;
  t_context = with_context(a);  // a's fields first, then the enclosing context's
}

Context::~Context() {
  if (on_) t_context = saved_;
}

void record(Kind kind, std::string_view name, int64_t begin_ns, int64_t end_ns, const Args& args,
            std::optional<Lane> lane) {
  if (!enabled()) return;
  push(HostEvent{kind, lane.value_or(default_lane(kind)), std::string(name), with_context(args), begin_ns, end_ns});
}

Range::Range(Kind kind, std::string_view name, const Args& args, std::optional<Lane> lane) : on_(enabled()) {
  if (!on_) return;
  kind_ = kind;
  lane_ = lane;
  name_ = std::string(name);
  args_ = with_context(args);
  t0_ = now_ns();
}

Range::~Range() {
  if (!on_) return;
  const int64_t t1 = now_ns();
  push(HostEvent{kind_, lane_.value_or(default_lane(kind_)), std::move(name_), args_, t0_, t1});
}

DeviceRange::DeviceRange(Kind kind, std::string_view name, const Args& args, std::optional<c10::Stream> stream,
                         std::optional<Lane> lane) {
  if (!enabled()) return;
  if (!device_timing()) {
    host_ = std::make_unique<Range>(kind, name, args, lane);
    return;
  }
  c10::Device dev = state().dev;
  if (!stream) {
    c10::impl::VirtualGuardImpl impl(dev.type());
    stream = impl.getStream(dev);  // this thread's current stream on the traced device
  }
  pending_.reset(new Pending{kind,
                             lane.value_or(default_lane(kind)),
                             std::string(name),
                             with_context(args),
                             *stream,
                             c10::Event(stream->device_type(), compat::timing_event_flag()),
                             c10::Event(stream->device_type(), compat::timing_event_flag())});
  pending_->host_begin_ns = now_ns();
  pending_->begin.record(pending_->stream);
}

DeviceRange::~DeviceRange() {
  if (!pending_) return;  // host_ (if any) records itself
  try {
    pending_->end.record(pending_->stream);
    pending_->host_end_ns = now_ns();
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mu);
    s.device.push_back(std::move(pending_));
  } catch (const std::exception& e) {
    log().warn("--trace: could not record a device event: {}", e.what());
  }
}

std::string collect() {
  State& s = state();
  const int64_t sync = now_ns();
  std::vector<HostEvent> host;
  std::deque<std::unique_ptr<DeviceRange::Pending>> device;
  std::unique_ptr<c10::Event> anchor;
  int64_t anchor_ns = 0;
  nlohmann::json out;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    host.swap(s.host);
    device.swap(s.device);
    anchor = std::move(s.anchor);
    anchor_ns = s.anchor_ns;
    const RankIdentity& id = rank_identity();
    out = nlohmann::json{{"rank", s.rank}, {"host", id.host}, {"device", s.dev.str()},
                         {"device_timing", s.device_timing}, {"sync_ns", sync}};
    s.device_timing = false;
  }
  nlohmann::json events = nlohmann::json::array();
  for (const HostEvent& e : host) events.push_back(event_json(e.kind, e.lane, e.name, e.args, e.begin_ns, e.end_ns));
  for (const auto& p : device) {
    int64_t b = p->host_begin_ns, e = p->host_end_ns;
    if (anchor) {
      compat::synchronize_event(p->end);  // events of one stream complete in order: begin is done too
      const double mb = compat::event_elapsed_ms(*anchor, p->begin);
      const double me = compat::event_elapsed_ms(*anchor, p->end);
      if (std::isfinite(mb) && std::isfinite(me)) {
        b = anchor_ns + static_cast<int64_t>(std::llround(mb * 1e6));
        e = anchor_ns + static_cast<int64_t>(std::llround(me * 1e6));
      }
    }
    events.push_back(event_json(p->kind, p->lane, p->name, p->args, b, e));
  }
  out["events"] = std::move(events);
  return out.dump();
}

std::string merge(const std::vector<std::string>& per_rank) {
  std::vector<nlohmann::json> ranks;
  for (const auto& s : per_rank) ranks.push_back(nlohmann::json::parse(s));
  nlohmann::json trace_events = nlohmann::json::array();
  nlohmann::json info = nlohmann::json::array();
  if (ranks.empty()) return nlohmann::json{{"traceEvents", trace_events}}.dump();
  const std::string host0 = ranks[0].value("host", "");
  const int64_t sync0 = ranks[0].value("sync_ns", int64_t{0});
  std::vector<int64_t> shift(ranks.size(), 0);
  int64_t zero = std::numeric_limits<int64_t>::max();
  for (size_t r = 0; r < ranks.size(); ++r) {
    if (ranks[r].value("host", "") != host0) shift[r] = sync0 - ranks[r].value("sync_ns", int64_t{0});
    for (const auto& e : ranks[r]["events"]) zero = std::min(zero, e["b"].get<int64_t>() + shift[r]);
  }
  if (zero == std::numeric_limits<int64_t>::max()) zero = 0;
  for (size_t r = 0; r < ranks.size(); ++r) {
    const auto& rk = ranks[r];
    const int pid = rk.value("rank", static_cast<int>(r));
    const std::string label = fmt::format("rank {} {} @{}", pid, rk.value("device", "?"), rk.value("host", "?"));
    trace_events.push_back({{"name", "process_name"}, {"ph", "M"}, {"pid", pid}, {"args", {{"name", label}}}});
    trace_events.push_back({{"name", "process_sort_index"}, {"ph", "M"}, {"pid", pid}, {"args", {{"sort_index", pid}}}});
    std::vector<int> lanes;
    for (const auto& e : rk["events"]) {
      const int64_t b = e["b"].get<int64_t>() + shift[r] - zero;
      const int64_t d = e["e"].get<int64_t>() - e["b"].get<int64_t>();
      const int tid = e["tid"].get<int>();
      if (std::find(lanes.begin(), lanes.end(), tid) == lanes.end()) lanes.push_back(tid);
      trace_events.push_back({{"name", e["name"]}, {"cat", e["cat"]}, {"ph", "X"}, {"pid", pid}, {"tid", tid},
                              {"ts", static_cast<double>(b) / 1000.0}, {"dur", static_cast<double>(d) / 1000.0},
                              {"args", e["args"]}});
    }
    for (int tid : lanes) {
      trace_events.push_back({{"name", "thread_name"}, {"ph", "M"}, {"pid", pid}, {"tid", tid},
                              {"args", {{"name", lane_name(static_cast<Lane>(tid))}}}});
      trace_events.push_back({{"name", "thread_sort_index"}, {"ph", "M"}, {"pid", pid}, {"tid", tid},
                              {"args", {{"sort_index", tid}}}});
    }
    info.push_back({{"rank", pid}, {"host", rk.value("host", "")}, {"device", rk.value("device", "")},
                    {"device_timing", rk.value("device_timing", false)}, {"events", rk["events"].size()},
                    {"shift_ns", shift[r]}});
  }
  nlohmann::json out{{"traceEvents", std::move(trace_events)},
                     {"displayTimeUnit", "ms"},
                     {"otherData",
                      {{"producer", "pipeswap --trace"},
                       {"clock", "host steady_clock; device ranges from timing events anchored to it"},
                       {"ranks", std::move(info)}}}};
  return out.dump();
}

}  // namespace pipeswap::trace
