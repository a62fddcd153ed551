// The swapping engine: every residency setting gives results bit-identical to the all-resident run,
// the host cache keeps every block that fits (measured), disk reads equal the plan's prediction sweep
// by sweep, and a weight file truncated mid-run fails with a named error.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "pipeswap/core/checkpoint.h"
#include "pipeswap/core/error.h"
#include "pipeswap/core/fp8.h"
#include "pipeswap/core/safetensors.h"
#include "pipeswap/offload/block_weights.h"
#include "pipeswap/offload/residency.h"
#include "fp8_ahead.h"
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

// The host cache under the sweeps' cyclic order: every block that fits in --max-memory is read once and
// kept, the rest are read again every sweep (an LRU cache would evict the block needed next and read
// them all); sweep by sweep, the disk reads are the plan's per-pass figures, and host memory is the
// plan's: the cached blocks plus the staging buffers beside them.
TEST_F(OffloadTest, HostCacheKeepsEveryBlockThatFitsAndReadsTheRestEachSweep) {
  const int64_t unit = kTinyUnit;
  const int64_t block_tensors = kDim * kDim * 4 * 2 + kDim * 4;  // what a read of one block moves
  for (int64_t budget : {int64_t{0}, int64_t{1000}, 3 * unit, 5 * unit + 100, 6 * unit, 100 * unit}) {
    OffloadOptions o;
    o.blocks_to_swap = kBlocks;
    o.lazy_load = true;
    o.num_disk_workers = 2;
    o.max_memory = budget;
    const SwapLayout plan = plan_swapping(arch_, 0, kBlocks, torch::kFloat32, o);
    const int64_t fit = budget == 0 ? kBlocks : std::min<int64_t>(kBlocks, budget / unit);
    EXPECT_EQ(plan.sticky_bytes, fit * unit) << "budget " << budget;
    EXPECT_EQ(static_cast<int64_t>(plan.cached_block_ids().size()), fit) << "budget " << budget;
    EXPECT_EQ(plan.disk_bytes(1), kBlocks * block_tensors) << "budget " << budget;
    EXPECT_EQ(plan.disk_bytes(2) - plan.disk_bytes(1), (kBlocks - fit) * block_tensors) << "budget " << budget;
    auto ckpt = Checkpoint::open(dir_);
    auto w = swapped(o, ckpt);
    for (int s = 0; s < kSweeps; ++s) {
      const int64_t before = w->stats().disk_bytes_read;
      run(*w, 1);
      EXPECT_EQ(w->stats().disk_bytes_read - before, (s == 0 ? kBlocks : kBlocks - fit) * block_tensors)
          << "budget " << budget << " sweep " << s;
    }
    OffloadStats st = w->stats();
    EXPECT_EQ(st.host_peak_bytes, plan.host_bytes) << "budget " << budget;
    EXPECT_EQ(plan.host_bytes, fit * unit + plan.staging_buffers * plan.staging_bytes) << "budget " << budget;
    EXPECT_EQ(plan.staging_buffers, fit == kBlocks ? 0 : 3) << "budget " << budget;
    EXPECT_EQ(st.copies, kBlocks * kSweeps);
  }
}

// Phase units differ in size: a budget that stops fitting one unit still keeps later smaller ones.
TEST_F(OffloadTest, HostCacheKeepsLaterUnitsThatStillFit) {
  OffloadOptions o;
  o.blocks_to_swap = kBlocks;
  o.lazy_load = true;
  o.granularity = Granularity::kPhase;
  auto kept = [&](int64_t budget) {
    o.max_memory = budget;
    std::string s;
    for (const Unit& u : plan_swapping(arch_, 0, kBlocks, torch::kFloat32, o).units) s += u.cached ? 'K' : '.';
    return s;
  };
  // Phases: one (w1 + b1, 4352 bytes), two (w2, 4096).
  EXPECT_EQ(kept(4352 + 4096 + 4352), "KKK...........");
  // Block 1's first phase no longer fits in what is left (4200), its second phase does.
  EXPECT_EQ(kept(4352 + 4096 + 4200), "KK.K..........");
}

TEST_F(OffloadTest, BudgetWithoutLazyLoadIsChecked) {
  OffloadOptions o;
  o.blocks_to_swap = 3;
  o.lazy_load = true;
  o.num_disk_workers = 2;
  o.max_memory = 1000;  // holds no block: every swapped block streams, none is an error
  const SwapLayout l = plan_swapping(arch_, 0, kBlocks, torch::kFloat32, o);
  EXPECT_EQ(l.sticky_bytes, 0);
  EXPECT_EQ(l.streamed_bytes, 3 * kTinyUnit);
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

// The fp8 dequantise ahead's bookkeeping on the CPU (offload/src/fp8_ahead.h; on CUDA the same calls add the
// side stream and its events): a phase prepared ahead is taken from its workspace (a hit), one that was not
// (the first, or after an unexpected order) is dequantised at take (a miss); either way its weights are
// dequantize_fp8's bits, plain weights and views without fp8 weights pass through, and a second phase taken
// before the first's release is an error.
TEST(Fp8Ahead, TakesWhatWasPreparedAndDequantisesTheRest) {
  torch::manual_seed(3);
  auto fp8_view = [](int64_t rows, int64_t cols) {
    WeightView v;
    v.add("norm", torch::rand({cols}));
    WeightView::Fp8Weight a;
    a.bytes = torch::randint(0, 256, {rows, cols}, torch::kInt32).to(torch::kUInt8);
    a.scale = torch::rand({rows, 1}) + 0.1;
    a.format = Fp8Format::kE4M3;
    a.dtype = torch::kBFloat16;
    v.add_fp8("a.weight", a);
    WeightView::Fp8Weight b;
    b.bytes = torch::randint(0, 256, {cols + 3}, torch::kInt32).to(torch::kUInt8);
    b.scale = torch::tensor({0.5f});
    b.format = Fp8Format::kE5M2;
    b.dtype = torch::kBFloat16;
    v.add_fp8("b.weight", b);
    return v;
  };
  const WeightView p0 = fp8_view(7, 5), p1 = fp8_view(9, 3), p2 = fp8_view(4, 11);
  WeightView plain;
  plain.add("x", torch::ones({3}));
  // Each tensor 256-aligned in bf16: the largest phase is p2 (4*11*2 -> 256, 14*2 -> 256).
  Fp8Ahead ahead(torch::kCPU, 512);
  EXPECT_EQ(ahead.device_bytes(), 1024);
  auto check = [](const WeightView& got, const WeightView& src) {
    for (const auto& name : src.fp8_names()) {
      const WeightView::Fp8Weight& w = *src.fp8(name);
      const torch::Tensor want = dequantize_fp8(w.bytes, w.format, w.scale, w.dtype);
      EXPECT_TRUE(torch::equal(got[name], want)) << name;
      EXPECT_NE(got.fp8(name), nullptr) << "the fp8 form stays (fp8 GEMMs read the bytes)";
    }
    EXPECT_TRUE(torch::equal(got["norm"], src["norm"]));
  };
  // Two sweeps over p0, p1, plain, p2, each phase preparing the next (the last the next sweep's first).
  const std::vector<const WeightView*> order = {&p0, &p1, &plain, &p2};
  for (int sweep = 0; sweep < 2; ++sweep) {
    for (size_t i = 0; i < order.size(); ++i) {
      const WeightView& got = ahead.take(*order[i]);
      ahead.prepare(*order[(i + 1) % order.size()], {});
      if (order[i] == &plain) {
        EXPECT_EQ(&got, &plain) << "a view without fp8 weights passes through";
      } else {
        check(got, *order[i]);
      }
      ahead.release();
    }
  }
  // Only the very first phase was dequantised at take (plain counts neither way).
  EXPECT_EQ(ahead.misses(), 1);
  EXPECT_EQ(ahead.hits(), 5);
  // An unexpected order: p1 was prepared, p2 is taken. A miss with p2's values, and p1's stale copy does
  // not leak into the next take of p1.
  ahead.take(p0);
  ahead.prepare(p1, {});
  ahead.release();
  check(ahead.take(p2), p2);
  ahead.prepare(p0, {});
  ahead.release();
  EXPECT_EQ(ahead.misses(), 2);
  check(ahead.take(p0), p0);  // prepared: a hit
  EXPECT_EQ(ahead.hits(), 7);
  // One phase at a time.
  EXPECT_THROW(ahead.take(p1), Error);
  ahead.release();
  check(ahead.take(p1), p1);
  ahead.release();
}
