// End to end: `pipeswap denoise` on the tiny Wan fixtures (tests/reference/make_wan_fixtures.py).
// The single-rank run must match the diffusers-driven reference loop; every split, swap setting and
// granularity must give latents bit-identical to the single-rank run; bad input fails on every rank.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <tuple>
#include <vector>
#include <filesystem>
#include <string>

#include <fstream>
#include <regex>
#include <set>

#include <nlohmann/json.hpp>

#include "pipeswap/core/safetensors.h"
#include "pipeswap/models/architecture.h"
#include "test_util.h"

namespace fs = std::filesystem;
using ::testing::HasSubstr;

namespace {

using namespace pipeswap::test_support;

class DenoiseTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char tmpl[] = "/tmp/pipeswap-denoise-test-XXXXXX";
    dir_ = mkdtemp(tmpl);
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }
  static std::string path(const std::string& name) { return dir_ + "/" + name; }

  // The reference loop's inputs: 4 steps, guidance 5, shift 3 (see the fixture script).
  static std::string args(const std::string& model = "wan-t2v-diffusers") {
    return wan_reference_denoise(model) + " --log-level warn";
  }
  static inline std::string dir_;
};

// A tiny Wan2.1-named checkpoint with random weights written from the architecture's own declarations.
std::string write_random_wan(const std::string& model, int blocks, c10::ScalarType dtype) {
  fs::create_directories(model);
  const nlohmann::json config = {{"_class_name", "WanModel"}, {"model_type", "t2v"}, {"dim", 24},
                                 {"ffn_dim", 40},             {"num_heads", 2},      {"num_layers", blocks},
                                 {"in_dim", 4},               {"out_dim", 4},        {"text_dim", 16},
                                 {"freq_dim", 16},            {"text_len", 6}};
  std::ofstream(model + "/config.json") << config.dump(2);
  auto arch = pipeswap::models::make_architecture(config);
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  torch::manual_seed(8);
  auto add = [&](const std::vector<pipeswap::models::PartSpec>& parts) {
    for (const auto& p : parts)
      for (const auto& t : p.tensors) tensors.emplace_back(t.checkpoint, (0.2 * torch::randn(t.shape)).to(dtype));
  };
  add(arch->prologue_parts());
  for (int b = 0; b < arch->num_blocks(); ++b) add(pipeswap::models::block_parts(*arch, b));
  add(arch->epilogue_parts());
  pipeswap::write_safetensors(model + "/diffusion_pytorch_model.safetensors", tensors, {});
  return model;
}

double rel_error(const torch::Tensor& got, const torch::Tensor& want) {
  return (got - want).abs().max().item<double>() / want.abs().max().item<double>();
}

TEST_F(DenoiseTest, MatchesDiffusersReferenceLoop) {
  const std::string out = path("single.safetensors");
  Result r = sh(exe() + args() + " --output " + out);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("4 steps in"));
  auto got = pipeswap::SafetensorsFile::open(out)->read("latents");
  auto want = pipeswap::SafetensorsFile::open(fixture("wan-t2v-diffusers/denoise.safetensors"))->read("output");
  ASSERT_EQ(got.sizes(), want.sizes());
  const double err = rel_error(got, want);
  std::cout << "[ denoise  ] 4 steps, guidance 5: max |error| / max |latent| " << err << "\n";
  // fp32 throughout; the guidance scale of 5 amplifies the model's 1e-6-level differences.
  EXPECT_LE(err, 1e-4);

  // The Wan2.1-named copy of the same weights samples the same latents (its text_len equals the
  // fixture's context length, so nothing is padded differently).
  const std::string out21 = path("wan21.safetensors");
  Result r21 = sh(exe() + args("wan-t2v-wan21") + " --output " + out21);
  ASSERT_EQ(r21.code, 0) << r21.output;
  EXPECT_TRUE(same_bytes(out21, out));
}

// Every split x swap x granularity gives the single-rank latents, byte for byte.
TEST_F(DenoiseTest, SplitsAndSwapsAreBitIdentical) {
  const std::string ref = path("ref.safetensors");
  Result r0 = sh(exe() + args() + " --output " + ref);
  ASSERT_EQ(r0.code, 0) << r0.output;
  struct Case {
    std::string launch, flags;
  };
  const Case cases[] = {
      {"", " --blocks-to-swap 2"},
      {"", " --blocks-to-swap 3 --offload-granularity phase --prefetch-depth 2"},
      {"", " --blocks-to-swap 1 --lazy-load --max-memory 100KB"},
      {"mpirun -np 2 ", " --device-chain cpu=1,cpu=1"},
      {"mpirun -np 2 ", " --device-chain cpu=1,cpu=2 --blocks-to-swap 1 --offload-granularity phase"},
      {"mpirun -np 3 ", " --device-chain cpu=1,cpu=1,cpu=1 --blocks-to-swap 1 --lazy-load"},
      {"", " --device-chain cpu=2,cpu=1 --blocks-to-swap 1"},  // single-node mode: workers spawned
  };
  int i = 0;
  for (const Case& c : cases) {
    const std::string out = path("case" + std::to_string(i++) + ".safetensors");
    Result r = sh(c.launch + exe() + args() + c.flags + " --output " + out);
    ASSERT_EQ(r.code, 0) << c.launch << c.flags << "\n" << r.output;
    EXPECT_TRUE(same_bytes(out, ref)) << c.launch << c.flags;
  }
}

// Issue 16: the CFG pair (and two samples' pairs) share each slot fill when the swap order is shared: the
// latents stay those of the single-rank resident run, and each swapped unit is filled once per step.
TEST_F(DenoiseTest, SharedFillsOncePerStepSameLatents) {
  const std::string ref = path("order_ref.safetensors");
  ASSERT_EQ(sh(exe() + args() + " --output " + ref).code, 0);
  const std::string info = wan_reference_denoise() + " --log-level info";
  const std::regex fills(R"((\d+) slot fills, (\d+) per pass \(plan (\d+), (\S+) order\))");
  struct Case {
    std::string launch, flags;
    int units;  // swapped units per rank
  };
  const Case cases[] = {
      {"", "--blocks-to-swap 2", 2},
      {"", "--blocks-to-swap 2 --offload-granularity phase --prefetch-depth 2", 6},
      {"", "--blocks-to-swap 1 --lazy-load --max-memory 100KB", 1},
      {"mpirun -np 2 ", "--device-chain cpu=1,cpu=1 --blocks-to-swap 1", 1},
  };
  int i = 0;
  for (const Case& c : cases) {
    for (const std::string order : {"shared", "per-micro-batch"}) {
      SCOPED_TRACE(c.launch + c.flags + " --swap-order " + order);
      const std::string out = path("dorder" + std::to_string(i++) + ".safetensors");
      Result r = sh(c.launch + exe() + info + " --swap-order " + order + " " + c.flags + " --output " + out);
      ASSERT_EQ(r.code, 0) << r.output;
      EXPECT_TRUE(same_bytes(out, ref));
      int seen = 0;
      for (std::sregex_iterator m(r.output.begin(), r.output.end(), fills), end; m != end; ++m, ++seen) {
        EXPECT_EQ((*m)[4].str(), order);
        EXPECT_EQ(std::stoi((*m)[2]), std::stoi((*m)[3])) << r.output;
        EXPECT_EQ(std::stoi((*m)[2]), order == "shared" ? c.units : 2 * c.units) << r.output;  // the CFG pair
      }
      EXPECT_GE(seen, 1) << r.output;
    }
  }
}

// The trace of a CFG run with 2 of 3 blocks swapped: with shared fills the copy lane holds one fill per
// swapped block per step and each block's phases run for both micro-batches back to back (block-outer);
// per micro-batch, twice the fills and each micro-batch through every block before the next.
TEST_F(DenoiseTest, TraceShowsOneFillPerSwappedBlockPerStep) {
  using nlohmann::json;
  const int steps = 4;  // wan_reference_denoise's
  for (const std::string order : {"shared", "per-micro-batch"}) {
    SCOPED_TRACE(order);
    const std::string trace = path("order_" + order + ".json");
    Result r = sh(exe() + wan_reference_denoise() + " --blocks-to-swap 2 --swap-order " + order + " --trace " + trace + " --output " +
                  path("order_" + order + ".safetensors"));
    ASSERT_EQ(r.code, 0) << r.output;
    std::ifstream f(trace);
    const json t = json::parse(f);
    int copies = 0;
    std::vector<json> compute;
    std::vector<double> copy_starts;
    double step1 = 1e300;  // the first prologue of step 1
    for (const json& e : t["traceEvents"]) {
      if (e.value("ph", "") != "X") continue;
      if (e.value("cat", "") == "copy") ++copies, copy_starts.push_back(e["ts"].get<double>());
      if (e.value("cat", "") == "compute" && e["args"].contains("block")) compute.push_back(e);
      if (e.value("cat", "") == "compute" && e.value("name", "").rfind("prologue", 0) == 0 &&
          e["args"].value("step", -1) == 1)
        step1 = std::min(step1, e["ts"].get<double>());
    }
    // Across steps: the next step's first swapped block is filled while this step's last blocks run.
    EXPECT_GT(std::count_if(copy_starts.begin(), copy_starts.end(), [&](double ts) { return ts < step1; }),
              order == "shared" ? 2 : 4);
    std::sort(compute.begin(), compute.end(),
              [](const json& a, const json& b) { return a["ts"].get<double>() < b["ts"].get<double>(); });
    EXPECT_EQ(copies, (order == "shared" ? 2 : 4) * steps);
    // The order of (step, block, micro-batch) in which phases ran, runs of one phase's repeats merged.
    std::vector<std::tuple<int, int, int>> seq;
    for (const json& e : compute) {
      const auto key = std::make_tuple(e["args"]["step"].get<int>(), e["args"]["block"].get<int>(),
                                       e["args"]["micro_batch"].get<int>());
      if (order == "shared" || seq.empty() || seq.back() != key) seq.push_back(key);
    }
    ASSERT_FALSE(seq.empty());
    if (order == "shared") {  // per phase: mb0 then mb1 on the same block, before the next phase or block
      for (size_t i = 0; i + 1 < seq.size(); i += 2) {
        EXPECT_EQ(std::get<2>(seq[i]), 0);
        EXPECT_EQ(std::get<2>(seq[i + 1]), 1);
        EXPECT_EQ(std::get<1>(seq[i]), std::get<1>(seq[i + 1]));
      }
    } else {  // micro-batch 0 through blocks 0..2, then micro-batch 1 through them, each step
      std::vector<std::tuple<int, int, int>> want;
      for (int s = 0; s < steps; ++s)
        for (int u = 0; u < 2; ++u)
          for (int b = 0; b < 3; ++b) want.emplace_back(s, b, u);
      EXPECT_EQ(seq, want);
    }
  }
}

// Two samples, each with its CFG pair: four micro-batches per step, the pipeline kept full across
// steps. Each sample's latents are those of the sample run alone.
TEST_F(DenoiseTest, BatchOfSamplesOnTwoRanks) {
  auto io = pipeswap::SafetensorsFile::open(fixture("wan-t2v-diffusers/denoise.safetensors"));
  const auto lat = io->read("latents");
  const auto batch = path("batch.safetensors");
  pipeswap::write_safetensors(batch, {{"latents", torch::cat({lat, lat.flip(-1)}, 0)},
                                      {"context", io->read("context")},
                                      {"context_null", io->read("context_null")}},
                              {});
  const std::string common = " denoise --model " + fixture("wan-t2v-diffusers") + " --latents " + batch +
                             " --context " + batch + " --context-null " + batch +
                             " --steps 3 --guidance 4 --shift 5 --log-level warn";
  const std::string two = path("two.safetensors");
  Result r = sh("mpirun -np 2 " + exe() + common + " --device-chain cpu=1,cpu=1 --output " + two);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("2 sample(s)"));
  EXPECT_THAT(r.output, HasSubstr("4 micro-batches per step"));
  const auto both = pipeswap::SafetensorsFile::open(two)->read("latents");
  ASSERT_EQ(both.size(0), 2);
  const auto one_path = path("one.safetensors");
  pipeswap::write_safetensors(one_path, {{"latents", lat.flip(-1).contiguous()},
                                         {"context", io->read("context")},
                                         {"context_null", io->read("context_null")}},
                              {});
  const std::string alone = path("alone.safetensors");
  Result r1 = sh(exe() + " denoise --model " + fixture("wan-t2v-diffusers") + " --latents " + one_path +
                 " --context " + one_path + " --context-null " + one_path +
                 " --steps 3 --guidance 4 --shift 5 --log-level warn --output " + alone);
  ASSERT_EQ(r1.code, 0) << r1.output;
  const auto single = pipeswap::SafetensorsFile::open(alone)->read("latents");
  EXPECT_TRUE(torch::equal(both.narrow(0, 1, 1), single)) << "sample 1 of the batch differs from it run alone";
  // The two samples' four micro-batches sharing each fill of a swapped block, on one rank.
  const std::string shared = path("two_shared.safetensors");
  Result rs = sh(exe() + common + " --blocks-to-swap 2 --swap-order shared --output " + shared);
  ASSERT_EQ(rs.code, 0) << rs.output;
  EXPECT_TRUE(same_bytes(shared, two)) << "four micro-batches sharing each slot fill";
}

TEST_F(DenoiseTest, ProgressLinePerStep) {
  Result r = sh(exe() + args() + " --log-level info --output " + path("progress.safetensors"));
  ASSERT_EQ(r.code, 0) << r.output;
  for (int s = 1; s <= 4; ++s) EXPECT_THAT(r.output, HasSubstr("step " + std::to_string(s) + "/4 sigma"));
}

TEST_F(DenoiseTest, BadInputsNamedOnEveryRank) {
  const std::string io = fixture("wan-t2v-diffusers/denoise.safetensors");
  const std::string model = " --model " + fixture("wan-t2v-diffusers");
  struct Case {
    std::string cmd, needle;
  };
  const std::string bad_lat = path("bad_lat.safetensors");
  pipeswap::write_safetensors(bad_lat, {{"latents", torch::zeros({1, 5, 3, 4, 6})}}, {});
  const std::string nan_lat = path("nan_lat.safetensors");
  pipeswap::write_safetensors(nan_lat, {{"latents", torch::full({1, 4, 3, 4, 6}, NAN)}}, {});
  const Case cases[] = {
      {" denoise" + model + " --latents " + io + " --context " + io + " --steps 2", "needs --context-null"},
      {" denoise" + model + " --latents " + bad_lat + " --context " + io + " --guidance 1 --steps 2",
       "latents must be [batch, 4"},
      {" denoise" + model + " --latents " + nan_lat + " --context " + io + " --guidance 1 --steps 2", "NaN"},
      {" denoise" + model + " --latents " + path("missing.safetensors") + " --context " + io +
           " --guidance 1 --steps 2",
       "does not exist"},
      {" denoise" + model + " --latents " + io + " --context " + io + " --guidance 1 --steps 0",
       "--steps must be at least 1"},
      {" run" + model + " --input " + io, "use `pipeswap denoise"},
      {" denoise --model " + fixture("llama_bias") + " --latents " + io + " --context " + io +
           " --guidance 1 --steps 2",
       "`pipeswap denoise` samples diffusion transformers"},
  };
  for (const Case& c : cases) {
    const std::string out = path("never.safetensors");
    Result r = sh("mpirun -np 2 " + exe() + c.cmd + " --device-chain cpu=1,cpu=1 --output " + out, 60);
    EXPECT_NE(r.code, 0) << c.cmd << "\n" << r.output;
    EXPECT_NE(r.code, 124) << "timed out: " << c.cmd;
    EXPECT_THAT(r.output, HasSubstr(c.needle)) << c.cmd;
    EXPECT_FALSE(fs::exists(out)) << c.cmd;
  }
}


// Deeper pipelines, as far as CPUs allow: an 8-block tiny Wan (random weights written from the
// architecture's own declarations) on 4 and 8 ranks, 3 samples with their CFG pairs (6 micro-batches
// per step, so the first stage never waits for a sample's previous step on 4 stages), blocks swapped:
// the latents are those of the single-rank run, byte for byte.
TEST_F(DenoiseTest, FourAndEightRanksMatchOne) {
  const std::string model = write_random_wan(path("wan8"), 8, torch::kFloat32);
  const std::string io = path("wan8_in.safetensors");
  pipeswap::write_safetensors(io, {{"latents", torch::randn({3, 4, 2, 4, 4})},
                                   {"context", torch::randn({3, 5, 16})},
                                   {"context_null", torch::zeros({1, 6, 16})}},
                              {});
  const std::string common = " denoise --model " + model + " --latents " + io + " --context " + io +
                             " --context-null " + io + " --steps 3 --guidance 4 --shift 3 --log-level warn";
  const std::string ref = path("wan8_1.safetensors");
  Result r1 = sh(exe() + common + " --output " + ref);
  ASSERT_EQ(r1.code, 0) << r1.output;
  for (int np : {4, 8}) {
    std::string chain;
    for (int r = 0; r < np; ++r) chain += (r ? ",cpu=" : "cpu=") + std::to_string(1 + r % 2);
    const std::string out = path("wan8_" + std::to_string(np) + ".safetensors");
    Result r = sh("mpirun -np " + std::to_string(np) + " " + exe() + common + " --device-chain " + chain +
                      " --blocks-to-swap 1 --threads 1 --output " + out,
                  240);
    ASSERT_EQ(r.code, 0) << np << "\n" << r.output;
    EXPECT_THAT(r.output, HasSubstr("6 micro-batches per step"));
    EXPECT_TRUE(same_bytes(out, ref)) << "np " << np;
  }
}


// The plan's disk-read figure counts the bytes the checkpoint stores (bf16 here) however wide the
// compute dtype is (fp32 on CPU): it equals what the run measured.
TEST_F(DenoiseTest, PlannedDiskReadsMatchMeasured) {
  const std::string model = write_random_wan(path("wan_bf16"), 4, torch::kBFloat16);
  const std::string io = path("wan_bf16_in.safetensors");
  pipeswap::write_safetensors(io, {{"latents", torch::randn({1, 4, 2, 4, 4})}, {"context", torch::randn({1, 5, 16})}},
                              {});
  Result r = sh(exe() + " denoise --model " + model + " --latents " + io + " --context " + io +
                " --steps 2 --guidance 1 --dtype fp32 --offload-ratio 1 --lazy-load --max-memory 100KB "
                "--num-disk-workers 1 --log-level info --output " + path("wan_bf16_out.safetensors"));
  ASSERT_EQ(r.code, 0) << r.output;
  const std::regex line(R"(read from disk during the run ([0-9.]+ [KMG]?i?B) \(plan ([0-9.]+ [KMG]?i?B)\))");
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.output, m, line)) << r.output;
  EXPECT_EQ(m[1].str(), m[2].str()) << r.output;
  EXPECT_NE(m[1].str(), "0 B");
}

// --dtype auto is the dtype the block weights are stored in (safetensors headers), not config.json's
// torch_dtype, which Wan2.1's and diffusers' configs do not carry: bf16 checkpoints without it plan in bf16
// on a GPU chain (plan only: no GPU needed), with host and disk bytes in bf16. CPU ranks compute 16-bit
// weights in float32, and a float32 DiT computes in bf16 on GPUs; each says why.
TEST_F(DenoiseTest, DefaultDtypeIsTheStoredOne) {
  using nlohmann::json;
  auto write = [&](const std::string& name, const json& config, c10::ScalarType dtype) {
    const std::string model = path(name);
    fs::create_directories(model);
    std::ofstream(model + "/config.json") << config.dump(2);
    auto arch = pipeswap::models::make_architecture(config);
    std::vector<std::pair<std::string, torch::Tensor>> tensors;
    std::set<std::string> seen;
    auto add = [&](const std::vector<pipeswap::models::PartSpec>& parts) {
      for (const auto& p : parts)
        for (const auto& t : p.tensors)
          if (seen.insert(t.checkpoint).second) tensors.emplace_back(t.checkpoint, torch::randn(t.shape).to(dtype));
    };
    add(arch->prologue_parts());
    for (int b = 0; b < arch->num_blocks(); ++b) add(pipeswap::models::block_parts(*arch, b));
    add(arch->epilogue_parts());
    const bool llm = arch->kind() == "llm";
    pipeswap::write_safetensors(model + (llm ? "/model.safetensors" : "/diffusion_pytorch_model.safetensors"),
                                tensors, {});
    int64_t block_bytes = 0;  // block 0's tensors as stored
    for (const auto& p : pipeswap::models::block_parts(*arch, 0))
      for (const auto& t : p.tensors) block_bytes += torch::empty(t.shape, dtype).nbytes();
    return std::make_pair(model, block_bytes);
  };
  const json wan21 = {{"_class_name", "WanModel"}, {"model_type", "t2v"}, {"dim", 64},     {"ffn_dim", 96},
                      {"num_heads", 2},            {"num_layers", 4},     {"in_dim", 4},   {"out_dim", 4},
                      {"text_dim", 16},            {"freq_dim", 16},      {"text_len", 6}};
  const json wan_diffusers = {{"_class_name", "WanTransformer3DModel"}, {"num_attention_heads", 2},
                              {"attention_head_dim", 32}, {"ffn_dim", 96}, {"num_layers", 4}, {"in_channels", 4},
                              {"out_channels", 4}, {"text_dim", 16}, {"freq_dim", 16},
                              {"qk_norm", "rms_norm_across_heads"}};
  const json llama = {{"model_type", "llama"}, {"hidden_size", 64}, {"intermediate_size", 96},
                      {"num_hidden_layers", 4}, {"num_attention_heads", 2}, {"vocab_size", 100}};
  auto plan = [&](const std::string& model, const std::string& flags) {
    const std::string out = path("plan.json");
    fs::remove(out);
    Result r = sh(exe() + " plan --model " + model + " " + flags + " --json " + out);
    EXPECT_EQ(r.code, 0) << r.output;
    std::ifstream in(out);
    json j = json::parse(in, nullptr, /*allow_exceptions=*/false);
    j["output"] = r.output;
    return j;
  };
  for (const auto& [name, config] : {std::make_pair("wan21_bf16", wan21), std::make_pair("wan_diffusers_bf16",
                                                                                          wan_diffusers),
                                     std::make_pair("llama_bf16", llama)}) {
    SCOPED_TRACE(name);
    const auto [model, block_bytes] = write(name, config, torch::kBFloat16);
    json j = plan(model, "--device-chain cuda --blocks-to-swap 2 --lazy-load");
    EXPECT_EQ(j.value("dtype", ""), "bfloat16") << j.dump(1);
    EXPECT_THAT(j.value("dtype_source", ""), HasSubstr("stored bfloat16 in the safetensors files"));
    EXPECT_THAT(j.value("output", ""), HasSubstr("compute dtype bfloat16: stored bfloat16"));
    const json& r0 = j.at("ranks").at(0);
    // Host memory holds the 2 swapped blocks as stored (slabs align each tensor: a little above, far below
    // the float32 size); a lazy pass reads them from disk as stored.
    const int64_t host = r0.at("predicted_host_bytes").get<int64_t>();
    EXPECT_GE(host, 2 * block_bytes);
    EXPECT_LT(host, 2 * block_bytes * 5 / 4);
    EXPECT_EQ(r0.at("predicted_disk_read_bytes").get<int64_t>() % block_bytes, 0);
    EXPECT_GT(r0.at("predicted_disk_read_bytes").get<int64_t>(), 0);

    j = plan(model, "--device-chain cpu");
    EXPECT_EQ(j.value("dtype", ""), "float32");
    EXPECT_THAT(j.value("dtype_source", ""), HasSubstr("CPU ranks compute 16-bit weights in float32"));
    j = plan(model, "--device-chain cuda --dtype fp32");
    EXPECT_EQ(j.value("dtype", ""), "float32");
    EXPECT_EQ(j.value("dtype_source", ""), "--dtype fp32");
  }
  // Wan2.1's own releases store float32: GPUs compute them in bf16, as Wan2.1's code and diffusers do.
  const auto [fp32_wan, unused] = write("wan21_fp32", wan21, torch::kFloat32);
  json j = plan(fp32_wan, "--device-chain cuda");
  EXPECT_EQ(j.value("dtype", ""), "bfloat16");
  EXPECT_THAT(j.value("dtype_source", ""), HasSubstr("compute a float32 DiT in bfloat16"));
  // config.json's torch_dtype is a cross-check only: the stored dtype wins, with a warning.
  json lying = llama;
  lying["torch_dtype"] = "float16";
  const auto [lying_model, unused2] = write("llama_lying", lying, torch::kBFloat16);
  j = plan(lying_model, "--device-chain cuda");
  EXPECT_EQ(j.value("dtype", ""), "bfloat16");
  EXPECT_THAT(j.value("output", ""), HasSubstr("config.json says torch_dtype float16 but the weights are stored in "
                                               "bfloat16"));
}

}  // namespace
