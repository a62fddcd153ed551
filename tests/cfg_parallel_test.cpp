// CFG-parallel ranks (issue 21) end to end: `pipeswap denoise --cfg-parallel 2` on the tiny Wan fixture,
// G = 2 guidance groups x p = 1..3 stages of CPU ranks, with and without swapping, lazy load and phase
// granularity: the latents are those of the single-rank run, byte for byte, for one sample and for two.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "pipeswap/core/safetensors.h"
#include "test_util.h"

namespace fs = std::filesystem;
using ::testing::HasSubstr;

namespace {

using namespace pipeswap::test_support;

class CfgParallelTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char tmpl[] = "/tmp/pipeswap-cfgpar-test-XXXXXX";
    dir_ = mkdtemp(tmpl);
    // Two samples: the fixture's noise and its mirror image, each with its CFG pair.
    auto io = pipeswap::SafetensorsFile::open(fixture("wan-t2v-diffusers/denoise.safetensors"));
    const auto lat = io->read("latents");
    pipeswap::write_safetensors(path("batch.safetensors"),
                                {{"latents", torch::cat({lat, lat.flip(-1)}, 0)},
                                 {"context", io->read("context")},
                                 {"context_null", io->read("context_null")}},
                                {});
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }
  static std::string path(const std::string& name) { return dir_ + "/" + name; }
  // The reference loop's inputs (1 sample: 4 steps, guidance 5, shift 3), or the two samples.
  static std::string args(int samples) {
    if (samples == 1) return wan_reference_denoise() + " --log-level warn";
    const std::string b = path("batch.safetensors");
    return " denoise --model " + fixture("wan-t2v-diffusers") + " --latents " + b + " --context " + b +
           " --context-null " + b + " --steps 3 --guidance 4 --shift 5 --log-level warn";
  }
  static inline std::string dir_;
};

TEST_F(CfgParallelTest, GroupsTimesStagesMatchOneRank) {
  for (int samples : {1, 2}) {
    SCOPED_TRACE(std::to_string(samples) + " sample(s)");
    const std::string ref = path("ref" + std::to_string(samples) + ".safetensors");
    Result r0 = sh(exe() + args(samples) + " --output " + ref);
    ASSERT_EQ(r0.code, 0) << r0.output;
    struct Case {
      std::string launch, flags;
    };
    // G = 2 x p = 1, 2 (3 with one sample): the fixture has 3 blocks.
    std::vector<Case> cases = {
        {"mpirun -np 2 ", " --device-chain cpu=1,cpu=1"},
        {"mpirun -np 2 ", " --device-chain cpu=1,cpu=1 --blocks-to-swap 2 --lazy-load --max-memory 100KB"},
        {"mpirun -np 4 ", " --device-chain cpu=1,cpu=2,cpu=1,cpu=2"},
        {"mpirun -np 4 ",
         " --device-chain cpu=1,cpu=1,cpu=1,cpu=1 --blocks-to-swap 1 --offload-granularity phase --lazy-load"},
    };
    if (samples == 1) {
      cases.push_back({"", " --device-chain cpu=1,cpu=1 --blocks-to-swap 1 --swap-order shared"});  // spawned, TCP
      cases.push_back({"mpirun -np 6 ", " --device-chain cpu,cpu,cpu,cpu,cpu,cpu --blocks-to-swap 1"});
    }
    int i = 0;
    for (const Case& c : cases) {
      const std::string out = path("cfg" + std::to_string(samples) + "_" + std::to_string(i++) + ".safetensors");
      Result r = sh(c.launch + exe() + args(samples) + " --cfg-parallel 2" + c.flags + " --output " + out);
      ASSERT_EQ(r.code, 0) << c.launch << c.flags << "\n" << r.output;
      EXPECT_THAT(r.output, HasSubstr("CFG-parallel: 2 guidance groups"));
      EXPECT_TRUE(same_bytes(out, ref)) << c.launch << c.flags;
    }
  }
}

// Without --cfg-parallel the plan picks: on two ranks one sample's branches run side by side (the plan
// predicts 2x against the pipeline's 1.33x), and the arrangements it compared are logged.
TEST_F(CfgParallelTest, AutoPicksTheGroupsOnTwoRanksAndOneRankStaysAsItWas) {
  const std::string ref = path("auto_ref.safetensors");
  Result r0 = sh(exe() + args(1) + " --log-level info --output " + ref);
  ASSERT_EQ(r0.code, 0) << r0.output;
  EXPECT_THAT(r0.output, ::testing::Not(HasSubstr("CFG-parallel")));
  const std::string out = path("auto.safetensors");
  Result r = sh("mpirun -np 2 " + exe() + args(1) + " --log-level info --device-chain cpu=1,cpu=1 --output " + out);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("arrangements (guidance groups x stages)"));
  EXPECT_THAT(r.output, HasSubstr("* 2 x 1 (CFG-parallel)"));
  EXPECT_THAT(r.output, HasSubstr("CFG-parallel: 2 guidance groups x 1 rank(s)"));
  EXPECT_TRUE(same_bytes(out, ref));
  const std::string piped = path("piped.safetensors");
  Result r1 = sh("mpirun -np 2 " + exe() + args(1) + " --cfg-parallel 1 --device-chain cpu=1,cpu=1 --output " + piped);
  ASSERT_EQ(r1.code, 0) << r1.output;
  EXPECT_THAT(r1.output, ::testing::Not(HasSubstr("CFG-parallel")));
  EXPECT_TRUE(same_bytes(piped, ref));
}

// `pipeswap plan` on a Wan repo shows each arrangement's predicted step and per-rank bytes, and its pick.
TEST_F(CfgParallelTest, PlanShowsEveryArrangement) {
  const std::string repo = fixture("wan-t2v-pipeline/repo");
  const std::string json = path("plan.json");
  Result r = sh(exe() + " plan --model " + repo + " --device-chain cpu,cpu --frames 5 --height 64 --width 64 --json " +
                json + " --log-level warn");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("1 x 2 (pipeline only): "));
  EXPECT_THAT(r.output, HasSubstr("* 2 x 1 (CFG-parallel): "));
  EXPECT_THAT(r.output, HasSubstr("device per rank"));
  std::ifstream f(json);
  const nlohmann::json j = nlohmann::json::parse(f);
  EXPECT_EQ(j["guidance_groups"], 2);
  ASSERT_EQ(j["arrangements"].size(), 2u);
  EXPECT_GT(j["arrangements"][0]["predicted_step_seconds"].get<double>(),
            j["arrangements"][1]["predicted_step_seconds"].get<double>());
  Result one = sh(exe() + " plan --model " + repo + " --device-chain cpu,cpu --frames 5 --height 64 --width 64 " +
                  "--cfg-parallel 1 --log-level warn");
  ASSERT_EQ(one.code, 0) << one.output;
  EXPECT_THAT(one.output, ::testing::Not(HasSubstr("CFG-parallel")));
}

TEST_F(CfgParallelTest, WhatCannotBeSplitIsNamedOnEveryRank) {
  struct Case {
    std::string launch, flags, want;
  };
  const Case cases[] = {
      {"mpirun -np 3 ", " --device-chain cpu,cpu,cpu --cfg-parallel 2", "even number of ranks"},
      {"mpirun -np 2 ", " --device-chain cpu,cpu --cfg-parallel 2 --guidance 1", "needs guidance"},
  };
  for (const Case& c : cases) {
    Result r = sh(c.launch + exe() + args(1) + c.flags + " --output " + path("bad.safetensors"), 60);
    EXPECT_NE(r.code, 0) << c.flags;
    EXPECT_THAT(r.output, HasSubstr(c.want)) << r.output;
    EXPECT_FALSE(fs::exists(path("bad.safetensors")));
  }
}

}  // namespace
