// The Wan VAE decoder against diffusers' AutoencoderKLWan (fixtures of
// tests/reference/make_vae_unipc_fixtures.py: a tiny random Wan2.1-structured VAE in the diffusers layout,
// latents decoded by diffusers with and without tiling, un-normalised as WanPipeline does; diffusers decoded
// them in float64, so the references are the exact frames of that VAE up to float32 storage).
// Tolerances, relative to the largest reference value (1 after the clamp):
//   float32: max |ours - diffusers'| <= 1e-4 (CPU and CUDA, TF32 off). diffusers' own float32 decode is
//     about 1e-5 from its float64 one (and 2e-5 from itself with another thread count);
//   bfloat16: |ours - diffusers'|_2 / |diffusers'|_2 <= max(1.5 x diffusers' own bf16 error, 1e-2)
//     (the fixture's metadata holds how far diffusers' bf16 decode is from its float64 one).
// VaeMemory (CUDA only): peak device memory of the real Wan2.1 VAE configuration with random weights.
#include <ATen/Context.h>
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/types.h>

#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "expect_error.h"
#include "pipeswap/core/checkpoint.h"
#include "pipeswap/core/device_memory.h"
#include "pipeswap/core/error.h"
#include "pipeswap/core/safetensors.h"
#include "pipeswap/core/torch_compat.h"
#include "pipeswap/models/wan_vae.h"
#include "test_util.h"

namespace pipeswap {
namespace {

namespace fs = std::filesystem;
using models::WanVaeDecoder;
using models::WanVaeTiling;
using nlohmann::json;
using test_support::fixture;

constexpr double kFp32Tolerance = 1e-4;

std::vector<torch::Device> devices() {
  std::vector<torch::Device> d = {torch::kCPU};
  if (torch::cuda::is_available()) d.emplace_back(torch::kCUDA, 0);
  return d;
}

double max_rel(const torch::Tensor& got, const torch::Tensor& want) {
  return (got.to(torch::kCPU, torch::kFloat64) - want.to(torch::kFloat64)).abs().max().item<double>() /
         want.abs().max().item<double>();
}
double norm_rel(const torch::Tensor& got, const torch::Tensor& want) {
  return (got.to(torch::kCPU, torch::kFloat64) - want.to(torch::kFloat64)).norm().item<double>() /
         want.to(torch::kFloat64).norm().item<double>();
}

struct Fixture {
  std::string dir = fixture("wan-vae-diffusers");
  std::shared_ptr<const SafetensorsFile> io;
  WanVaeTiling tiling;
  double bf16_error = 0, bf16_error_tiled = 0;

  bool load() {
    if (!fs::exists(dir + "/decode.safetensors")) return false;
    io = SafetensorsFile::open(dir + "/decode.safetensors");
    const auto& md = io->metadata();
    tiling = {std::stoll(md.at("tile_sample_min_height")), std::stoll(md.at("tile_sample_min_width")),
              std::stoll(md.at("tile_sample_stride_height")), std::stoll(md.at("tile_sample_stride_width"))};
    bf16_error = std::stod(md.at("bf16_error"));
    bf16_error_tiled = std::stod(md.at("bf16_error_tiled"));
    return true;
  }
};

#define LOAD_FIXTURE(f) \
  Fixture f;            \
  if (!f.load()) GTEST_SKIP() << "no fixture under " << f.dir << ": run tests/reference/make_vae_unipc_fixtures.py"

class VaeFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    at::globalContext().setAllowTF32CuBLAS(false);
    at::globalContext().setAllowTF32CuDNN(false);
  }
};

TEST_F(VaeFixture, MatchesDiffusers) {
  LOAD_FIXTURE(f);
  const torch::Tensor latents = f.io->read("latents"), want = f.io->read("output");
  for (const torch::Device& device : devices()) {
    SCOPED_TRACE(device.str());
    const WanVaeDecoder vae = WanVaeDecoder::load(f.dir, device, torch::kFloat32);
    const torch::Tensor got = vae.decode(latents);
    ASSERT_EQ(got.sizes(), want.sizes());
    EXPECT_EQ(got.device(), device);
    const double err = max_rel(got, want);
    std::cout << "[ vae      ] fp32 on " << device.str() << ": max relative error " << err << " ("
              << c10::str(want.sizes()) << ")\n";
    EXPECT_LE(err, kFp32Tolerance);
  }
}

TEST_F(VaeFixture, TilingMatchesDiffusersTiling) {
  LOAD_FIXTURE(f);
  const torch::Tensor latents = f.io->read("latents_tiled"), want = f.io->read("output_tiled");
  for (const torch::Device& device : devices()) {
    SCOPED_TRACE(device.str());
    WanVaeDecoder vae = WanVaeDecoder::load(f.dir, device, torch::kFloat32);
    vae.enable_tiling(f.tiling);
    const torch::Tensor got = vae.decode(latents);
    ASSERT_EQ(got.sizes(), want.sizes());
    const double err = max_rel(got, want);
    std::cout << "[ vae      ] tiled fp32 on " << device.str() << ": max relative error " << err << "\n";
    EXPECT_LE(err, kFp32Tolerance);
    // The tiles really are blended: without tiling the frames differ by more than the tolerance.
    vae.disable_tiling();
    EXPECT_GT(max_rel(vae.decode(latents), want), 100 * kFp32Tolerance);
  }
}

TEST_F(VaeFixture, Bf16WithinDiffusersOwnBf16Error) {
  LOAD_FIXTURE(f);
  struct Case {
    const char* latents;
    const char* output;
    bool tiled;
    double diffusers_error;
  };
  for (const Case& c : {Case{"latents", "output", false, f.bf16_error},
                        Case{"latents_tiled", "output_tiled", true, f.bf16_error_tiled}}) {
    SCOPED_TRACE(c.output);
    const torch::Tensor latents = f.io->read(c.latents), want = f.io->read(c.output);
    for (const torch::Device& device : devices()) {
      SCOPED_TRACE(device.str());
      WanVaeDecoder vae = WanVaeDecoder::load(f.dir, device, torch::kBFloat16);
      if (c.tiled) vae.enable_tiling(f.tiling);
      const torch::Tensor got = vae.decode(latents);
      EXPECT_EQ(got.scalar_type(), torch::kBFloat16);
      const double err = norm_rel(got, want);
      const double bound = std::max(1.5 * c.diffusers_error, 1e-2);
      std::cout << "[ vae      ] bf16 " << (c.tiled ? "tiled " : "") << "on " << device.str() << ": relative error "
                << err << " vs diffusers' float64 (diffusers' own bf16: " << c.diffusers_error << ", bound " << bound
                << ")\n";
      EXPECT_LE(err, bound);
    }
  }
}

TEST_F(VaeFixture, TilesLargerThanTheFrameDecodeUntiled) {
  LOAD_FIXTURE(f);
  const torch::Tensor latents = f.io->read("latents");
  WanVaeDecoder vae = WanVaeDecoder::load(f.dir, torch::kCPU, torch::kFloat32);
  const torch::Tensor plain = vae.decode(latents);
  vae.enable_tiling({latents.size(3) * 8, latents.size(4) * 8, 8, 8});  // as large as the frame: no tiling
  EXPECT_TRUE(vae.decode(latents).equal(plain));
  // Samples are decoded one at a time: a batch gives each sample's own frames.
  vae.disable_tiling();
  EXPECT_TRUE(vae.decode(latents.narrow(0, 1, 1)).equal(plain.narrow(0, 1, 1)));
}

TEST_F(VaeFixture, ReadsTheDecoderOnly) {
  LOAD_FIXTURE(f);
  const WanVaeDecoder vae = WanVaeDecoder::load(f.dir, torch::kCPU, torch::kFloat32);
  const std::vector<std::string> read = vae.tensor_names();
  const std::set<std::string> used(read.begin(), read.end());
  EXPECT_EQ(used.size(), read.size()) << "a tensor read twice";
  auto ckpt = Checkpoint::open(f.dir);
  int64_t decoder = 0;
  for (const std::string& name : ckpt->tensor_names()) {
    const bool mine = name.rfind("decoder.", 0) == 0 || name.rfind("post_quant_conv.", 0) == 0;
    decoder += mine;
    EXPECT_EQ(used.count(name), mine ? 1u : 0u) << name;
  }
  EXPECT_EQ(static_cast<int64_t>(used.size()), decoder);
  EXPECT_GT(vae.weight_bytes(), 0);
  EXPECT_EQ(vae.config().temporal_ratio(), 4);
  EXPECT_EQ(vae.config().frames_for(21), 81);
}

TEST_F(VaeFixture, FramesOnAnotherDevice) {
  LOAD_FIXTURE(f);
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no GPU";
  const torch::Tensor latents = f.io->read("latents");
  const WanVaeDecoder vae = WanVaeDecoder::load(f.dir, torch::Device(torch::kCUDA, 0), torch::kFloat32);
  const torch::Tensor on_host = vae.decode(latents, torch::Device(torch::kCPU));
  EXPECT_TRUE(on_host.device().is_cpu());
  EXPECT_TRUE(on_host.equal(vae.decode(latents).cpu()));
}

TEST_F(VaeFixture, BadInput) {
  LOAD_FIXTURE(f);
  const fs::path tmp = fs::temp_directory_path() / ("pipeswap-vae-bad-" + std::to_string(::getpid()));
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  fs::copy_file(fs::path(f.dir) / "diffusion_pytorch_model.safetensors", tmp / "diffusion_pytorch_model.safetensors");
  json config = json::parse(std::ifstream(fs::path(f.dir) / "config.json"));
  auto load_with = [&](const json& c) {
    std::ofstream(tmp / "config.json") << c.dump();
    return WanVaeDecoder::load(tmp.string(), torch::kCPU, torch::kFloat32);
  };
  json c = config;
  c["is_residual"] = true;
  EXPECT_ERROR(load_with(c), CheckpointError, "is_residual", "Wan2.2");
  c = config;
  c.erase("latents_mean");
  EXPECT_ERROR(load_with(c), CheckpointError, "latents_mean");
  c = config;
  c["latents_std"] = json::array({1.0, 2.0});
  EXPECT_ERROR(load_with(c), CheckpointError, "latents_std", "z_dim");
  c = config;
  c["_class_name"] = "AutoencoderKL";
  EXPECT_ERROR(load_with(c), CheckpointError, "AutoencoderKLWan");
  c = config;
  c["decoder_base_dim"] = 8;  // the weights are base 4
  EXPECT_ERROR(load_with(c), CheckpointError, "shape");
  fs::remove_all(tmp);

  WanVaeDecoder vae = WanVaeDecoder::load(f.dir, torch::kCPU, torch::kFloat32);
  EXPECT_ERROR(vae.enable_tiling({100, 256, 96, 192}), ConfigError, "multiples of 8");
  EXPECT_ERROR(vae.enable_tiling({256, 256, 320, 192}), ConfigError, "stride");
  EXPECT_ERROR(vae.decode(torch::zeros({1, 3, 2, 4, 4})), ConfigError, "latents must be");
  EXPECT_ERROR(WanVaeDecoder::load(f.dir, torch::kCPU, torch::kInt32), ConfigError, "dtype");
}

// ---- memory at the real size (CUDA) ---------------------------------------------------------------------

// Writes a diffusers vae/ folder with the real Wan2.1 config (base 96, z 16) and random decoder weights
// (the encoder left out: the decoder never reads it).
std::string real_size_vae(const fs::path& dir) {
  if (fs::exists(dir / "config.json")) return dir.string();
  fs::create_directories(dir);
  std::vector<double> mean(16), std(16);
  for (int i = 0; i < 16; ++i) {
    mean[i] = 0.1 * (i - 8);
    std[i] = 1.0 + 0.1 * i;
  }
  json c = {{"_class_name", "AutoencoderKLWan"},
            {"base_dim", 96},
            {"z_dim", 16},
            {"dim_mult", {1, 2, 4, 4}},
            {"num_res_blocks", 2},
            {"temperal_downsample", {false, true, true}},
            {"latents_mean", mean},
            {"latents_std", std}};
  // Shapes from a first pass: every tensor the loader asks for is made with that shape.
  torch::manual_seed(0);
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  const std::vector<int64_t> dims = {384, 384, 384, 192, 96};
  auto conv = [&](const std::string& n, std::vector<int64_t> shape) {
    const double fan_in = static_cast<double>(shape[1]) * (shape.size() > 2 ? shape[2] : 1) *
                          (shape.size() > 3 ? shape[3] : 1) * (shape.size() > 4 ? shape[4] : 1);
    tensors.emplace_back(n + ".weight", (torch::randn(shape) / std::sqrt(fan_in)).to(torch::kBFloat16));
    tensors.emplace_back(n + ".bias", torch::zeros({shape[0]}, torch::kBFloat16));
  };
  auto gamma = [&](const std::string& n, int64_t ch, bool images) {
    tensors.emplace_back(
        n + ".gamma",
        torch::ones(images ? std::vector<int64_t>{ch, 1, 1} : std::vector<int64_t>{ch, 1, 1, 1}, torch::kBFloat16));
  };
  auto res = [&](const std::string& n, int64_t in, int64_t out) {
    gamma(n + ".norm1", in, false);
    conv(n + ".conv1", {out, in, 3, 3, 3});
    gamma(n + ".norm2", out, false);
    conv(n + ".conv2", {out, out, 3, 3, 3});
    if (in != out) conv(n + ".conv_shortcut", {out, in, 1, 1, 1});
  };
  conv("post_quant_conv", {16, 16, 1, 1, 1});
  conv("decoder.conv_in", {384, 16, 3, 3, 3});
  res("decoder.mid_block.resnets.0", 384, 384);
  res("decoder.mid_block.resnets.1", 384, 384);
  gamma("decoder.mid_block.attentions.0.norm", 384, true);
  conv("decoder.mid_block.attentions.0.to_qkv", {1152, 384, 1, 1});
  conv("decoder.mid_block.attentions.0.proj", {384, 384, 1, 1});
  const bool temporal[] = {true, true, false};
  for (int i = 0; i < 4; ++i) {
    const std::string n = "decoder.up_blocks." + std::to_string(i);
    int64_t in = i > 0 ? dims[i] / 2 : dims[i];
    for (int r = 0; r < 3; ++r) {
      res(n + ".resnets." + std::to_string(r), in, dims[i + 1]);
      in = dims[i + 1];
    }
    if (i < 3) {
      if (temporal[i]) conv(n + ".upsamplers.0.time_conv", {2 * dims[i + 1], dims[i + 1], 3, 1, 1});
      conv(n + ".upsamplers.0.resample.1", {dims[i + 1] / 2, dims[i + 1], 3, 3});
    }
  }
  gamma("decoder.norm_out", 96, false);
  conv("decoder.conv_out", {3, 96, 3, 3, 3});
  write_safetensors((dir / "diffusion_pytorch_model.safetensors").string(), tensors);
  std::ofstream(dir / "config.json") << c.dump(2);
  return dir.string();
}

// Peak memory of a decode above what the weights and latents hold, and its time, at real sizes.
// PIPESWAP_VAE_MEMORY="480x832x21 720x1280x21" (output height x width x latent frames) picks the sizes;
// PIPESWAP_VAE_TILING both (default) | plain | tiled (diffusers' default tiles).
// On CUDA (bf16; default size 480 x 832 x 21 latent frames, 81 video frames): LibTorch's allocator peak,
// after a warm-up decode. Without a GPU it runs only when PIPESWAP_VAE_MEMORY is set: float32 on the CPU,
// the peak resident set (VmHWM reset through /proc/self/clear_refs; run one size and one tiling per process,
// with no warm-up, since memory freed earlier stays resident). PIPESWAP_VAE_DIR: a real-size vae/ folder
// to use (bench/vae_peer.py makes one with diffusers, measures diffusers the same way and leaves
// reference_<size>.safetensors beside it: its frames are then compared with ours).
int64_t proc_status_bytes(const std::string& field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(field + ":", 0) == 0) return std::stoll(line.substr(field.size() + 1)) * 1024;
  return -1;
}

TEST(VaeMemory, RealSize) {
  const char* env = std::getenv("PIPESWAP_VAE_MEMORY");
  const bool cuda = torch::cuda::is_available();
  if (!cuda && !(env && *env)) GTEST_SKIP() << "no GPU (set PIPESWAP_VAE_MEMORY to measure on the CPU)";
  if (cuda && !device_peak_allocated(0)) GTEST_SKIP() << "this LibTorch has no CUDA allocator statistics";
  std::istringstream sizes(env && *env ? env : "480x832x21");
  const char* tiling_env = std::getenv("PIPESWAP_VAE_TILING");
  const std::string tiling = tiling_env && *tiling_env ? tiling_env : "both";
  std::vector<bool> modes;
  if (tiling != "tiled") modes.push_back(false);
  if (tiling != "plain") modes.push_back(true);
  const char* given = std::getenv("PIPESWAP_VAE_DIR");
  const std::string dir =
      given && *given ? std::string(given) : real_size_vae(fs::temp_directory_path() / "pipeswap-vae-real-size");
  const torch::Device device = cuda ? torch::Device(torch::kCUDA, 0) : torch::Device(torch::kCPU);
  const torch::ScalarType dtype = cuda ? torch::kBFloat16 : torch::kFloat32;
  WanVaeDecoder vae = WanVaeDecoder::load(dir, device, dtype);
  if (cuda) vae.decode(torch::randn({1, 16, 2, 16, 16}, torch::TensorOptions().device(device)));  // cuDNN plans
  std::string size;
  while (sizes >> size) {
    int64_t h = 0, w = 0, f = 0;
    ASSERT_EQ(std::sscanf(size.c_str(), "%ldx%ldx%ld", &h, &w, &f), 3) << size;
    const fs::path ref = fs::path(dir) / ("reference_" + size + ".safetensors");
    std::shared_ptr<const SafetensorsFile> reference = fs::exists(ref) ? SafetensorsFile::open(ref.string()) : nullptr;
    const torch::Tensor latents = reference
                                      ? reference->read("latents").to(device)
                                      : torch::randn({1, 16, f, h / 8, w / 8}, torch::TensorOptions().device(device));
    for (bool tiled : modes) {
      if (tiled) {
        vae.enable_tiling();
      } else {
        vae.disable_tiling();
      }
      compat::synchronize_device(device);
      int64_t base = 0;
      if (cuda) {
        reset_device_peak(0);
        base = *device_peak_allocated(0);
      } else {
        std::ofstream("/proc/self/clear_refs") << "5";
        base = proc_status_bytes("VmRSS");
      }
      const auto t0 = std::chrono::steady_clock::now();
      const torch::Tensor frames = vae.decode(latents);
      compat::synchronize_device(device);
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const int64_t peak = cuda ? *device_peak_allocated(0) : proc_status_bytes("VmHWM");
      std::cout << "[ vae mem  ] " << h << "x" << w << " x " << frames.size(2) << " frames " << c10::toString(dtype)
                << " on " << device.str() << (tiled ? " tiled" : "") << ": peak " << (peak - base) / 1e9
                << " GB above the " << base / 1e9 << " GB of weights and latents (frames "
                << frames.numel() * frames.element_size() / 1e9 << " GB), " << s << " s\n";
      EXPECT_LE(frames.abs().max().item<double>(), 1.0);
      if (reference && !tiled) {
        const torch::Tensor want = reference->read("frames").to(torch::kFloat32);
        std::cout << "[ vae mem  ] vs diffusers' frames: relative error " << norm_rel(frames, want)
                  << ", max |difference| "
                  << (frames.to(torch::kCPU, torch::kFloat32) - want).abs().max().item<double>() << "\n";
      }
    }
  }
}

}  // namespace
}  // namespace pipeswap
