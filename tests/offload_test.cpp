// The swapping engine: every residency setting gives results bit-identical to the all-resident run,
// the host cache stays inside its budget (measured), disk reads equal the plan's prediction, and a
// weight file truncated mid-run fails with a named error.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "pipeswap/core/checkpoint.h"
#include "pipeswap/core/error.h"
#include "pipeswap/core/safetensors.h"
#include "pipeswap/offload/block_weights.h"
#include "pipeswap/offload/residency.h"
#include "tiny_arch.h"

using namespace pipeswap;
using namespace pipeswap::offload;
using ::testing::HasSubstr;
namespace fs = std::filesystem;

namespace {

using namespace pipeswap::test_support;

class OffloadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/pipeswap-offload-XXXXXX";
    dir_ = mkdtemp(tmpl);
    write_tiny_checkpoint(dir_, kBlocks);
    input_ = torch::randn({3, 4, kDim});
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::vector<torch::Tensor> run(BlockWeights& w, int sweeps) { return run_tiny(arch_, w, input_, kBlocks, sweeps); }

  std::unique_ptr<BlockWeights> resident() {
    return make_block_weights(arch_, Checkpoint::open(dir_), {0, kBlocks, true, true},
                              plan_swapping(arch_, 0, kBlocks, torch::kFloat32, {}), torch::kCPU, {});
  }
  std::unique_ptr<BlockWeights> swapped(const OffloadOptions& o, std::shared_ptr<Checkpoint> ckpt = nullptr) {
    return make_block_weights(arch_, ckpt ? ckpt : Checkpoint::open(dir_), {0, kBlocks, true, true},
                              plan_swapping(arch_, 0, kBlocks, torch::kFloat32, o), torch::kCPU, o);
  }

  static constexpr int kBlocks = 7;
  static constexpr int kSweeps = 3;
  TinyArch arch_{kBlocks};
  std::string dir_;
  torch::Tensor input_;
};

TEST(Residency, BlocksToSwapAndRatio) {
  OffloadOptions o;
  EXPECT_EQ(blocks_to_swap_for(o, 10), 0);
  o.blocks_to_swap = 4;
  EXPECT_EQ(blocks_to_swap_for(o, 10), 4);
  o.blocks_to_swap = 11;
  EXPECT_THROW(blocks_to_swap_for(o, 10), ConfigError);
  o.blocks_to_swap = -1;
  EXPECT_THROW(blocks_to_swap_for(o, 10), ConfigError);
  o.blocks_to_swap.reset();
  o.offload_ratio = 0.25;
  EXPECT_EQ(blocks_to_swap_for(o, 10), 3);  // round(2.5) away from zero
  o.offload_ratio = 1.5;
  EXPECT_THROW(blocks_to_swap_for(o, 10), ConfigError);
}

TEST(Residency, Policies) {
  auto str = [](const std::vector<bool>& v) {
    std::string s;
    for (bool b : v) s += b ? 'S' : 'r';
    return s;
  };
  EXPECT_EQ(str(choose_swapped(6, 2, ResidentPolicy::kSuffix)), "rrrrSS");
  EXPECT_EQ(str(choose_swapped(6, 2, ResidentPolicy::kPrefix)), "SSrrrr");
  EXPECT_EQ(str(choose_swapped(6, 4, ResidentPolicy::kInterleaved)), "SrSSrS");
  EXPECT_EQ(str(choose_swapped(8, 4, ResidentPolicy::kInterleaved)), "SrSrSrSr");
  EXPECT_EQ(str(choose_swapped(5, 5, ResidentPolicy::kInterleaved)), "SSSSS");
  EXPECT_EQ(str(choose_swapped(5, 0, ResidentPolicy::kInterleaved)), "rrrrr");
  for (int n = 1; n < 20; ++n)
    for (int s = 0; s <= n; ++s) {
      auto v = choose_swapped(n, s, ResidentPolicy::kInterleaved);
      EXPECT_EQ(std::count(v.begin(), v.end(), true), s) << n << " " << s;
    }
}


TEST_F(OffloadTest, EverySettingIsBitIdenticalToAllResident) {
  auto ref = run(*resident(), kSweeps);
  int combos = 0;
  for (auto policy : {ResidentPolicy::kSuffix, ResidentPolicy::kPrefix, ResidentPolicy::kInterleaved}) {
    for (auto gran : {Granularity::kBlock, Granularity::kPhase}) {
      for (int depth : {1, 2, 4}) {
        for (bool lazy : {false, true}) {
          for (bool non_blocking : {true, false}) {
            if (!non_blocking && depth > 1) continue;  // depth means nothing for synchronous copies
            for (int swap : {1, 4, kBlocks}) {
              OffloadOptions o;
              o.blocks_to_swap = swap;
              o.policy = policy;
              o.granularity = gran;
              o.prefetch_depth = depth;
              o.lazy_load = lazy;
              o.use_non_blocking = non_blocking;
              o.num_disk_workers = 2;
              // A budget that holds some swapped blocks but not all, so units both stick and stream.
              if (lazy && swap == kBlocks) o.max_memory = 6 * kTinyUnit;
              auto got = run(*swapped(o), kSweeps);
              for (int s = 0; s < kSweeps; ++s) {
                ASSERT_TRUE(torch::equal(got[s], ref[s]))
                    << "policy " << to_string(policy) << " granularity " << to_string(gran) << " depth " << depth
                    << " lazy " << lazy << " non_blocking " << non_blocking << " swap " << swap << " sweep " << s;
              }
              ++combos;
            }
          }
        }
      }
    }
  }
  EXPECT_GT(combos, 60);
}

TEST_F(OffloadTest, HostCacheStaysInBudgetAndDiskReadsMatchThePlan) {
  const int64_t unit = kTinyUnit;
  for (int64_t budget : {int64_t{0}, 3 * unit, 5 * unit, 7 * unit, 100 * unit}) {
    OffloadOptions o;
    o.blocks_to_swap = kBlocks;
    o.lazy_load = true;
    o.num_disk_workers = 2;
    o.max_memory = budget;
    SwapLayout plan = plan_swapping(arch_, 0, kBlocks, torch::kFloat32, o);
    auto ckpt = Checkpoint::open(dir_);
    auto w = swapped(o, ckpt);
    run(*w, kSweeps);
    OffloadStats st = w->stats();
    if (budget > 0) {
      EXPECT_LE(st.host_peak_bytes, budget) << "budget " << budget;
    }
    EXPECT_EQ(st.host_peak_bytes, plan.host_bytes) << "budget " << budget;
    EXPECT_EQ(st.disk_bytes_read, plan.disk_bytes(kSweeps)) << "budget " << budget;
    const int64_t all = kBlocks * (kDim * kDim * 4 * 2 + kDim * 4);
    if (budget == 0 || budget >= kBlocks * unit) {
      EXPECT_EQ(st.disk_bytes_read, all) << "everything fits: each block read once, never again";
    } else {
      EXPECT_GT(st.disk_bytes_read, all) << "streamed blocks are read again every sweep";
    }
    EXPECT_EQ(st.copies, kBlocks * kSweeps);
  }
}

TEST_F(OffloadTest, BudgetTooSmallNamesTheMinimum) {
  OffloadOptions o;
  o.blocks_to_swap = 3;
  o.lazy_load = true;
  o.num_disk_workers = 2;
  o.max_memory = 1000;
  try {
    plan_swapping(arch_, 0, kBlocks, torch::kFloat32, o);
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_THAT(e.what(), HasSubstr("--max-memory 1000 is too small"));
    EXPECT_THAT(e.what(), HasSubstr("at least " + std::to_string(3 * kTinyUnit)));
  }
  o.lazy_load = false;
  try {
    plan_swapping(arch_, 0, kBlocks, torch::kFloat32, o);
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_THAT(e.what(), HasSubstr("--lazy-load"));
  }
}

TEST_F(OffloadTest, OffloadedAndOnDemandComponentsGiveTheSameResults) {
  auto ref = run(*resident(), kSweeps);
  OffloadOptions o;
  o.offload_components = {"embed"};
  o.on_demand_components = {"head"};
  auto ckpt = Checkpoint::open(dir_);
  auto w = make_block_weights(arch_, ckpt, {0, kBlocks, true, true},
                              plan_swapping(arch_, 0, kBlocks, torch::kFloat32, o), torch::kCPU, o);
  const uint64_t before = ckpt->bytes_read();
  auto got = run(*w, kSweeps);
  for (int s = 0; s < kSweeps; ++s) EXPECT_TRUE(torch::equal(got[s], ref[s]));
  // The on-demand head is read from disk at every use; the host-kept embedding never again.
  EXPECT_EQ(ckpt->bytes_read() - before, static_cast<uint64_t>(kSweeps * kDim * 4));
  // Swapping and component offload compose.
  o.blocks_to_swap = 3;
  o.lazy_load = true;
  got = run(*swapped(o), kSweeps);
  for (int s = 0; s < kSweeps; ++s) EXPECT_TRUE(torch::equal(got[s], ref[s]));

  OffloadOptions bad;
  bad.offload_components = {"vae"};
  try {
    component_modes(arch_, bad);
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_THAT(e.what(), HasSubstr("'vae'"));
    EXPECT_THAT(e.what(), HasSubstr("embed, head"));
  }
}

TEST_F(OffloadTest, FileTruncatedMidRunIsANamedError) {
  OffloadOptions o;
  o.blocks_to_swap = kBlocks;
  o.lazy_load = true;
  o.max_memory = 3 * kTinyUnit;  // streaming: blocks are read again every sweep
  auto w = swapped(o);
  run(*w, 1);
  // Cut the file in the middle of the blocks' tensors.
  fs::resize_file(dir_ + "/model.safetensors", fs::file_size(dir_ + "/model.safetensors") / 2);
  try {
    run(*w, 2);
    FAIL() << "expected a CheckpointError";
  } catch (const CheckpointError& e) {
    EXPECT_THAT(e.what(), HasSubstr("model.safetensors"));
    EXPECT_THAT(e.what(), HasSubstr("layers."));
  }
}

}  // namespace
