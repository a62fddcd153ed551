// fp8 weights (issue 17) against PyTorch: the fixtures of tests/reference/make_fp8_fixtures.py hold
// checkpoints with torch.float8_e4m3fn / float8_e5m2 weights in the Wan2.1 (ComfyUI "scaled"), diffusers
// (per-channel weight_scale, sharded) and HF Llama layouts, and the same models dequantised by torch.
// pipeswap runs the fp8 files keeping fp8 bytes in its slabs and dequantising on the device per use; its
// outputs must equal its runs on torch's dequantised weights bit for bit (the arithmetic after the
// dequantise is the same), across swap and split settings.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>

#include <nlohmann/json.hpp>

#include "pipeswap/core/checkpoint.h"
#include "pipeswap/core/error.h"
#include "pipeswap/core/fp8.h"
#include "pipeswap/core/safetensors.h"
#include "pipeswap/core/torch_compat.h"
#include "pipeswap/models/architecture.h"
#include "pipeswap/offload/residency.h"
#include "pipeswap/offload/slab.h"
#include "test_util.h"

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using namespace pipeswap;
using namespace pipeswap::test_support;

namespace {

std::string fp8_fixture(const std::string& name) { return fixture("fp8/" + name); }

torch::Tensor values(const std::string& name) {
  return SafetensorsFile::open(fp8_fixture("values.safetensors"))->read(name);
}

// Bitwise equality of float32 tensors, any NaN equal to any NaN.
::testing::AssertionResult same_floats(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.sizes() != b.sizes()) return ::testing::AssertionFailure() << "shapes differ";
  auto x = a.contiguous().to(torch::kFloat32), y = b.contiguous().to(torch::kFloat32);
  const float* p = x.data_ptr<float>();
  const float* q = y.data_ptr<float>();
  for (int64_t i = 0; i < x.numel(); ++i) {
    if (std::isnan(p[i]) && std::isnan(q[i])) continue;
    if (std::memcmp(p + i, q + i, 4) != 0)
      return ::testing::AssertionFailure() << "element " << i << ": " << p[i] << " vs " << q[i];
  }
  return ::testing::AssertionSuccess();
}

TEST(Fp8Values, TablesMatchTorch) {
  for (auto [f, name] : {std::pair{Fp8Format::kE4M3, "e4m3_values"}, std::pair{Fp8Format::kE5M2, "e5m2_values"}}) {
    const auto& v = fp8_values(f);
    torch::Tensor ours = torch::from_blob(const_cast<float*>(v.data()), {256}, torch::kFloat32);
    EXPECT_TRUE(same_floats(ours, values(name))) << name;
    // The device path (LibTorch's float8 types where the version has them, else the table).
    torch::Tensor bytes = torch::arange(256, torch::kInt32).to(torch::kUInt8);
    EXPECT_TRUE(same_floats(dequantize_fp8(bytes, f, {}, torch::kFloat32), values(name))) << name;
    EXPECT_TRUE(same_floats(dequantize_fp8_by_table(bytes, f, {}, torch::kFloat32), values(name))) << name;
  }
}

TEST(Fp8Values, RoundingMatchesTorch) {
  torch::Tensor x = values("floats");
  torch::Tensor want = values("floats_e4m3");
  const float* p = x.data_ptr<float>();
  const uint8_t* w = want.data_ptr<uint8_t>();
  int bad = 0;
  for (int64_t i = 0; i < x.numel(); ++i) {
    if (e4m3_from_float(p[i]) != w[i] && ++bad < 5)
      ADD_FAILURE() << "float " << p[i] << ": ours " << int(e4m3_from_float(p[i])) << ", torch " << int(w[i]);
  }
  EXPECT_EQ(bad, 0);
}

TEST(Fp8Values, PerChannelQuantisationMatchesTorch) {
  auto [bytes, scale] = quantize_e4m3_per_channel(values("matrix"));
  EXPECT_TRUE(torch::equal(bytes, values("matrix_bytes")));
  EXPECT_TRUE(same_floats(scale, values("matrix_scale")));
  EXPECT_EQ(scale[7].item<float>(), 1.0f) << "a zero row keeps scale 1";
  const torch::Tensor want = values("matrix_dequantised");
  EXPECT_TRUE(same_floats(dequantize_fp8(bytes, Fp8Format::kE4M3, scale.unsqueeze(1), torch::kFloat32), want));
  EXPECT_TRUE(
      same_floats(dequantize_fp8_by_table(bytes, Fp8Format::kE4M3, scale.unsqueeze(1), torch::kFloat32), want));
  // bf16 compute: float32(fp8) * scale rounded once.
  EXPECT_TRUE(torch::equal(dequantize_fp8(bytes, Fp8Format::kE4M3, scale.unsqueeze(1), torch::kBFloat16),
                           want.to(torch::kBFloat16)));
}

TEST(Fp8Checkpoint, FindsScalesInEveryLayout) {
  auto wan = Checkpoint::open(fp8_fixture("wan21-scaled-e4m3"));
  EXPECT_TRUE(wan->has_fp8_scales());
  Fp8Found f = find_fp8(*wan, "blocks.0.self_attn.q.weight", {24, 24});
  EXPECT_EQ(f.storage.format, Fp8Format::kE4M3);
  EXPECT_EQ(f.storage.scale, Fp8Scale::kPerTensor);
  EXPECT_EQ(f.scale_name, "blocks.0.self_attn.q.scale_weight");
  EXPECT_EQ(f.ignored, std::vector<std::string>{"blocks.0.self_attn.q.scale_input"});
  EXPECT_FALSE(find_fp8(*wan, "blocks.0.self_attn.q.bias", {24}).storage.fp8());
  EXPECT_TRUE(find_fp8(*wan, "head.head.weight", {16, 24}).storage.fp8()) << "a non-block part stored in fp8";

  auto dif = Checkpoint::open(fp8_fixture("diffusers-e4m3-channel"));
  f = find_fp8(*dif, "blocks.1.ffn.net.0.proj.weight", {40, 24});
  EXPECT_EQ(f.storage.scale, Fp8Scale::kPerChannel);
  EXPECT_EQ(f.scale_name, "blocks.1.ffn.net.0.proj.weight_scale");

  auto llama = Checkpoint::open(fp8_fixture("llama-e5m2"));
  f = find_fp8(*llama, "model.layers.2.self_attn.q_proj.weight", {64, 64});
  EXPECT_EQ(f.storage.format, Fp8Format::kE5M2);
  EXPECT_EQ(f.storage.scale, Fp8Scale::kPerTensor) << "a 0-dim scale";
  f = find_fp8(*llama, "model.layers.2.mlp.down_proj.weight", {64, 128});
  EXPECT_EQ(f.storage.scale, Fp8Scale::kPerChannel) << "a [out] scale";

  auto plain = Checkpoint::open(fp8_fixture("llama-e4m3-plain"));
  EXPECT_FALSE(plain->has_fp8_scales());
  f = find_fp8(*plain, "model.layers.0.mlp.up_proj.weight", {128, 64});
  EXPECT_EQ(f.storage.format, Fp8Format::kE4M3);
  EXPECT_EQ(f.storage.scale, Fp8Scale::kNone) << "no scale in the file: scale 1";
}

// dequantize_fp8_into (the dequantise ahead's entry: into a fixed workspace) gives dequantize_fp8's bits on
// the CPU for every format, output dtype and scale kind, on sizes that are not multiples of 16.
TEST(Fp8Values, DequantiseIntoMatchesDequantise) {
  torch::manual_seed(5);
  const torch::Tensor bytes = torch::randint(0, 256, {37, 23}, torch::kInt32).to(torch::kUInt8);
  const std::vector<torch::Tensor> scales = {torch::Tensor(), torch::tensor({0.37f}), torch::rand({37, 1}) + 0.01};
  for (Fp8Format f : {Fp8Format::kE4M3, Fp8Format::kE5M2}) {
    for (auto dt : {torch::kFloat32, torch::kBFloat16, torch::kFloat16}) {
      for (const auto& scale : scales) {
        torch::Tensor out = torch::full({37 * 23 + 256}, 7.0, dt).narrow(0, 128, 37 * 23);
        dequantize_fp8_into(bytes, f, scale, out);
        EXPECT_TRUE(same_floats(out.view(bytes.sizes()), dequantize_fp8(bytes, f, scale, dt)))
            << to_string(f) << " " << c10::toString(dt);
        EXPECT_TRUE(same_floats(dequantize_fp8_by_aten(bytes, f, scale, dt), dequantize_fp8(bytes, f, scale, dt)));
      }
    }
  }
  EXPECT_FALSE(fp8_fused_kernel() && !compat::kHasNativeStream);
}

// The slab of a block holds fp8 bytes and float32 scales (not the compute dtype), its views dequantise
// to what torch's dequantised copy holds, and the unit's disk bytes are those of the fp8 file.
TEST(Fp8Checkpoint, SlabKeepsFp8BytesAndViewsDequantise) {
  auto ckpt = Checkpoint::open(fp8_fixture("wan21-scaled-e4m3"));
  auto ref = Checkpoint::open(fp8_fixture("wan21-scaled-e4m3-ref"));
  auto arch = models::make_architecture(ckpt->config());
  offload::WeightStorage st;
  for (const auto& part : block_parts(*arch, 0))
    for (const auto& t : part.tensors) st.block.push_back(find_fp8(*ckpt, t.checkpoint, t.shape).storage);
  const auto units = offload::make_units(*arch, 1, offload::Granularity::kBlock, torch::kFloat32, torch::kFloat32, st);
  const auto plain = offload::make_units(*arch, 1, offload::Granularity::kBlock, torch::kFloat32, torch::kFloat32);
  ASSERT_EQ(units.size(), 1u);
  EXPECT_LT(units[0].bytes, plain[0].bytes * 6 / 10) << "fp8 matrices: a quarter of their fp32 bytes";
  torch::Tensor slab = torch::zeros({units[0].bytes}, torch::kUInt8);
  int64_t disk = 0;
  for (size_t i = 0; i < units[0].parts.size(); ++i) {
    torch::Tensor part = slab.narrow(0, units[0].base[i], units[0].parts[i].bytes);
    offload::read_part(*ckpt, units[0].parts[i], part);
    WeightView view;
    offload::add_views(units[0].parts[i], part, view);
    for (const auto& e : units[0].parts[i].entries) {
      disk += e.disk_bytes;
      const torch::Tensor want = ref->locate(e.checkpoint).file->read(e.checkpoint);
      EXPECT_TRUE(same_floats(view[e.local], want)) << e.checkpoint;
      EXPECT_EQ(view.fp8(e.local) != nullptr, e.shape.size() == 2) << e.checkpoint;
    }
  }
  EXPECT_EQ(disk, units[0].tensor_bytes);
  // What the file holds for block 1, less the ignored input scales (fp32 [1] each).
  int64_t want_disk = 0;
  for (const auto& name : ckpt->tensor_names()) {
    if (name.rfind("blocks.1.", 0) != 0 || name.find("scale_input") != std::string::npos) continue;
    want_disk += static_cast<int64_t>(ckpt->locate(name).info->nbytes());
  }
  EXPECT_EQ(units[0].tensor_bytes, want_disk);
}

class Fp8Run : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    char tmpl[] = "/tmp/pipeswap-fp8-test-XXXXXX";
    dir_ = mkdtemp(tmpl);
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }
  static std::string path(const std::string& name) { return dir_ + "/" + name; }
  static std::string denoise(const std::string& model) {
    return exe() + wan_reference_denoise("fp8/" + model) + " --log-level warn";
  }
  static std::string llama(const std::string& model) {
    return exe() + " run --model " + fixture(model) + " --input " + fixture("llama_bias/expected.safetensors") +
           " --log-level warn";
  }
  static inline std::string dir_;
};

// Every layout, resident: the fp8 file's output equals the output on torch's dequantised weights.
TEST_F(Fp8Run, EqualsRunOnTorchDequantisedWeights) {
  struct Case {
    std::string fp8, ref;
    bool wan;
  };
  const Case cases[] = {{"wan21-scaled-e4m3", "wan21-scaled-e4m3-ref", true},
                        {"diffusers-e4m3-channel", "diffusers-e4m3-channel-ref", true},
                        {"fp8/llama-e5m2", "fp8/llama-e5m2-ref", false},
                        {"fp8/llama-e4m3-plain", "fp8/llama-e4m3-plain-ref", false}};
  for (const Case& c : cases) {
    const std::string a = path("fp8.safetensors"), b = path("ref.safetensors");
    Result r = sh((c.wan ? denoise(c.fp8) : llama(c.fp8)) + " --output " + a);
    ASSERT_EQ(r.code, 0) << c.fp8 << "\n" << r.output;
    Result q = sh((c.wan ? denoise(c.ref) : llama(c.ref)) + " --output " + b);
    ASSERT_EQ(q.code, 0) << c.ref << "\n" << q.output;
    EXPECT_TRUE(same_bytes(a, b)) << c.fp8;
  }
}

// Swapped, lazily loaded and split runs of an fp8 file equal the resident run bit for bit.
TEST_F(Fp8Run, SwapAndSplitSettingsBitIdentical) {
  const std::string ref = path("resident.safetensors");
  ASSERT_EQ(sh(denoise("wan21-scaled-e4m3") + " --output " + ref).code, 0);
  const std::pair<std::string, std::string> cases[] = {
      {"", " --blocks-to-swap 2"},
      {"", " --blocks-to-swap 3 --offload-granularity phase --prefetch-depth 2"},
      {"", " --blocks-to-swap 2 --lazy-load --max-memory 40KB --num-disk-workers 1"},
      {"mpirun -np 2 ", " --device-chain cpu=1,cpu=1 --blocks-to-swap 1"},
  };
  int i = 0;
  for (const auto& [launch, flags] : cases) {
    const std::string out = path("swap" + std::to_string(i++) + ".safetensors");
    Result r = sh(launch + denoise("wan21-scaled-e4m3") + flags + " --output " + out);
    ASSERT_EQ(r.code, 0) << launch << flags << "\n" << r.output;
    EXPECT_TRUE(same_bytes(out, ref)) << launch << flags;
  }
}

// --weight-dtype fp8 quantises at load per output channel as torch does (make_fp8_fixtures.py): the run
// equals the run on torch's quantised-then-dequantised copy, swapped or not; the plan and the summary say
// so. Quality: the latents after the 4 reference steps against the float32 run.
TEST_F(Fp8Run, WeightDtypeFp8QuantisesAtLoad) {
  const std::string q = path("q.safetensors"), qs = path("qs.safetensors"), ref = path("qref.safetensors"),
                    full = path("full.safetensors");
  const std::string src = exe() + wan_reference_denoise("wan-t2v-wan21") + " --log-level info";
  Result r = sh(src + " --weight-dtype fp8 --output " + q);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("quantised from the checkpoint at load per output channel"));
  ASSERT_EQ(sh(src + " --weight-dtype fp8 --blocks-to-swap 2 --lazy-load --output " + qs).code, 0);
  ASSERT_EQ(sh(denoise("wan21-quantised-ref") + " --output " + ref).code, 0);
  EXPECT_TRUE(same_bytes(q, ref));
  EXPECT_TRUE(same_bytes(qs, ref));
  ASSERT_EQ(sh(exe() + wan_reference_denoise("wan-t2v-wan21") + " --log-level warn --output " + full).code, 0);
  auto got = SafetensorsFile::open(q)->read("latents");
  auto want = SafetensorsFile::open(full)->read("latents");
  const double rel = ((got - want).norm() / want.norm()).item<double>();
  std::printf("fp8 quality: relative L2 error of the latents after 4 steps, --weight-dtype fp8 vs float32: %.4g\n",
              rel);
  EXPECT_LT(rel, 0.05);

  // Llama: the same against its torch-quantised copy.
  const std::string lq = path("lq.safetensors"), lref = path("lref.safetensors");
  ASSERT_EQ(sh(llama("llama_bias") + " --weight-dtype fp8 --output " + lq).code, 0);
  ASSERT_EQ(sh(llama("fp8/llama-quantised-ref") + " --output " + lref).code, 0);
  EXPECT_TRUE(same_bytes(lq, lref));
}

// The plan counts fp8 bytes: weights, device slots, host memory and disk reads, and the run's disk
// reads match the prediction.
TEST_F(Fp8Run, PlanCountsFp8Bytes) {
  auto plan = [&](const std::string& model, const std::string& flags) {
    const std::string json = path("plan.json");
    Result r = sh(exe() + " plan --model " + fixture(model) + flags + " --json " + json + " --log-level warn");
    EXPECT_EQ(r.code, 0) << r.output;
    return nlohmann::json::parse(file_bytes(json));
  };
  const std::string swap = " --blocks-to-swap 2 --lazy-load --max-memory 70KB --num-disk-workers 1";
  auto f = plan("fp8/wan21-scaled-e4m3", swap);
  auto w = plan("fp8/wan21-scaled-e4m3-ref", swap);
  EXPECT_THAT(f["weight_storage"].get<std::string>(), HasSubstr("fp8 weights: 10 of 27 tensors per block"));
  const auto& fr = f["ranks"][0];
  const auto& wr = w["ranks"][0];
  // Every fp8 tensor of the file at one byte an element plus its float32 scale; the rest in float32.
  auto ckpt = Checkpoint::open(fp8_fixture("wan21-scaled-e4m3"));
  int64_t want = 0, largest_fp8 = 0;
  for (const auto& name : ckpt->tensor_names()) {
    if (name == "scaled_fp8" || name.find("scale_input") != std::string::npos) continue;
    const TensorInfo& info = *ckpt->locate(name).info;
    want += is_fp8(info.dtype) ? info.numel() : info.numel() * 4;
    if (is_fp8(info.dtype)) largest_fp8 = std::max(largest_fp8, info.numel());
  }
  EXPECT_EQ(fr["weight_bytes"].get<int64_t>(), want);
  // The device workspace holds one dequantised weight more: the largest fp8 tensor in the compute dtype
  // (float32 here), converted directly where LibTorch has float8 types, through the table's float32
  // values and int32 indices on 1.13.
  EXPECT_GT(largest_fp8, 0);
  EXPECT_EQ(fr["workspace_bytes"].get<int64_t>() - wr["workspace_bytes"].get<int64_t>(),
            compat::kHasFloat8 ? 4 * largest_fp8 : 8 * largest_fp8);
  EXPECT_LT(fr["slot_bytes"].get<int64_t>(), wr["slot_bytes"].get<int64_t>() * 6 / 10);
  EXPECT_LT(fr["predicted_host_bytes"].get<int64_t>(), wr["predicted_host_bytes"].get<int64_t>());
  EXPECT_LT(fr["predicted_device_bytes"].get<int64_t>(), wr["predicted_device_bytes"].get<int64_t>());
  const int64_t disk = fr["predicted_disk_read_bytes"].get<int64_t>();
  EXPECT_GT(disk, 0);
  EXPECT_LT(disk, wr["predicted_disk_read_bytes"].get<int64_t>() * 6 / 10);

  // The run reads from disk what the plan predicts for its steps (the summary's "read from disk").
  // 40KB: the two swapped units stream through staging every sweep (the 70KB above keeps them).
  const std::string stream = " --blocks-to-swap 2 --lazy-load --max-memory 40KB --num-disk-workers 1";
  Result r = sh(exe() + wan_reference_denoise("fp8/wan21-scaled-e4m3") + stream + " --log-level info --output " +
                path("disk.safetensors"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("fp8 weights: 10 of 27 tensors per block"));
  std::smatch m;
  const std::regex read(R"(read from disk during the run ([^(]+) \(plan ([^)]+)\))");
  ASSERT_TRUE(std::regex_search(r.output, m, read)) << r.output;
  EXPECT_EQ(m[1].str(), m[2].str()) << r.output;
  EXPECT_NE(m[1].str(), "0 B") << "the units should stream from disk every step";
}

TEST_F(Fp8Run, UnsupportedVariantsNameTensorDtypeAndKeys) {
  struct Case {
    std::string model;
    std::vector<std::string> says;
  };
  const Case cases[] = {
      {"bad-missing-scale", {"blocks.1.ffn.2.weight", "F8_E4M3", "carries fp8 scales but this weight has none",
                             "blocks.1.ffn.2.scale_input"}},
      {"bad-scale-shape", {"blocks.2.self_attn.q.weight", "F8_E4M3", "has shape [2]", "blocks.2.self_attn.q.scale_weight"}},
      {"bad-two-spellings", {"blocks.0.ffn.0.weight", "two spellings", "blocks.0.ffn.0.weight_scale",
                             "blocks.0.ffn.0.scale_weight"}},
      {"bad-block-wise", {"blocks.0.ffn.0.weight", "block-wise", "weight_scale_inv"}},
      {"bad-scale-on-float", {"blocks.0.self_attn.q.bias", "F32", "not stored in fp8", "q.bias_scale"}},
  };
  for (const Case& c : cases) {
    Result r = sh(denoise(c.model) + " --output " + path("bad.safetensors"));
    EXPECT_NE(r.code, 0) << c.model;
    for (const auto& s : c.says) EXPECT_THAT(r.output, HasSubstr(s)) << c.model;
  }
  // A truncated fp8 file.
  const std::string cut = path("cut");
  fs::create_directories(cut);
  fs::copy_file(fp8_fixture("wan21-scaled-e4m3/config.json"), cut + "/config.json");
  const std::string file = cut + "/diffusion_pytorch_model.safetensors";
  fs::copy_file(fp8_fixture("wan21-scaled-e4m3/diffusion_pytorch_model.safetensors"), file);
  fs::resize_file(file, fs::file_size(file) - 1000);
  Result r = sh(exe() + wan_reference_denoise("x").replace(wan_reference_denoise("x").find(fixture("x")),
                                                           fixture("x").size(), cut) +
                " --output " + path("bad.safetensors"));
  EXPECT_NE(r.code, 0);
  EXPECT_THAT(r.output, HasSubstr("diffusion_pytorch_model.safetensors"));
}

}  // namespace

// --fp8-dequantise ahead (offload/src/fp8_ahead.h: each phase's fp8 weights in one go into one of two fixed
// workspaces, the next phase's ahead; auto turns it on for CUDA ranks only) gives the per-use run's bits on
// the CPU, resident, swapped by block and by phase, lazily loaded, with synchronous copies and split. The
// summary counts the phases made ahead: resident, only the run's very first phase is dequantised at its
// acquire, every later one (the next sweep's first included) was made ahead.
TEST_F(Fp8Run, DequantiseAheadBitIdenticalToPerUse) {
  const std::string ref = path("per-use.safetensors");
  ASSERT_EQ(sh(denoise("wan21-scaled-e4m3") + " --fp8-dequantise per-use --output " + ref).code, 0);
  const std::regex counts(R"(fp8 dequantise ahead: (\d+) phases dequantised ahead of their compute, (\d+) at)");
  struct Case {
    std::string launch, flags;
    bool resident;
  };
  const Case cases[] = {
      {"", "", true},
      {"", " --blocks-to-swap 2", false},
      {"", " --blocks-to-swap 3 --offload-granularity phase --prefetch-depth 2", false},
      {"", " --blocks-to-swap 2 --lazy-load --max-memory 40KB --num-disk-workers 1", false},
      {"", " --blocks-to-swap 2 --use-non-blocking=false", false},
      {"mpirun -np 2 ", " --device-chain cpu=1,cpu=1 --blocks-to-swap 1", false},
  };
  int i = 0;
  for (const Case& c : cases) {
    const std::string out = path("ahead" + std::to_string(i++) + ".safetensors");
    Result r = sh(c.launch + denoise("wan21-scaled-e4m3") + c.flags +
                  " --fp8-dequantise ahead --log-level info --output " + out);
    ASSERT_EQ(r.code, 0) << c.launch << c.flags << "\n" << r.output;
    EXPECT_TRUE(same_bytes(out, ref)) << c.launch << c.flags;
    std::smatch m;
    ASSERT_TRUE(std::regex_search(r.output, m, counts)) << c.flags << "\n" << r.output;
    EXPECT_GT(std::stoll(m[1].str()), 0) << c.flags;
    if (c.resident) {
      EXPECT_EQ(m[2].str(), "1") << r.output;
    }
  }
  // auto on a CPU rank is per use: no workspaces, no counts.
  Result r = sh(denoise("wan21-scaled-e4m3") + " --log-level info --output " + path("auto.safetensors"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_FALSE(std::regex_search(r.output, counts)) << r.output;

  // Llama (e5m2, per-tensor scales), resident and swapped by phase.
  const std::string lref = path("lref-per-use.safetensors");
  ASSERT_EQ(sh(llama("fp8/llama-e5m2") + " --output " + lref).code, 0);
  for (const std::string& flags : {std::string(""), std::string(" --blocks-to-swap 1 --offload-granularity phase")}) {
    const std::string out = path("lahead.safetensors");
    Result q = sh(llama("fp8/llama-e5m2") + flags + " --fp8-dequantise ahead --output " + out);
    ASSERT_EQ(q.code, 0) << flags << "\n" << q.output;
    EXPECT_TRUE(same_bytes(out, lref)) << flags;
  }
}

// The plan counts the ahead's two workspaces (the largest phase's fp8 tensors in the compute dtype, each
// 256-byte aligned) in place of per use's one-tensor temporary of the blocks.
TEST_F(Fp8Run, PlanCountsDequantiseAheadWorkspaces) {
  auto plan = [&](const std::string& flags) {
    const std::string json = path("plan-ahead.json");
    Result r = sh(exe() + " plan --model " + fixture("fp8/wan21-scaled-e4m3") + flags + " --json " + json +
                  " --log-level warn");
    EXPECT_EQ(r.code, 0) << r.output;
    const auto j = nlohmann::json::parse(file_bytes(json));
    EXPECT_THAT(j["weight_storage"].get<std::string>(),
                HasSubstr(flags.find("ahead") != std::string::npos ? "dequantised on the device a phase ahead"
                                                                   : "dequantised on the device per use"))
        << flags;
    return j["ranks"][0]["workspace_bytes"].get<int64_t>();
  };
  auto ckpt = Checkpoint::open(fp8_fixture("wan21-scaled-e4m3"));
  auto arch = models::make_architecture(ckpt->config());
  int64_t largest = 0, phase_most = 0;
  for (int p = 0; p < static_cast<int>(arch->phase_names().size()); ++p) {
    int64_t n = 0;
    for (const auto& t : arch->phase_tensors(0, p)) {
      if (!is_fp8(ckpt->locate(t.checkpoint).info->dtype)) continue;
      const int64_t bytes = 4 * ckpt->locate(t.checkpoint).info->numel();  // float32 compute
      largest = std::max(largest, bytes);
      n += (bytes + 255) / 256 * 256;
    }
    phase_most = std::max(phase_most, n);
  }
  ASSERT_GT(phase_most, 0);
  // Non-block parts stay per use (this file has one fp8 non-block tensor): their temporary stays too.
  int64_t component = 0;
  for (const auto& side : {arch->prologue_parts(), arch->epilogue_parts()})
    for (const auto& part : side)
      for (const auto& t : part.tensors)
        if (is_fp8(ckpt->locate(t.checkpoint).info->dtype))
          component = std::max(component, 4 * ckpt->locate(t.checkpoint).info->numel());
  auto temp = [](int64_t bytes) { return compat::kHasFloat8 ? bytes : 2 * bytes; };
  const int64_t per_use_temp = temp(std::max(largest, component)) - temp(component);
  for (const std::string& swap : {std::string(""), std::string(" --blocks-to-swap 2")}) {
    const int64_t ahead = plan(swap + " --fp8-dequantise ahead");
    const int64_t per_use = plan(swap + " --fp8-dequantise per-use");
    EXPECT_EQ(per_use, plan(swap)) << "auto on a CPU rank is per use";
    EXPECT_EQ(ahead - per_use, 2 * phase_most - per_use_temp) << swap;
  }
}
