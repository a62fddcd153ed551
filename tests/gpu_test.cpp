// GPU checks (label gpu): skipped cleanly without a CUDA device. The swapping engine on CUDA gives
// results bit-identical to the all-resident run for every setting (same kernels, same order), and
// the pipeswap executable gives the same logits on one GPU with swapping on and off, and on two GPUs
// (NCCL between them) as on one.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <regex>

#include <nlohmann/json.hpp>

#include "pipeswap/core/checkpoint.h"
#include "pipeswap/core/fp8.h"
#include "pipeswap/core/torch_compat.h"
#include "pipeswap/core/safetensors.h"
#include "pipeswap/offload/block_weights.h"
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
  auto ref = run_tiny(arch,
                      *make_block_weights(arch, ckpt, {0, kBlocks, true, true},
                                          plan_swapping(arch, 0, kBlocks, torch::kFloat32, {}), cuda, {}),
                      input, kBlocks, kSweeps);
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
            auto w = make_block_weights(arch, Checkpoint::open(model), {0, kBlocks, true, true},
                                        plan_swapping(arch, 0, kBlocks, torch::kFloat32, o), cuda, o);
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

// Llama-7B-sized layers (d 4096, ffn 11008, 32 heads), 4 of them, bf16: 1.7 GB of real safetensors,
// written once per test suite into path("big").
std::string big_llama(const std::string& m) {
  if (fs::exists(m + "/model.safetensors")) return m;
  fs::create_directories(m);
  const int64_t d = 4096, ffn = 11008, vocab = 8192, layers = 4;
  std::ofstream(m + "/config.json") << "{\"model_type\": \"llama\", \"hidden_size\": 4096, \"intermediate_size\": "
                                       "11008, \"num_hidden_layers\": 4, \"num_attention_heads\": 32, "
                                       "\"num_key_value_heads\": 32, \"vocab_size\": 8192, \"rms_norm_eps\": 1e-5, "
                                       "\"torch_dtype\": \"bfloat16\"}";
  {
    torch::manual_seed(3);
    auto w = [](std::vector<int64_t> shape) { return (torch::randn(shape) * 0.02).to(torch::kBFloat16); };
    std::vector<std::pair<std::string, torch::Tensor>> t;
    t.emplace_back("model.embed_tokens.weight", w({vocab, d}));
    for (int64_t l = 0; l < layers; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      t.emplace_back(p + "input_layernorm.weight", torch::ones({d}, torch::kBFloat16));
      for (const char* n : {"q_proj", "k_proj", "v_proj", "o_proj"}) t.emplace_back(p + "self_attn." + n + ".weight", w({d, d}));
      t.emplace_back(p + "post_attention_layernorm.weight", torch::ones({d}, torch::kBFloat16));
      t.emplace_back(p + "mlp.gate_proj.weight", w({ffn, d}));
      t.emplace_back(p + "mlp.up_proj.weight", w({ffn, d}));
      t.emplace_back(p + "mlp.down_proj.weight", w({d, ffn}));
    }
    t.emplace_back("model.norm.weight", torch::ones({d}, torch::kBFloat16));
    t.emplace_back("lm_head.weight", w({vocab, d}));
    write_safetensors(m + "/model.safetensors", t);
  }
  return m;
}

TEST_F(GpuTest, PeakDeviceMemoryMatchesThePlan) {
  SKIP_WITHOUT_GPU(1);
  const std::string m = big_llama(path("big"));
  std::ofstream(path("big.json")) << "[[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16],[16,15,14,13,12,11,10,9,8,7,6,5,4,3,2,1]]";
  const std::regex line(R"(device memory peak (\d+) bytes allocated \(plan (\d+) bytes)");
  for (const std::string& args : {std::string(""), std::string("--blocks-to-swap 3"),
                                  std::string("--blocks-to-swap 4 --offload-granularity phase --prefetch-depth 2"),
                                  std::string("--vram-budget 1GB"),
                                  // issue 17: fp8 bytes in slots, and the two workspaces of the
                                  // dequantise ahead (auto on CUDA), or the dequantised copy per use
                                  std::string("--weight-dtype fp8 --blocks-to-swap 3"),
                                  std::string("--weight-dtype fp8 --blocks-to-swap 3 --fp8-dequantise per-use")}) {
    Result r = sh(exe() + " run --model " + m + " --input " + path("big.json") + " --device-chain cuda:0 " +
                      "--micro-batches 2 --output " + path("big.safetensors") + " " + args,
                  300);
    ASSERT_EQ(r.code, 0) << args << "\n" << r.output;
    std::smatch match;
    ASSERT_TRUE(std::regex_search(r.output, match, line)) << args << "\n" << r.output;
    const double peak = std::stod(match[1]), plan = std::stod(match[2]);
    std::cout << "[ memory   ] " << (args.empty() ? "resident" : args) << ": measured peak " << peak << " bytes, plan "
              << plan << " bytes (" << 100.0 * (peak - plan) / plan << "%)\n";
    EXPECT_NEAR(peak / plan, 1.0, 0.05) << args;
  }
}

// Composition on two GPUs: each rank streams its swapped blocks in on its copy stream while its compute
// and its NCCL traffic go on. The trace (device-timed: copy stream, compute stream, NCCL's comm stream)
// shows all three at once on a rank, and the logits equal the one-GPU run's.
TEST_F(GpuTest, TwoGpusOverlapCopyComputeAndNccl) {
  SKIP_WITHOUT_GPU(2);
  const std::string m = big_llama(path("big"));
  {
    std::ofstream in(path("long.json"));  // 4 sequences of 512 tokens
    in << "[";
    for (int b = 0; b < 4; ++b) {
      in << (b ? ",[" : "[");
      for (int t = 0; t < 512; ++t) in << (t ? "," : "") << (b * 977 + t * 31) % 8192;
      in << "]";
    }
    in << "]";
  }
  const std::string base = " run --model " + m + " --input " + path("long.json") + " --micro-batches 4 --log-level warn";
  ASSERT_EQ(sh(exe() + base + " --device-chain cuda:0 --output " + path("ov1.safetensors"), 300).code, 0);
  const std::string trace_file = path("overlap.json");
  Result r = sh("mpirun -np 2 " + exe() + base + " --device-chain cuda:0,cuda:1 --blocks-to-swap 1 --prefetch-depth 1" +
                    " --output " + path("ov2.safetensors") + " --trace " + trace_file,
                300);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(same_bytes(path("ov2.safetensors"), path("ov1.safetensors")));

  std::ifstream in(trace_file);
  const auto t = nlohmann::json::parse(in);
  for (const auto& rk : t.at("otherData").at("ranks")) EXPECT_TRUE(rk.value("device_timing", false)) << rk.dump();
  // Per rank: the compute, copy and NCCL ranges, in microseconds.
  using Spans = std::vector<std::pair<double, double>>;
  std::map<int, std::map<std::string, Spans>> spans;
  for (const auto& e : t.at("traceEvents")) {
    if (e.at("ph") != "X") continue;
    const std::string cat = e.at("cat"), name = e.at("name");
    const std::string what = name.rfind("nccl ", 0) == 0 ? "nccl" : cat;
    if (what != "compute" && what != "copy" && what != "nccl") continue;
    const double b = e.at("ts"), d = e.at("dur");
    spans[e.at("pid").get<int>()][what].emplace_back(b, b + d);
  }
  // How long a rank had all of `kinds` running at once (sweep over the ranges' ends).
  auto together = [](const std::map<std::string, Spans>& by, const std::vector<std::string>& kinds) {
    std::vector<std::pair<double, int>> edges;  // (time, +1/-1 for kind k) encoded as k + 1 / -(k + 1)
    for (size_t k = 0; k < kinds.size(); ++k) {
      auto it = by.find(kinds[k]);
      if (it == by.end()) return 0.0;
      for (const auto& [b, e] : it->second) {
        edges.emplace_back(b, static_cast<int>(k) + 1);
        edges.emplace_back(e, -(static_cast<int>(k) + 1));
      }
    }
    std::sort(edges.begin(), edges.end());
    std::vector<int> open(kinds.size(), 0);
    double total = 0, last = 0;
    for (const auto& [time, k] : edges) {
      bool all = true;
      for (int n : open) all = all && n > 0;
      if (all) total += time - last;
      open[static_cast<size_t>(std::abs(k) - 1)] += k > 0 ? 1 : -1;
      last = time;
    }
    return total;
  };
  double triple = 0;
  for (int rank : {0, 1}) {
    const auto& by = spans[rank];
    for (const char* k : {"compute", "copy", "nccl"}) EXPECT_GT(by.count(k), 0u) << "rank " << rank << ": no " << k;
    const double copy_compute = together(by, {"copy", "compute"});
    const double nccl_compute = together(by, {"nccl", "compute"});
    const double all = together(by, {"copy", "compute", "nccl"});
    std::cout << "[ overlap  ] rank " << rank << ": copy+compute " << copy_compute << " us, nccl+compute " << nccl_compute
              << " us, all three " << all << " us\n";
    EXPECT_GT(copy_compute, 0) << "rank " << rank << ": slot fills never ran beside compute";
    EXPECT_GT(nccl_compute, 0) << "rank " << rank << ": NCCL transfers never ran beside compute";
    triple += all;
  }
  EXPECT_GT(triple, 0) << "no moment with a copy, compute and an NCCL transfer running at once on one rank";
}

// The Wan fixture sampled on one GPU: fp32 matches the diffusers-driven reference loop, every swap
// setting and granularity gives the resident run's latents bit for bit, and bf16 stays within a
// stated tolerance of the fp32 reference.
TEST_F(GpuTest, WanDenoiseOnOneGpu) {
  SKIP_WITHOUT_GPU(1);
  const std::string io = fixture("wan-t2v-diffusers/denoise.safetensors");
  const std::string base = exe() + wan_reference_denoise() + " --device-chain cuda:0 --log-level warn";
  const std::string ref = path("wan_ref.safetensors");
  Result r = sh(base + " --dtype fp32 --output " + ref);
  ASSERT_EQ(r.code, 0) << r.output;
  const auto want = SafetensorsFile::open(io)->read("output");
  const auto got = SafetensorsFile::open(ref)->read("latents");
  const double err = (got - want).abs().max().item<double>() / want.abs().max().item<double>();
  std::cout << "[ fixture  ] wan denoise fp32 on cuda: max |error| / max |latent| " << err << "\n";
  EXPECT_LE(err, 1e-4);
  for (const std::string& args : {std::string("--blocks-to-swap 2"),
                                  std::string("--blocks-to-swap 3 --offload-granularity phase --prefetch-depth 2"),
                                  std::string("--blocks-to-swap 2 --lazy-load --offload-txt-emb")}) {
    const std::string out = path("wan_swap.safetensors");
    Result s = sh(base + " --dtype fp32 --output " + out + " " + args);
    ASSERT_EQ(s.code, 0) << args << "\n" << s.output;
    EXPECT_TRUE(same_bytes(out, ref)) << args;
  }
  Result b = sh(base + " --dtype bf16 --blocks-to-swap 2 --output " + path("wan_bf16.safetensors"));
  ASSERT_EQ(b.code, 0) << b.output;
  const auto bf = SafetensorsFile::open(path("wan_bf16.safetensors"))->read("latents");
  const double rel = (bf - want).norm().item<double>() / want.norm().item<double>();
  std::cout << "[ fixture  ] wan denoise bf16 on cuda: relative error " << rel << "\n";
  EXPECT_LE(rel, 2e-2) << "bf16 latents after 4 guided steps";
}

TEST_F(GpuTest, TwoGpusDenoiseMatchOneGpu) {
  SKIP_WITHOUT_GPU(2);
  const std::string args = wan_reference_denoise() + " --dtype fp32 --log-level warn";
  const std::string ref = path("wan1.safetensors");
  ASSERT_EQ(sh(exe() + args + " --device-chain cuda:0 --output " + ref).code, 0);
  for (const std::string& extra : {std::string(""), std::string(" --blocks-to-swap 1 --offload-granularity phase")}) {
    const std::string out = path("wan2.safetensors");
    Result r = sh("mpirun -np 2 " + exe() + args + " --device-chain cuda:0=1,cuda:1=2 --output " + out + extra);
    ASSERT_EQ(r.code, 0) << extra << "\n" << r.output;
    EXPECT_TRUE(same_bytes(out, ref)) << extra;
    Result sn = sh(exe() + args + " --device-chain cuda:0=1,cuda:1=2 --output " + out + extra);
    ASSERT_EQ(sn.code, 0) << "single-node" << extra << "\n" << sn.output;
    EXPECT_TRUE(same_bytes(out, ref)) << "single-node" << extra;
  }
}

// fp8 (issue 17) on the device: LibTorch's float8 conversion and the 256-entry table give the same bits
// (both are float32(fp8) * scale rounded once), on CUDA as on the CPU.
TEST_F(GpuTest, Fp8DequantiseOnCudaMatchesTableAndCpu) {
  SKIP_WITHOUT_GPU(1);
  const torch::Device cuda(torch::kCUDA, 0);
  torch::manual_seed(17);
  const torch::Tensor bytes = torch::randint(0, 256, {512, 384}, torch::kInt32).to(torch::kUInt8);
  // Per output channel, per tensor (0-dim and one element: the spellings files use) and no scale.
  const std::vector<torch::Tensor> scales = {torch::rand({512, 1}) + 0.01, torch::tensor(0.37f),
                                             torch::tensor({1.7f}), torch::Tensor()};
  auto to_cuda = [&](const torch::Tensor& t) { return t.defined() ? t.to(cuda) : t; };
  for (Fp8Format f : {Fp8Format::kE4M3, Fp8Format::kE5M2}) {
    for (auto dt : {torch::kFloat32, torch::kBFloat16, torch::kFloat16}) {
      for (const auto& scale : scales) {
        // The native path converts straight to dt (no float32 temporary) and must still equal the table's
        // float32-then-round values bit for bit.
        const auto cpu = dequantize_fp8_by_table(bytes, f, scale, dt);
        const auto native = dequantize_fp8(bytes.to(cuda), f, to_cuda(scale), dt).cpu();
        const auto table = dequantize_fp8_by_table(bytes.to(cuda), f, to_cuda(scale), dt).cpu();
        // NaN patterns compared as NaN: equal where both are not NaN, NaN at the same places.
        auto same = [](const torch::Tensor& a, const torch::Tensor& b) {
          auto an = a.isnan(), bn = b.isnan();
          return torch::equal(an, bn) && torch::equal(a.masked_fill(an, 0), b.masked_fill(bn, 0));
        };
        const std::string what = std::string(to_string(f)) + " " + c10::toString(dt) + " scale " +
                                 (scale.defined() ? std::to_string(scale.dim()) + "-dim" : "none");
        EXPECT_TRUE(same(native, table)) << what;
        EXPECT_TRUE(same(native, cpu)) << what;
        EXPECT_EQ(native.scalar_type(), dt) << what;
      }
    }
  }
}

// The fused dequantise kernel (core/src/fp8_kernels.cu) gives the ATen path's bits (the float8 view's .to
// then mul_ by the float32 scale, and the 256-entry table) for every format x output dtype x scale kind, on
// sizes that are not multiples of its 16-element vector, on a large tensor (grid-stride loops, rows
// crossing vectors) and on misaligned bytes (its one-element path). NaN: at the same places (their payloads
// in float32 are the device's, as ATen's).
TEST_F(GpuTest, Fp8FusedDequantiseMatchesAtenBits) {
  SKIP_WITHOUT_GPU(1);
  if (!fp8_fused_kernel()) GTEST_SKIP() << "this build has no fused fp8 kernel (needs PyTorch's LibTorch and nvcc)";
  const torch::Device cuda(torch::kCUDA, 0);
  torch::manual_seed(23);
  auto bits_equal = [](const torch::Tensor& a, const torch::Tensor& b) -> ::testing::AssertionResult {
    if (a.sizes() != b.sizes() || a.scalar_type() != b.scalar_type())
      return ::testing::AssertionFailure() << "shape or dtype differ";
    const auto an = a.isnan(), bn = b.isnan();
    if (!torch::equal(an, bn)) return ::testing::AssertionFailure() << "NaN at other places";
    const auto int_type = a.element_size() == 4 ? torch::kInt32 : torch::kInt16;
    const auto ai = a.masked_fill(an, 0).contiguous().view(int_type);
    const auto bi = b.masked_fill(bn, 0).contiguous().view(int_type);
    const auto diff = ai.ne(bi);
    if (diff.any().item<bool>()) {
      const int64_t i = diff.reshape({-1}).nonzero()[0][0].item<int64_t>();
      return ::testing::AssertionFailure() << diff.sum().item<int64_t>() << " elements differ, first at " << i << ": "
                                           << a.reshape({-1})[i].item<double>() << " vs "
                                           << b.reshape({-1})[i].item<double>();
    }
    return ::testing::AssertionSuccess();
  };
  struct Shape {
    std::vector<int64_t> sizes;
    int64_t offset;  // bytes before the tensor in its buffer: 1 takes the kernel's unaligned path
  };
  const Shape shapes[] = {{{37, 23}, 0}, {{1001}, 0}, {{3, 5, 7}, 0}, {{515, 1023}, 0}, {{33, 17}, 1}, {{7, 3}, 0}};
  for (const Shape& sh : shapes) {
    int64_t n = 1;
    for (int64_t d : sh.sizes) n *= d;
    const auto all = torch::randint(0, 256, {n + sh.offset}, torch::kInt32).to(torch::kUInt8).to(cuda);
    // Every byte value at least once where the tensor is large enough.
    if (n >= 256) all.narrow(0, sh.offset, 256).copy_(torch::arange(256, torch::kInt32).to(torch::kUInt8));
    const torch::Tensor bytes = all.narrow(0, sh.offset, n).view(sh.sizes);
    const int64_t rows = sh.sizes[0];
    std::vector<int64_t> row_shape(sh.sizes.size(), 1);
    row_shape[0] = rows;
    const std::vector<std::pair<std::string, torch::Tensor>> scales = {
        {"none", torch::Tensor()},
        {"tensor 0-dim", torch::tensor(0.37f).to(cuda)},
        {"tensor [1]", torch::tensor({1.7f}).to(cuda)},
        {"per row", (torch::rand(row_shape) * 3 + 0.01).to(cuda)},
        {"per row tiny", (torch::rand(row_shape) * 1e-30 + 1e-38).to(cuda)},  // products below the normal range
    };
    for (Fp8Format f : {Fp8Format::kE4M3, Fp8Format::kE5M2}) {
      for (auto dt : {torch::kFloat32, torch::kBFloat16, torch::kFloat16}) {
        for (const auto& [kind, scale] : scales) {
          const std::string what = std::string(to_string(f)) + " " + c10::toString(dt) + " scale " + kind +
                                   " shape " + shape_str(bytes.sizes()) + " offset " + std::to_string(sh.offset);
          const auto fused = dequantize_fp8(bytes, f, scale, dt);
          const auto aten = dequantize_fp8_by_aten(bytes, f, scale, dt);
          const auto table = dequantize_fp8_by_table(bytes, f, scale, dt);
          EXPECT_TRUE(bits_equal(fused.cpu(), aten.cpu())) << what;
          EXPECT_TRUE(bits_equal(fused.cpu(), table.cpu())) << what;
          // Into a workspace slice, as the dequantise ahead writes.
          torch::Tensor ws = torch::zeros({n + 64}, bytes.options().dtype(dt)).narrow(0, 8, n);
          dequantize_fp8_into(bytes, f, scale, ws);
          EXPECT_TRUE(bits_equal(ws.view(bytes.sizes()).cpu(), aten.cpu())) << what << " (into)";
        }
      }
    }
  }
}

// An fp8 checkpoint on the GPU (bf16 compute) equals the run on torch's dequantised copy (float32, rounded
// to bf16 at load: the same values the device dequantise gives), resident and swapped.
TEST_F(GpuTest, Fp8WanOnGpuMatchesDequantisedWeights) {
  SKIP_WITHOUT_GPU(1);
  const std::string ref = path("fp8_ref.safetensors");
  auto args = [](const std::string& model) {
    return exe() + wan_reference_denoise("fp8/" + model) + " --device-chain cuda:0 --dtype bf16 --log-level warn";
  };
  Result r = sh(args("wan21-scaled-e4m3-ref") + " --output " + ref);
  ASSERT_EQ(r.code, 0) << r.output;
  // auto: the dequantise ahead on CUDA (offload/src/fp8_ahead.h); per-use: each weight at its lookup.
  for (const std::string& extra :
       {std::string(""), std::string(" --blocks-to-swap 2"),
        std::string(" --blocks-to-swap 2 --lazy-load --offload-granularity phase"),
        std::string(" --fp8-dequantise per-use"), std::string(" --blocks-to-swap 2 --fp8-dequantise per-use"),
        std::string(" --blocks-to-swap 3 --offload-granularity phase --prefetch-depth 2 --use-non-blocking=false")}) {
    const std::string out = path("fp8_out.safetensors");
    Result s = sh(args("wan21-scaled-e4m3") + extra + " --output " + out);
    ASSERT_EQ(s.code, 0) << extra << "\n" << s.output;
    EXPECT_TRUE(same_bytes(out, ref)) << extra;
  }
}

// --fp8-gemm scaled-mm (torch._scaled_mm, LibTorch >= 2.5 on Hopper): the tiny Llama's matrices (64, 128
// wide: multiples of 16) run as fp8 GEMMs with activations quantised per token. Both fp8 runs are measured
// against transformers' float32 logits. Dequantise-per-use carries the weights' e4m3 rounding (0.184 relative
// L2 on this random tiny model, on the CPU too); scaled-mm adds the activations' e4m3 rounding, an error of
// about the same size and independent of it, so about 1.4x that. The bound is 2x. A wrong scale, layout or
// transposition gives errors near 1. (The first H100 run, 2026-12-08, measured 0.144 between the two fp8 runs
// and failed the old bound of 0.1 on that pair, which was below the weights' own rounding error.)
TEST_F(GpuTest, Fp8ScaledMmCloseToDequantisePerUse) {
  SKIP_WITHOUT_GPU(1);
  if (!compat::kHasScaledMm) GTEST_SKIP() << "LibTorch " << compat::torch_version() << " has no row-wise _scaled_mm";
  const std::string base = exe() + " run --model " + fixture("llama_bias") + " --input " +
                           fixture("llama_bias/expected.safetensors") +
                           " --device-chain cuda:0 --dtype bf16 --weight-dtype fp8 --log-level info";
  const std::string a = path("deq.safetensors"), b = path("smm.safetensors");
  Result r = sh(base + " --output " + a);
  ASSERT_EQ(r.code, 0) << r.output;
  Result s = sh(base + " --fp8-gemm scaled-mm --output " + b);
  ASSERT_EQ(s.code, 0) << s.output;
  EXPECT_THAT(s.output, ::testing::Not(HasSubstr("dequantised per use instead")));
  const auto ref = SafetensorsFile::open(fixture("llama_bias/expected.safetensors"))->read("logits").to(torch::kFloat32);
  const auto x = SafetensorsFile::open(a)->read("logits").to(torch::kFloat32);
  const auto y = SafetensorsFile::open(b)->read("logits").to(torch::kFloat32);
  auto rel = [](const torch::Tensor& u, const torch::Tensor& v) { return ((u - v).norm() / v.norm()).item<double>(); };
  const double deq = rel(x, ref), smm = rel(y, ref), between = rel(y, x);
  std::cout << "[ fp8      ] llama logits against transformers' float32, relative L2: dequantise per use " << deq
            << ", _scaled_mm " << smm << " (between the two: " << between << ")\n";
  EXPECT_GT(between, 0.0) << "the fp8 GEMM path did not run";
  EXPECT_LT(smm, 2.0 * deq);
  EXPECT_LT(deq, 0.3);
}

}  // namespace
