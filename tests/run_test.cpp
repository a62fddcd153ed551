// End to end: the pipeswap executable under mpirun, torchrun-style and srun-style environments.
// Every split must give logits bit-identical to the single-rank run; bad input must fail on every
// rank, fast, with the error named and no output written.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include <nlohmann/json.hpp>

#include "pipeswap/core/safetensors.h"
#include "test_util.h"

namespace fs = std::filesystem;
using ::testing::HasSubstr;

namespace {

using namespace pipeswap::test_support;

class RunTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char tmpl[] = "/tmp/pipeswap-run-test-XXXXXX";
    dir_ = mkdtemp(tmpl);
    // One demo model for the whole suite (written by the first run).
    setenv("PIPESWAP_CACHE", (dir_ + "/cache").c_str(), 1);
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }
  static std::string path(const std::string& name) { return dir_ + "/" + name; }

  // 64 sequences of 64 tokens: a job long enough to be interrupted (written on first use).
  static std::string long_input() {
    const std::string p = path("long.json");
    if (fs::exists(p)) return p;
    std::string ids = "[";
    for (int s = 0; s < 64; ++s) {
      ids += s ? ",[" : "[";
      for (int t = 0; t < 64; ++t) ids += (t ? "," : "") + std::to_string((s * 131 + t * 7) % 1000);
      ids += "]";
    }
    std::ofstream(p) << ids << "]";
    return p;
  }

  static std::string mpirun(int np) { return "mpirun -np " + std::to_string(np) + " "; }

  static inline std::string dir_;
};

TEST_F(RunTest, SplitsGiveBitIdenticalLogits) {
  const std::string ref = path("ref.safetensors");
  Result r1 = sh(mpirun(1) + exe() + " run --output " + ref + " --log-level warn");
  ASSERT_EQ(r1.code, 0) << r1.output;
  EXPECT_THAT(r1.output, HasSubstr("logits 8x64x1024"));
  const std::string ref_bytes = file_bytes(ref);
  ASSERT_GT(ref_bytes.size(), 8u * 64 * 1024 * 4);

  struct Case {
    int np;
    std::string chain;
    int micro_batches;
  };
  for (const Case& c : {Case{2, "cpu=1,cpu=1", 1}, Case{3, "", 1}, Case{4, "cpu=3,cpu=1,cpu=1,cpu=1", 1},
                        Case{2, "cpu=60,cpu=40", 1}, Case{3, "cpu=1,cpu=5,cpu=1", 1}}) {
    const std::string out = path("np" + std::to_string(c.np) + ".safetensors");
    std::string chain = c.chain.empty() ? "" : " --device-chain " + c.chain;
    Result r = sh(mpirun(c.np) + exe() + " run --output " + out + chain + " --log-level warn");
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_TRUE(same_bytes(out, ref)) << "np=" << c.np << " chain=" << c.chain;
  }
}

TEST_F(RunTest, MicroBatchedSplitsMatchTheSingleRankRunWithTheSameMicroBatches) {
  for (int m : {2, 3}) {
    const std::string ref = path("ref_m" + std::to_string(m) + ".safetensors");
    Result r1 = sh(exe() + " run --micro-batches " + std::to_string(m) + " --output " + ref + " --log-level warn");
    ASSERT_EQ(r1.code, 0) << r1.output;
    for (int np : {2, 4}) {
      const std::string out = path("m" + std::to_string(m) + "np" + std::to_string(np) + ".safetensors");
      Result r = sh(mpirun(np) + exe() + " run --micro-batches " + std::to_string(m) + " --output " + out +
                    " --log-level warn");
      ASSERT_EQ(r.code, 0) << r.output;
      EXPECT_TRUE(same_bytes(out, ref)) << "m=" << m << " np=" << np;
    }
  }
}

TEST_F(RunTest, TorchrunAndSrunStyleEnvironmentsWork) {
  const std::string ref = path("env_ref.safetensors");
  ASSERT_EQ(sh(exe() + " run --output " + ref + " --log-level warn").code, 0);
  // Two processes started by hand with torchrun's variables meet over TCP.
  const int port = 20000 + (getpid() % 20000);
  const std::string out = path("torchrun.safetensors");
  std::string cmd;
  for (int r = 1; r >= 0; --r) {
    cmd += "RANK=" + std::to_string(r) + " WORLD_SIZE=2 LOCAL_RANK=" + std::to_string(r) +
           " MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port) + " " + exe() + " run --output " + out +
           " --log-level warn" + (r == 1 ? " & " : "; wait");
  }
  Result r = sh(cmd);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(same_bytes(out, ref));

  // srun without MPI support: SLURM_PROCID / SLURM_NTASKS / SLURM_STEP_ID.
  const std::string out2 = path("slurm.safetensors");
  cmd.clear();
  for (int rk = 1; rk >= 0; --rk) {
    cmd += "SLURM_PROCID=" + std::to_string(rk) + " SLURM_NTASKS=2 SLURM_LOCALID=" + std::to_string(rk) +
           " SLURM_STEP_ID=0 SLURM_STEP_NUM_NODES=1 SLURM_STEP_NUM_TASKS=2 SLURM_JOB_ID=" + std::to_string(port + 1) +
           " " + exe() + " run --output " + out2 + " --log-level warn" + (rk == 1 ? " & " : "; wait");
  }
  r = sh(cmd);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(same_bytes(out2, ref));
}

TEST_F(RunTest, SwapSettingsGiveBitIdenticalLogits) {
  const std::string ref = path("swap_ref.safetensors");
  ASSERT_EQ(sh(exe() + " run --micro-batches 2 --output " + ref + " --log-level warn").code, 0);
  int i = 0;
  for (const std::string& args :
       {std::string("--blocks-to-swap 3"), std::string("--offload-ratio 0.5 --offload-granularity phase --prefetch-depth 2"),
        std::string("--blocks-to-swap 6 --resident-policy interleaved --lazy-load --max-memory 12MB --num-disk-workers 1"),
        std::string("--blocks-to-swap 2 --resident-policy prefix --use-non-blocking=false"),
        std::string("--blocks-to-swap 6 --lazy-load --offload-granularity phase --prefetch-depth 3"),
        std::string("--offload-txt-emb --on-demand-components lm_head,norm --blocks-to-swap 1"),
        std::string("--vram-budget 20MB")}) {
    const std::string out = path("swap" + std::to_string(i++) + ".safetensors");
    Result r = sh(mpirun(2) + exe() + " run --micro-batches 2 --output " + out + " " + args);
    ASSERT_EQ(r.code, 0) << args << "\n" << r.output;
    EXPECT_TRUE(same_bytes(out, ref)) << args;
    EXPECT_THAT(r.output, HasSubstr("memory: device weights")) << args;
  }
}

// Issue 16: with shared fills a rank runs its micro-batches block-outer, so each swapped unit is filled
// once per forward instead of once per micro-batch; the logits stay bit-identical to the single-rank
// resident run with the same micro-batches, for every split and swap setting, and the summary's fills
// per pass equal the plan's (swapped units, or swapped units x micro-batches per micro-batch).
TEST_F(RunTest, SwapOrdersGiveBitIdenticalLogitsAndTheFillsThePlanSays) {
  std::ofstream(path("four.json")) << "[[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16]]";
  const std::string base = " run --input " + path("four.json") + " --micro-batches 4";
  const std::string ref = path("order_ref.safetensors");
  ASSERT_EQ(sh(exe() + base + " --output " + ref + " --log-level warn").code, 0);
  const std::regex fills(R"((\d+) slot fills, (\d+) per pass \(plan (\d+), (\S+) order\))");
  struct Case {
    std::string launch, flags;
    int units_per_rank;  // swapped units on each swapping rank
  };
  const Case cases[] = {
      {"", "--blocks-to-swap 4", 4},
      {"", "--blocks-to-swap 3 --offload-granularity phase --prefetch-depth 2", 6},
      {"", "--blocks-to-swap 6 --lazy-load --max-memory 12MB --num-disk-workers 1", 6},
      {"", "--blocks-to-swap 2 --use-non-blocking=false", 2},
      {mpirun(2), "--blocks-to-swap 2", 2},
      {mpirun(3), "--blocks-to-swap 1 --offload-granularity phase", 2},
  };
  int i = 0;
  for (const Case& c : cases) {
    for (const std::string order : {"shared", "per-micro-batch", "auto"}) {
      SCOPED_TRACE(c.launch + c.flags + " --swap-order " + order);
      const std::string out = path("order" + std::to_string(i++) + ".safetensors");
      Result r = sh(c.launch + exe() + base + " --output " + out + " --log-level info --swap-order " + order + " " +
                    c.flags);
      ASSERT_EQ(r.code, 0) << r.output;
      EXPECT_TRUE(same_bytes(out, ref));
      int seen = 0;
      for (std::sregex_iterator m(r.output.begin(), r.output.end(), fills), end; m != end; ++m, ++seen) {
        const int per_pass = std::stoi((*m)[2]), plan = std::stoi((*m)[3]);
        const std::string chosen = (*m)[4];
        EXPECT_EQ(per_pass, plan) << r.output;
        if (order != "auto") {
          EXPECT_EQ(chosen, order);
        }
        EXPECT_EQ(per_pass, chosen == "shared" ? c.units_per_rank : 4 * c.units_per_rank) << r.output;
      }
      EXPECT_GE(seen, 1) << r.output;
    }
  }
  Result plan = sh(exe() + " plan --input " + path("four.json") + " --micro-batches 4 --blocks-to-swap 4 --swap-order shared");
  EXPECT_THAT(plan.output, HasSubstr("swap order shared: 4 slot fills per pass"));
  EXPECT_THAT(sh(exe() + base + " --swap-order sometimes").output, HasSubstr("unknown --swap-order 'sometimes'"));
}

TEST_F(RunTest, WeightFileTruncatedDuringALazyRunFailsOnEveryRank) {
  // A copy of the demo model whose file is cut while two ranks stream blocks from it.
  const std::string demo = std::string(std::getenv("PIPESWAP_CACHE")) + "/demo-llama-v1";
  ASSERT_EQ(sh(exe() + " plan --log-level warn").code, 0);  // writes the demo model if needed
  const std::string m = path("cut");
  fs::create_directories(m);
  fs::copy_file(demo + "/config.json", m + "/config.json", fs::copy_options::overwrite_existing);
  fs::copy_file(demo + "/model.safetensors", m + "/model.safetensors", fs::copy_options::overwrite_existing);
  const std::string out = path("cut.safetensors");
  const auto size = fs::file_size(m + "/model.safetensors");
  Result r = sh("(sleep 1; truncate -s " + std::to_string(size / 3) + " " + m + "/model.safetensors) & " +
                mpirun(2) + exe() + " run --model " + m + " --input " + long_input() + " --micro-batches 16 " +
                "--blocks-to-swap 6 --lazy-load --max-memory 12MB --num-disk-workers 1 --output " + out +
                "; rc=$?; wait; exit $rc",
                120);
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.code, 124) << "hung";
  EXPECT_THAT(r.output, HasSubstr(m + "/model.safetensors"));
  // Names the tensor: normally one a rank was streaming when the file was cut; on a slow start the
  // file is cut before its header is read, and the check of the header names the first tensor whose
  // bytes are gone (lm_head.weight, the last in the file).
  EXPECT_THAT(r.output, ::testing::ContainsRegex("truncated[^\n]*tensor '(model\\.|lm_head\\.)"));
  EXPECT_LT(r.seconds, 60);
  EXPECT_FALSE(fs::exists(out));
}

TEST_F(RunTest, PlanShowsResidencyAndBudgetsAreChecked) {
  Result r = sh(exe() + " plan --device-chain cpu=1,cpu=1 --blocks-to-swap 2 --lazy-load --max-memory 8MB --json " +
                path("swap-plan.json"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("swapped blocks 4,5;"));
  EXPECT_THAT(r.output, HasSubstr("swapped blocks 10,11;"));
  std::ifstream in(path("swap-plan.json"));
  auto j = nlohmann::json::parse(in);
  EXPECT_EQ(j["ranks"][0]["swapped_blocks"], nlohmann::json({4, 5}));
  EXPECT_EQ(j["ranks"][0]["resident_blocks"], nlohmann::json({0, 1, 2, 3}));
  EXPECT_GT(j["ranks"][0]["predicted_disk_read_bytes"].get<int64_t>(), 0);

  Result small = sh(exe() + " run --vram-budget 1MB --output " + path("v.safetensors"));
  EXPECT_NE(small.code, 0);
  EXPECT_THAT(small.output, HasSubstr("--vram-budget 976.6 KiB is too small for rank 0: with every block swapped it "
                                      "needs at least"));
  Result both = sh(exe() + " run --vram-budget 30MB --blocks-to-swap 2 --output " + path("w.safetensors"));
  EXPECT_EQ(both.code, 0) << both.output;
  EXPECT_THAT(both.output, HasSubstr("blocks_to_swap ignored: automatic VRAM mode decides residency"));
  // A host cache too small for any swapped block is no error (issue 23): every swapped block streams, as
  // the plan says, with a warning.
  Result cache = sh(exe() + " plan --blocks-to-swap 4 --lazy-load --max-memory 1MB");
  EXPECT_EQ(cache.code, 0) << cache.output;
  EXPECT_THAT(cache.output, HasSubstr("--max-memory 1MB holds none of the swapped blocks"));
}

TEST_F(RunTest, ConfigFileUsesSnakeCaseKeysAndFlagsWin) {
  const std::string ref = path("cfg_ref.safetensors");
  ASSERT_EQ(sh(exe() + " run --micro-batches 2 --output " + ref + " --log-level warn").code, 0);
  std::ofstream(path("cfg.json")) << R"({"device_chain": ["cpu=3", "cpu=1"], "micro_batches": 2,
      "blocks_to_swap": 1, "use_non_blocking": false, "offload_granularity": "phase", "log_level": "error"})";
  Result r = sh(mpirun(2) + exe() + " run --config " + path("cfg.json") + " --output " + path("cfg.safetensors"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(same_bytes(path("cfg.safetensors"), ref));
  EXPECT_THAT(r.output, HasSubstr("blocks 0..8 (9)"));
  // The command line wins over the file.
  r = sh(mpirun(2) + exe() + " run --config " + path("cfg.json") + " --device-chain cpu=1,cpu=1 --output " +
         path("cfg2.safetensors"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("blocks 0..5 (6)"));
  std::ofstream(path("bad-cfg.json")) << R"({"blocks_to_swapp": 1})";
  r = sh(exe() + " run --config " + path("bad-cfg.json"));
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.output, HasSubstr("unknown key 'blocks_to_swapp'"));
}

TEST_F(RunTest, SingleNodeModeStartsItsOwnWorkers) {
  const std::string ref = path("single_ref.safetensors");
  ASSERT_EQ(sh(exe() + " run --micro-batches 2 --output " + ref + " --log-level warn").code, 0);
  // No launcher, three chain entries: three worker processes meeting over TCP on 127.0.0.1.
  const std::string out = path("single.safetensors");
  Result r = sh(exe() + " run --device-chain cpu=2,cpu=1,cpu=1 --micro-batches 2 --output " + out);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("starting 3 worker processes"));
  EXPECT_THAT(r.output, HasSubstr("blocks 0..5 (6)"));
  EXPECT_TRUE(same_bytes(out, ref));
  // A worker that fails stops the others; the job exits non-zero with nothing written.
  std::ofstream(path("bad-ids.json")) << "[[1, 2, 99999]]";
  Result bad = sh(exe() + " run --device-chain cpu,cpu --input " + path("bad-ids.json") + " --output " +
                  path("single-bad.safetensors"), 60);
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.code, 124) << "hung";
  EXPECT_THAT(bad.output, HasSubstr("token id 99999 is out of range"));
  EXPECT_FALSE(fs::exists(path("single-bad.safetensors")));
  // Ctrl-C on the parent stops every worker. (Its own workers are checked, by pid: other pipeswap
  // processes may run on the machine.)
  const std::string kLeft = "for k in $kids; do kill -0 $k 2>/dev/null && echo LEFT; done; true";
  // The signal goes in once both workers have loaded their weights: a fixed sleep raced a slow start-up
  // under load (a background job ignores SIGINT until pipeswap installs its handler). No single quotes:
  // sh() runs the command inside bash -c '...'.
  auto started = [](const std::string& log) {
    return "for i in $(seq 300); do [ \"$(cat " + log + " 2>/dev/null | grep -c loaded)\" -ge 2 ] && break; "
           "sleep 0.1; done; sleep 0.2; ";
  };
  Result sig = sh("( " + exe() + " run --device-chain cpu,cpu --input " + long_input() +
                  " --micro-batches 16 --output " + path("sig.safetensors") + " > " + path("sig.log") + " 2>&1 & p=$!; " +
                  started(path("sig.log")) + "kids=$(pgrep -P $p); " +
                  "kill -INT $p; wait $p; echo exit=$?; sleep 1; " + kLeft + " )",
                  60);
  EXPECT_THAT(sig.output, HasSubstr("exit=130"));
  EXPECT_THAT(sig.output, ::testing::Not(HasSubstr("LEFT")));
  // kill -9 of one worker mid-run: the job stops within seconds, naming the worker, nothing left.
  Result killed = sh("( " + exe() + " run --device-chain cpu,cpu --input " + long_input() +
                     " --micro-batches 16 --output " + path("k.safetensors") + " > " + path("k.log") + " 2>&1 & p=$!; " +
                     started(path("k.log")) + "kids=$(pgrep -P $p); " +
                     "kill -9 $(pgrep -P $p | tail -n 1); s=$(date +%s); wait $p; echo exit=$? took=$(( $(date +%s) - s ))s; " +
                     "sleep 1; " + kLeft + "; cat " + path("k.log") + " )",
                     60);
  EXPECT_THAT(killed.output, HasSubstr("worker 1 exited with code 137"));
  EXPECT_THAT(killed.output, ::testing::Not(HasSubstr("exit=0")));
  EXPECT_THAT(killed.output, ::testing::ContainsRegex("took=[0-9]s"));  // under 10 s
  EXPECT_THAT(killed.output, ::testing::Not(HasSubstr("LEFT")));
  EXPECT_FALSE(fs::exists(path("k.safetensors")));
}

// Bad flags, chains, inputs and outputs: the matrix in bad_input_test.cpp.

TEST_F(RunTest, InputFilesJsonAndSafetensorsAgree) {
  std::ofstream(path("in.json")) << "{\"input_ids\": [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]]}";
  pipeswap::write_safetensors(path("in.safetensors"),
                              {{"input_ids", torch::arange(1, 13, torch::kInt64).view({2, 6})}});
  Result a = sh(exe() + " run --input " + path("in.json") + " --output " + path("a.safetensors") + " --log-level warn");
  ASSERT_EQ(a.code, 0) << a.output;
  Result b = sh(mpirun(2) + exe() + " run --input " + path("in.safetensors") + " --output " + path("b.safetensors") +
                " --log-level warn");
  ASSERT_EQ(b.code, 0) << b.output;
  EXPECT_TRUE(same_bytes(path("a.safetensors"), path("b.safetensors")));
  auto f = pipeswap::SafetensorsFile::open(path("a.safetensors"));
  EXPECT_EQ(f->at("logits").shape, (std::vector<int64_t>{2, 6, 1024}));
}

TEST_F(RunTest, PlanPrintsAndWritesJsonWithoutReadingWeights) {
  // A sharded checkpoint whose shard files are empty: the plan needs config.json and the index only.
  ASSERT_EQ(sh(exe() + " plan --log-level warn").code, 0);  // writes the demo model
  const std::string demo = std::string(std::getenv("PIPESWAP_CACHE")) + "/demo-llama-v1";
  const std::string m = path("hollow");
  fs::create_directories(m);
  fs::copy_file(demo + "/config.json", m + "/config.json");
  auto file = pipeswap::SafetensorsFile::open(demo + "/model.safetensors");
  nlohmann::json index;
  for (const auto& t : file->tensors()) index["weight_map"][t.name] = "model-0000" + std::to_string(t.name.size() % 2 + 1) + "-of-00002.safetensors";
  std::ofstream(m + "/model.safetensors.index.json") << index.dump();
  std::ofstream(m + "/model-00001-of-00002.safetensors");
  std::ofstream(m + "/model-00002-of-00002.safetensors");
  Result r = sh(exe() + " plan --model " + m + " --device-chain cpu=3,cpu=1 --json " + path("plan.json"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("0..8 (9)"));
  EXPECT_THAT(r.output, HasSubstr("9..11 (3)"));
  std::ifstream in(path("plan.json"));
  auto j = nlohmann::json::parse(in);
  EXPECT_EQ(j["ranks"].size(), 2u);
  EXPECT_EQ(j["ranks"][1]["blocks"][0], 9);
  EXPECT_GT(j["ranks"][0]["weight_bytes"].get<int64_t>(), 0);
  // Running that checkpoint does read weights, and fails naming the empty shard.
  std::ofstream(path("plan-in.json")) << "[[1, 2, 3]]";
  Result bad = sh(exe() + " run --model " + m + " --input " + path("plan-in.json") + " --output " + path("h.safetensors"));
  EXPECT_NE(bad.code, 0);
  EXPECT_THAT(bad.output, HasSubstr("model-0000"));
}


// --repeat: the swapped blocks stream in again for every pass, and every pass gives the same logits.
TEST_F(RunTest, RepeatedPassesGiveTheSameLogits) {
  const std::string ref = path("repeat_ref.safetensors");
  ASSERT_EQ(sh(exe() + " run --micro-batches 2 --output " + ref + " --log-level warn").code, 0);
  const std::string out = path("repeat.safetensors");
  Result r = sh(exe() + " run --micro-batches 2 --repeat 3 --blocks-to-swap 4 --lazy-load --max-memory 12MB "
                       "--log-level info --output " + out);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("forward pass 3/3"));
  EXPECT_THAT(r.output, HasSubstr("median of 2 warm passes"));
  EXPECT_TRUE(same_bytes(out, ref));
  EXPECT_NE(sh(exe() + " run --repeat 0").code, 0);
}

}  // namespace
