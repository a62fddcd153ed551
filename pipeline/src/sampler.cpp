#include "pipeswap/pipeline/sampler.h"

#include "pipeswap/core/error.h"
#include "pipeswap/pipeline/denoise_job.h"

namespace pipeswap::pipeline {
namespace {

class Euler final : public Sampler {
 public:
  Euler(std::vector<double> sigmas, std::vector<double> timesteps)
      : sigmas_(std::move(sigmas)), timesteps_(std::move(timesteps)) {}
  int steps() const override { return static_cast<int>(timesteps_.size()); }
  double timestep(int s) const override { return timesteps_.at(static_cast<size_t>(s)); }
  double sigma(int s) const override { return sigmas_.at(static_cast<size_t>(s)); }
  void step(const torch::Tensor& velocity, const torch::Tensor& sample) override {
    PS_CHECK(taken_ < steps(), ConfigError, "Euler: step {} past the last of {}", taken_ + 1, steps());
    sample.add_((sigma(taken_ + 1) - sigma(taken_)) * velocity);
    ++taken_;
  }
  std::unique_ptr<Sampler> clone() const override { return std::make_unique<Euler>(*this); }
  std::string name() const override { return "euler"; }

 private:
  std::vector<double> sigmas_, timesteps_;
  int taken_ = 0;
};

class UniPC final : public Sampler {
 public:
  UniPC(int steps, const UniPCConfig& config) : unipc_(steps, config) {}
  int steps() const override { return unipc_.steps(); }
  double timestep(int s) const override { return static_cast<double>(unipc_.timesteps().at(static_cast<size_t>(s))); }
  double sigma(int s) const override { return unipc_.sigmas().at(static_cast<size_t>(s)); }
  void step(const torch::Tensor& velocity, const torch::Tensor& sample) override {
    sample.copy_(unipc_.step(velocity, sample));
  }
  std::unique_ptr<Sampler> clone() const override { return std::make_unique<UniPC>(*this); }
  std::string name() const override { return "unipc"; }

 private:
  UniPCSampler unipc_;
};

double shifted(double shift, double s) { return shift * s / (1 + (shift - 1) * s); }

// The same shift in float32 arithmetic, each operation rounded as torch's float32 tensor ops round it
// (diffusers shifts its float32 training sigmas so).
float shifted_f32(double shift, float s) {
  const float numerator = static_cast<float>(shift) * s;
  const float denominator = 1.0f + static_cast<float>(shift - 1) * s;
  return numerator / denominator;
}

}  // namespace

std::unique_ptr<Sampler> make_euler(std::vector<double> sigmas, std::vector<double> timesteps) {
  PS_CHECK(!timesteps.empty() && sigmas.size() == timesteps.size() + 1, ConfigError,
           "an Euler schedule needs one timestep per step and one sigma more (got {} and {})", timesteps.size(),
           sigmas.size());
  return std::make_unique<Euler>(std::move(sigmas), std::move(timesteps));
}

std::unique_ptr<Sampler> make_flow_euler(int steps, double shift) {
  const torch::Tensor s = flow_sigmas(steps, shift);  // checks steps and shift
  std::vector<double> sigmas, timesteps;
  for (int i = 0; i <= steps; ++i) sigmas.push_back(s[i].item<double>());
  for (int i = 0; i < steps; ++i) timesteps.push_back(sigmas[static_cast<size_t>(i)] * 1000.0);
  return make_euler(std::move(sigmas), std::move(timesteps));
}

std::unique_ptr<Sampler> make_diffusers_flow_euler(int steps, double shift, int num_train_timesteps) {
  PS_CHECK(steps >= 1, ConfigError, "--steps must be at least 1 (got {})", steps);
  PS_CHECK(shift > 0, ConfigError, "--flow-shift must be positive (got {})", shift);
  PS_CHECK(num_train_timesteps >= 1, ConfigError, "num_train_timesteps must be at least 1 (got {})",
           num_train_timesteps);
  const double n = num_train_timesteps;
  // The training schedule's ends: t = N and t = 1, as float32 sigmas t / N, shifted in float32.
  const double sigma_max = shifted_f32(shift, static_cast<float>(n) / static_cast<float>(n));
  const double sigma_min = shifted_f32(shift, 1.0f / static_cast<float>(n));
  // numpy's linspace(start, stop, steps): start + i * ((stop - start) / (steps - 1)), the last exactly stop.
  const double start = sigma_max * n, stop = sigma_min * n;
  std::vector<double> sigmas, timesteps;
  for (int i = 0; i < steps; ++i) {
    double t = start;
    if (steps > 1) t = i == steps - 1 ? stop : i * ((stop - start) / (steps - 1)) + start;
    const float sigma = static_cast<float>(shifted(shift, t / n));
    sigmas.push_back(sigma);
    timesteps.push_back(static_cast<float>(sigma * static_cast<float>(n)));
  }
  sigmas.push_back(0.0);
  return make_euler(std::move(sigmas), std::move(timesteps));
}

std::unique_ptr<Sampler> make_unipc(int steps, const UniPCConfig& config) {
  return std::make_unique<UniPC>(steps, config);
}

}  // namespace pipeswap::pipeline
