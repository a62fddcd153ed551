// --trace: the recorder on its own (TraceRecorder*, label unit) and the executable's timelines
// (TraceRun*, label mpi: mpirun -np 2, a swapped CPU run, tracing off by default).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include <nlohmann/json.hpp>

#include "expect_error.h"
#include "pipeswap/comm/transport.h"
#include "pipeswap/core/error.h"
#include "pipeswap/core/log.h"
#include "pipeswap/core/trace.h"
#include "pipeswap/pipeline/job_trace.h"
#include "test_util.h"

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using nlohmann::json;
using namespace pipeswap;

namespace {

std::string temp_dir(const char* what) {
  std::string tmpl = std::string("/tmp/pipeswap-trace-") + what + "-XXXXXX";
  return mkdtemp(tmpl.data());
}

json read_json(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << path;
  return json::parse(in);  // throws (and fails the test) on anything that is not valid JSON
}

// The complete ("X") events of a merged trace.
std::vector<json> complete_events(const json& trace) {
  std::vector<json> out;
  for (const auto& e : trace.at("traceEvents"))
    if (e.at("ph") == "X") out.push_back(e);
  return out;
}

// ------------------------------------------------------------------------------------------------
// The recorder alone.

class TraceRecorder : public ::testing::Test {
 protected:
  void SetUp() override { set_log_level("off"); }
  void TearDown() override {
    trace::stop();
    (void)trace::collect();
  }
};

TEST_F(TraceRecorder, RecordsNothingWhileOff) {
  trace::stop();
  (void)trace::collect();
  {
    trace::Range r(trace::Kind::kCompute, "attention");
    trace::DeviceRange d(trace::Kind::kCopy, "copy");
    trace::record(trace::Kind::kDisk, "read", 1, 2);
  }
  EXPECT_FALSE(trace::enabled());
  EXPECT_TRUE(json::parse(trace::collect()).at("events").empty());
}

TEST_F(TraceRecorder, ThreadsRecordIntoOneBufferWithTheirContext) {
  trace::start(c10::Device(c10::kCPU), 0);
  EXPECT_FALSE(trace::device_timing());  // CPU ranks: host ranges are the truth
  constexpr int kThreads = 4, kEach = 500;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([t] {
      trace::Args tag;
      tag.micro_batch = t;
      trace::Context ctx(tag);
      for (int i = 0; i < kEach; ++i) {
        trace::Args a;
        a.block = i;
        trace::Range r(t % 2 ? trace::Kind::kCopy : trace::Kind::kCompute, "work", a);
      }
    });
  }
  for (auto& th : threads) th.join();
  trace::record(trace::Kind::kWait, "wait for slot", 100, 50);  // end before begin: clamped to zero length
  const json mine = json::parse(trace::collect());
  const auto& events = mine.at("events");
  ASSERT_EQ(events.size(), static_cast<size_t>(kThreads * kEach + 1));
  std::map<int, int> per_mb;
  for (const auto& e : events) {
    EXPECT_LE(e.at("b").get<int64_t>(), e.at("e").get<int64_t>());
    if (e.at("cat") == "wait") {
      EXPECT_EQ(e.at("tid"), static_cast<int>(trace::Lane::kCompute));
      continue;
    }
    const int mb = e.at("args").at("micro_batch");
    ++per_mb[mb];
    EXPECT_EQ(e.at("cat"), mb % 2 ? "copy" : "compute");
    EXPECT_EQ(e.at("tid"), static_cast<int>(mb % 2 ? trace::Lane::kCopy : trace::Lane::kCompute));
    EXPECT_THAT(e.at("name").get<std::string>(), HasSubstr(" mb" + std::to_string(mb)));
  }
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(per_mb[t], kEach) << "thread " << t;
  // collect() empties the buffer.
  EXPECT_TRUE(json::parse(trace::collect()).at("events").empty());
}

TEST_F(TraceRecorder, MergeKeepsOneHostsClockAndShiftsOtherHosts) {
  auto rank = [](int r, const std::string& host, int64_t sync, int64_t b) {
    json ev = json::array({{{"name", "attention b0"}, {"cat", "compute"}, {"tid", 1}, {"b", b}, {"e", b + 2000},
                            {"args", json::object()}}});
    return json{{"rank", r}, {"host", host}, {"device", "cpu"}, {"device_timing", false}, {"sync_ns", sync},
                {"events", ev}}
        .dump();
  };
  // rank 1 on rank 0's host: same clock, kept; rank 2 elsewhere: its clock reads 1 s more at the
  // common sync point, so its events move 1 s earlier.
  const json merged = json::parse(trace::merge({rank(0, "a", 5'000'000, 4'000'000), rank(1, "a", 5'000'100, 4'001'000),
                                                rank(2, "b", 1'005'000'000, 1'004'002'000)}));
  std::map<int, double> ts;
  std::set<std::string> metadata;
  for (const auto& e : merged.at("traceEvents")) {
    if (e.at("ph") == "X") {
      ts[e.at("pid").get<int>()] = e.at("ts").get<double>();
      EXPECT_DOUBLE_EQ(e.at("dur").get<double>(), 2.0);  // microseconds
    } else {
      metadata.insert(e.at("name").get<std::string>() + "/" + std::to_string(e.at("pid").get<int>()));
    }
  }
  EXPECT_DOUBLE_EQ(ts[0], 0.0);
  EXPECT_DOUBLE_EQ(ts[1], 1.0);
  EXPECT_DOUBLE_EQ(ts[2], 2.0);
  for (int r = 0; r < 3; ++r) {
    EXPECT_TRUE(metadata.count("process_name/" + std::to_string(r))) << r;
    EXPECT_TRUE(metadata.count("thread_name/" + std::to_string(r))) << r;
  }
  EXPECT_EQ(merged.at("otherData").at("ranks").at(2).at("shift_ns"), -1'000'000'000);
}

TEST_F(TraceRecorder, JobTraceWritesOneFileAtomicallyAndChecksThePathFirst) {
  const std::string dir = temp_dir("job");
  auto self = comm::make_self_transport();
  {
    pipeline::JobTrace off("", c10::Device(c10::kCPU), 0);
    EXPECT_FALSE(off.on());
    EXPECT_FALSE(trace::enabled());
    off.finish(*self);
  }
  EXPECT_TRUE(fs::is_empty(dir));
  const std::string path = dir + "/t.json";
  {
    pipeline::JobTrace on(path, c10::Device(c10::kCPU), 0);
    EXPECT_TRUE(trace::enabled());
    { trace::Range r(trace::Kind::kSend, "send"); }
    on.finish(*self);
    EXPECT_FALSE(trace::enabled());
  }
  const json t = read_json(path);
  ASSERT_EQ(complete_events(t).size(), 1u);
  EXPECT_EQ(complete_events(t)[0].at("cat"), "send");
  EXPECT_EQ(complete_events(t)[0].at("tid"), static_cast<int>(trace::Lane::kComm));
  size_t files = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    ++files;
    EXPECT_EQ(e.path().filename(), "t.json");
  }
  EXPECT_EQ(files, 1u);  // no temporary left behind
  EXPECT_ERROR(pipeline::JobTrace(dir + "/missing/t.json", c10::Device(c10::kCPU), 0), IoError, "does not exist");
  EXPECT_FALSE(trace::enabled());
  fs::remove_all(dir);
}

// ------------------------------------------------------------------------------------------------
// The executable.

using test_support::exe;
using test_support::Result;
using test_support::sh;

class TraceRun : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = temp_dir("run");
    setenv("PIPESWAP_CACHE", (dir_ + "/cache").c_str(), 1);  // one demo model for the suite
    // 32 sequences of 64 tokens: blocks long enough that a prefetch runs beside compute.
    std::string ids = "[";
    for (int s = 0; s < 32; ++s) {
      ids += s ? ",[" : "[";
      for (int t = 0; t < 64; ++t) ids += (t ? "," : "") + std::to_string((s * 131 + t * 7) % 1000);
      ids += "]";
    }
    std::ofstream(dir_ + "/input.json") << ids << "]";
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }
  static std::string path(const std::string& name) { return dir_ + "/" + name; }
  static inline std::string dir_;
};

TEST_F(TraceRun, TwoRanksMergeIntoOneTimelineWithoutChangingTheLogits) {
  const std::string base = " run --micro-batches 2 --device-chain cpu=1,cpu=1 --log-level warn";
  Result plain = sh("mpirun -np 2 " + exe() + base + " --output " + path("plain.safetensors"));
  ASSERT_EQ(plain.code, 0) << plain.output;
  // The trace from a config file key, as users set options there too.
  std::ofstream(path("trace.config.json")) << json{{"trace", path("np2.json")}}.dump();
  Result traced = sh("mpirun -np 2 " + exe() + base + " --output " + path("traced.safetensors") + " --config " +
                     path("trace.config.json"));
  ASSERT_EQ(traced.code, 0) << traced.output;
  EXPECT_TRUE(test_support::same_bytes(path("traced.safetensors"), path("plain.safetensors")));

  const json t = read_json(path("np2.json"));
  std::map<int, std::set<std::string>> cats;     // pid -> event kinds
  std::map<int, std::set<int>> blocks;           // pid -> blocks computed
  std::map<int, std::set<std::string>> threads;  // pid -> lane names
  for (const auto& e : t.at("traceEvents")) {
    const int pid = e.at("pid");
    if (e.at("ph") == "M" && e.at("name") == "thread_name")
      threads[pid].insert(e.at("args").at("name").get<std::string>());
    if (e.at("ph") != "X") continue;
    EXPECT_GE(e.at("ts").get<double>(), 0.0);
    EXPECT_GE(e.at("dur").get<double>(), 0.0);
    cats[pid].insert(e.at("cat").get<std::string>());
    if (e.at("cat") == "compute" && e.at("args").contains("block")) blocks[pid].insert(e.at("args").at("block").get<int>());
  }
  ASSERT_EQ(cats.size(), 2u) << "one pid per rank";
  // 12 demo blocks split 6 + 6; each rank loads its own blocks from disk at start-up ("disk").
  EXPECT_EQ(blocks[0], (std::set<int>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(blocks[1], (std::set<int>{6, 7, 8, 9, 10, 11}));
  EXPECT_EQ(cats[0], (std::set<std::string>{"compute", "disk", "send", "recv"}));  // recv: the logits
  EXPECT_EQ(cats[1], (std::set<std::string>{"compute", "disk", "send", "recv"}));
  EXPECT_TRUE(threads[0].count("comm") && threads[0].count("compute")) << t.at("traceEvents").dump().substr(0, 400);
  EXPECT_EQ(t.at("otherData").at("ranks").size(), 2u);
}

TEST_F(TraceRun, SwappedCpuRunShowsCopiesBesideCompute) {
  const std::string out = path("swap.safetensors");
  Result r = sh(exe() + " run --input " + path("input.json") + " --micro-batches 2 --blocks-to-swap 8 --prefetch-depth 1" +
                " --log-level warn --threads 1 --output " + out + " --trace " + path("swap.json"));
  ASSERT_EQ(r.code, 0) << r.output;
  const json t = read_json(path("swap.json"));
  std::vector<std::pair<double, double>> compute, copy;
  int waits = 0;
  for (const auto& e : complete_events(t)) {
    EXPECT_EQ(e.at("pid"), 0);
    const double b = e.at("ts"), d = e.at("dur");
    if (e.at("cat") == "compute") compute.emplace_back(b, b + d);
    if (e.at("cat") == "copy") {
      EXPECT_EQ(e.at("tid"), static_cast<int>(trace::Lane::kCopy));
      EXPECT_TRUE(e.at("args").contains("slot") && e.at("args").contains("bytes")) << e.dump();
      copy.emplace_back(b, b + d);
    }
    if (e.at("cat") == "wait") ++waits;
  }
  // 8 swapped blocks x 2 micro-batches: one slot fill each.
  EXPECT_EQ(copy.size(), 16u);
  ASSERT_FALSE(compute.empty());
  int overlapping = 0;
  for (const auto& c : copy)
    for (const auto& k : compute)
      if (c.first < k.second && k.first < c.second) {
        ++overlapping;
        break;
      }
  // The copy thread fills block b+1's slot while block b computes: at least one copy runs beside compute.
  EXPECT_GT(overlapping, 0) << copy.size() << " copies, " << compute.size() << " compute ranges, " << waits
                            << " waits";
}

TEST_F(TraceRun, OffByDefaultWritesNothingAndABadPathFailsFirst) {
  const std::string work = path("cwd");
  fs::create_directories(work);
  Result r = sh("cd " + work + " && mpirun -np 2 " + exe() + " run --device-chain cpu,cpu --log-level warn --output out.safetensors");
  ASSERT_EQ(r.code, 0) << r.output;
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(work)) files.push_back(e.path().filename());
  EXPECT_EQ(files, std::vector<std::string>{"out.safetensors"});
  EXPECT_THAT(r.output, ::testing::Not(HasSubstr("trace of")));

  Result bad = sh("mpirun -np 2 " + exe() + " run --device-chain cpu,cpu --log-level warn --output " +
                  path("never.safetensors") + " --trace " + path("missing/t.json"));
  EXPECT_NE(bad.code, 0);
  EXPECT_THAT(bad.output, HasSubstr("missing/t.json"));
  EXPECT_FALSE(fs::exists(path("never.safetensors")));
}

}  // namespace
