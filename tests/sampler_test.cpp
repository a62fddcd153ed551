// The flow-matching UniPC sampler against diffusers' UniPCMultistepScheduler (fixtures of
// tests/reference/make_vae_unipc_fixtures.py: Wan2.1's scheduler_config.json and variants, each run by
// diffusers on a fake model; the fake model's outputs are replayed here, so only the sampler's arithmetic
// is compared): timesteps and sigmas exactly, every intermediate sample within 1e-5 of its largest value.
#include <gtest/gtest.h>
#include <torch/types.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "expect_error.h"
#include "pipeswap/core/error.h"
#include "pipeswap/core/safetensors.h"
#include "pipeswap/pipeline/sampler.h"
#include "pipeswap/pipeline/unipc.h"
#include "test_util.h"

namespace pipeswap {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using pipeline::UniPCConfig;
using pipeline::UniPCSampler;
using test_support::fixture;

constexpr double kSampleTolerance = 1e-5;  // max |ours - diffusers'| / max |diffusers'|, per step

json wan_scheduler_json() {
  std::ifstream in(fixture("unipc/scheduler_config.json"));
  return json::parse(in);
}

TEST(UniPC, MatchesDiffusers) {
  const std::string path = fixture("unipc/unipc.safetensors");
  if (!fs::exists(path)) GTEST_SKIP() << "no fixture " << path << ": run tests/reference/make_vae_unipc_fixtures.py";
  auto file = SafetensorsFile::open(path);
  const torch::Tensor noise = file->read("noise");
  int cases = 0;
  double worst = 0;
  for (const auto& [name, value] : file->metadata()) {
    if (name == "diffusers" || name == "torch" || name == "seed") continue;
    SCOPED_TRACE(name);
    ++cases;
    const json c = json::parse(value);
    json cfg = wan_scheduler_json();
    for (const auto& [k, v] : c.at("overrides").items()) cfg[k] = v;
    const int steps = c.at("steps").get<int>();
    UniPCSampler sampler(steps, UniPCConfig::from_json(cfg));

    const torch::Tensor ts = file->read("timesteps_" + name);
    const torch::Tensor sig = file->read("sigmas_" + name);
    ASSERT_EQ(sampler.steps(), steps);
    ASSERT_EQ(ts.numel(), steps);
    ASSERT_EQ(static_cast<int64_t>(sampler.sigmas().size()), steps + 1);
    for (int i = 0; i < steps; ++i) EXPECT_EQ(sampler.timesteps()[i], ts[i].item<int64_t>()) << "timestep " << i;
    for (int i = 0; i <= steps; ++i) EXPECT_EQ(sampler.sigmas()[i], sig[i].item<float>()) << "sigma " << i;

    const torch::Tensor outputs = file->read("output_model_" + name);
    const torch::Tensor samples = file->read("output_samples_" + name);
    torch::Tensor x = noise.clone();
    double err = 0;
    for (int i = 0; i < steps; ++i) {
      EXPECT_EQ(sampler.step_index(), i);
      x = sampler.step(outputs[i], x);
      const torch::Tensor want = samples[i + 1];
      ASSERT_EQ(x.sizes(), want.sizes());
      err = std::max(err, (x - want).abs().max().item<double>() / want.abs().max().item<double>());
    }
    EXPECT_TRUE(sampler.done());
    std::cout << "[ unipc    ] " << name << ": " << steps << " steps, max relative error " << err << "\n";
    EXPECT_LE(err, kSampleTolerance);
    worst = std::max(worst, err);
  }
  EXPECT_GE(cases, 5) << "the fixture should hold the Wan configuration and its variants";
  std::cout << "[ unipc    ] " << cases << " cases, worst relative error " << worst << "\n";
}

// `generate --sampler euler` against diffusers' FlowMatchEulerDiscreteScheduler(shift) on its own
// (make_generate_fixtures.py's flow-euler/): timesteps and sigmas as float32 exactly, every sample within 1e-6.
TEST(FlowEuler, MatchesDiffusers) {
  const std::string path = fixture("flow-euler/euler.safetensors");
  if (!fs::exists(path)) GTEST_SKIP() << "no fixture " << path << ": run tests/reference/make_generate_fixtures.py";
  auto file = SafetensorsFile::open(path);
  const torch::Tensor noise = file->read("noise");
  int cases = 0;
  for (const auto& [name, value] : file->metadata()) {
    if (name == "diffusers" || name == "torch") continue;
    SCOPED_TRACE(name);
    ++cases;
    const json c = json::parse(value);
    const int steps = c.at("steps").get<int>();
    auto sampler = pipeline::make_diffusers_flow_euler(steps, c.at("shift").get<double>());
    const torch::Tensor ts = file->read("timesteps_" + name);
    const torch::Tensor sig = file->read("sigmas_" + name);
    ASSERT_EQ(sampler->steps(), steps);
    for (int i = 0; i < steps; ++i) EXPECT_EQ(static_cast<float>(sampler->timestep(i)), ts[i].item<float>()) << i;
    for (int i = 0; i <= steps; ++i) EXPECT_EQ(static_cast<float>(sampler->sigma(i)), sig[i].item<float>()) << i;
    const torch::Tensor outputs = file->read("output_model_" + name);
    const torch::Tensor samples = file->read("output_samples_" + name);
    torch::Tensor x = noise.clone();
    for (int i = 0; i < steps; ++i) {
      sampler->step(outputs[i], x);
      const torch::Tensor want = samples[i + 1];
      EXPECT_LE((x - want).abs().max().item<double>() / want.abs().max().item<double>(), 1e-6) << "step " << i;
    }
  }
  EXPECT_EQ(cases, 3);
}

TEST(UniPC, WanConfigFromTheRepoFile) {
  const std::string dir = fixture("unipc");
  if (!fs::exists(dir + "/scheduler_config.json")) GTEST_SKIP() << "no fixture under " << dir;
  const UniPCConfig c = UniPCConfig::from_file(dir);  // a directory: its scheduler_config.json
  const UniPCConfig w = UniPCConfig::wan(3.0);
  EXPECT_EQ(c.num_train_timesteps, w.num_train_timesteps);
  EXPECT_EQ(c.solver_order, w.solver_order);
  EXPECT_EQ(c.flow_shift, w.flow_shift);
  EXPECT_TRUE(c.disable_corrector.empty());
}

TEST(UniPC, SamplesOfABatchStepAlone) {
  // One sampler per sample or one for the batch: the same numbers (every operation is element-wise).
  torch::manual_seed(3);
  const torch::Tensor x = torch::randn({2, 4, 2, 3, 3});
  UniPCSampler batch(6, UniPCConfig::wan(5.0));
  std::vector<UniPCSampler> alone(2, UniPCSampler(6, UniPCConfig::wan(5.0)));
  torch::Tensor xb = x.clone();
  std::vector<torch::Tensor> xs = {x[0].clone(), x[1].clone()};
  for (int i = 0; i < 6; ++i) {
    const torch::Tensor v = torch::tanh(xb) * 0.7 + 0.1 * static_cast<double>(i);
    xb = batch.step(v, xb);
    for (int s = 0; s < 2; ++s) xs[s] = alone[s].step(v[s], xs[s]);
  }
  EXPECT_TRUE(xb[0].equal(xs[0]));
  EXPECT_TRUE(xb[1].equal(xs[1]));
}

TEST(UniPC, CallerMayUpdateItsLatentsInPlace) {
  // The job keeps one latents tensor and writes each step's result into it (as the Euler step does).
  torch::manual_seed(4);
  const torch::Tensor x = torch::randn({1, 4, 2, 3, 3});
  UniPCSampler a(5, UniPCConfig::wan(3.0)), b(5, UniPCConfig::wan(3.0));
  torch::Tensor functional = x.clone(), in_place = x.clone();
  for (int i = 0; i < 5; ++i) {
    functional = a.step(torch::sin(functional * 2.0), functional);
    in_place.copy_(b.step(torch::sin(in_place * 2.0), in_place));
  }
  EXPECT_TRUE(in_place.equal(functional));
}

TEST(UniPC, RefusesWhatItDoesNotRun) {
  json base = {{"_class_name", "UniPCMultistepScheduler"},
               {"use_flow_sigmas", true},
               {"prediction_type", "flow_prediction"},
               {"flow_shift", 3.0}};
  EXPECT_NO_THROW(UniPCConfig::from_json(base));
  auto with = [&](const char* key, json v) {
    json c = base;
    c[key] = std::move(v);
    return c;
  };
  EXPECT_ERROR(UniPCConfig::from_json(with("_class_name", "FlowMatchEulerDiscreteScheduler")), CheckpointError,
               "FlowMatchEulerDiscreteScheduler");
  EXPECT_ERROR(UniPCConfig::from_json(with("use_flow_sigmas", false)), CheckpointError, "use_flow_sigmas");
  EXPECT_ERROR(UniPCConfig::from_json(with("prediction_type", "epsilon")), CheckpointError, "prediction_type");
  EXPECT_ERROR(UniPCConfig::from_json(with("solver_type", "bh1")), CheckpointError, "solver_type", "NaN");
  EXPECT_ERROR(UniPCConfig::from_json(with("final_sigmas_type", "sigma_min")), CheckpointError, "final_sigmas_type");
  EXPECT_ERROR(UniPCConfig::from_json(with("lower_order_final", false)), CheckpointError, "lower_order_final");
  EXPECT_ERROR(UniPCConfig::from_json(with("use_dynamic_shifting", true)), CheckpointError, "use_dynamic_shifting");
  EXPECT_ERROR(UniPCConfig::from_json(with("thresholding", true)), CheckpointError, "thresholding");
  EXPECT_ERROR(UniPCConfig::from_json(with("flow_shift", -1.0)), CheckpointError, "flow_shift");
  EXPECT_ERROR(UniPCConfig::from_json(with("solver_order", "two")), CheckpointError, "solver_order");
  EXPECT_NO_THROW(UniPCConfig::from_json(with("solver_type", "midpoint")));  // diffusers maps it to bh2
  json order1 = with("solver_order", 1);
  order1["lower_order_final"] = false;  // harmless at order 1
  EXPECT_NO_THROW(UniPCConfig::from_json(order1));
  EXPECT_ERROR(UniPCConfig::from_file("/nonexistent/scheduler"), CheckpointError, "scheduler_config.json");

  EXPECT_ERROR(UniPCSampler(0, UniPCConfig::wan(3.0)), ConfigError, "--steps");
  EXPECT_ERROR(UniPCSampler(4, UniPCConfig::wan(0.0)), ConfigError, "--flow-shift");
  UniPCSampler s(1, UniPCConfig::wan(3.0));
  const torch::Tensor x = torch::zeros({1, 2, 1, 2, 2});
  EXPECT_ERROR(s.step(torch::zeros({1, 2, 1, 2, 3}), x), ConfigError, "shape");
  s.step(x, x);
  EXPECT_ERROR(s.step(x, x), ConfigError, "past the last");
}

TEST(UniPC, OneStepLandsOnTheDataPrediction) {
  // With one step the sampler is x0 = x - sigma_0 v (the final sigma is 0): a check independent of
  // the fixtures, in closed form.
  UniPCSampler s(1, UniPCConfig::wan(3.0));
  EXPECT_EQ(s.timesteps()[0], 999);
  const torch::Tensor x = torch::randn({1, 3, 2, 2, 2}), v = torch::randn({1, 3, 2, 2, 2});
  const torch::Tensor out = s.step(v, x);
  EXPECT_LE((out - (x - v * static_cast<double>(s.sigmas()[0]))).abs().max().item<double>(), 1e-6);
}

}  // namespace
}  // namespace pipeswap
