// The flow-matching UniPC sampler (multistep predictor-corrector, Zhao et al. 2023) as diffusers'
// UniPCMultistepScheduler runs it in the configuration the Wan2.1 diffusers repos ship
// (scheduler/scheduler_config.json: use_flow_sigmas, prediction_type flow_prediction, predict_x0,
// solver_type bh2, solver_order 2, lower_order_final, final_sigmas_type zero, flow_shift 3 or 5).
//
// A plain value type: it owns the schedule and the history of the last `solver_order` data predictions,
// nothing else. It knows no model, rank or device: the job calls the DiT at timesteps()[step_index()]
// (the integer timesteps diffusers gives the transformer) and hands the velocity back to step(). One
// sampler per sample: each sample carries its own history, so samples may step at different moments.
//
// The arithmetic: sigma_i = shift * s_i / (1 + (shift - 1) * s_i) with s_i = linspace(1, 1/N_train,
// steps + 1)[:steps] (float64; the first lowered by 1e-6 so log(1 - sigma) stays finite), then a final
// sigma of 0, all rounded to float32 as diffusers stores them; timestep_i = trunc(1000 * sigma_i in
// float64). Each step converts the velocity v into the data prediction x0 = x - sigma_i v, corrects the
// current sample with UniC (from the second step, unless disabled for that step) and predicts the next with
// UniP, at order min(solver_order, steps taken + 1, steps left). Scalar coefficients are computed in double;
// the tensor updates run in the sample's dtype (float32 on the CPU, as the Euler step does).
#pragma once

#include <torch/types.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace pipeswap::pipeline {

struct UniPCConfig {
  int num_train_timesteps = 1000;
  int solver_order = 2;
  double flow_shift = 3.0;             // Wan2.1: 3.0 at 480p, 5.0 at 720p (--flow-shift)
  std::vector<int> disable_corrector;  // step indices whose corrector is skipped

  // The configuration of Wan2.1-T2V-*-Diffusers with the given shift.
  static UniPCConfig wan(double flow_shift);
  // A diffusers scheduler_config.json (already parsed). Accepts UniPCMultistepScheduler with flow sigmas
  // and flow prediction; throws CheckpointError naming the key for settings pipeswap does not run (other
  // prediction types or sigma schedules, dynamic shifting, thresholding, solver_p) and for the ones that
  // diffusers itself turns into NaN or a singular solve with flow sigmas (solver_type bh1,
  // lower_order_final false with solver_order > 1, final_sigmas_type sigma_min).
  static UniPCConfig from_json(const nlohmann::json& config);
  // Reads DIR/scheduler_config.json (or the file itself when given one).
  static UniPCConfig from_file(const std::string& path);
};

class UniPCSampler {
 public:
  // Throws ConfigError for steps < 1 or a shift <= 0.
  UniPCSampler(int steps, const UniPCConfig& config);

  int steps() const { return static_cast<int>(timesteps_.size()); }
  const UniPCConfig& config() const { return config_; }
  // One per step: the timestep to give the DiT at that step (diffusers passes these integers).
  const std::vector<int64_t>& timesteps() const { return timesteps_; }
  // steps + 1 values, float32 as diffusers keeps them; the last is 0.
  const std::vector<float>& sigmas() const { return sigmas_; }
  // Steps taken so far (0 .. steps()).
  int step_index() const { return step_index_; }
  bool done() const { return step_index_ >= steps(); }

  // Advances `sample` (x at sigmas()[step_index()]) by one step given the model's flow prediction
  // (velocity) there; returns the sample at the next sigma. Both tensors of the same shape, dtype and
  // device; the result is a new tensor, and the sampler keeps copies of what it needs later, so the caller
  // may overwrite its tensors in place. Throws ConfigError past the last step or on a shape mismatch.
  torch::Tensor step(const torch::Tensor& model_output, const torch::Tensor& sample);

 private:
  // UniC: this step's sample made again from the previous one, with this step's data prediction
  // (at the order of the previous step).
  torch::Tensor correct(const torch::Tensor& x0, int order) const;
  // UniP: the next sample from the current one and the history of data predictions.
  torch::Tensor predict(const torch::Tensor& sample, int order) const;
  double lambda(int i) const;  // log(alpha_i) - log(sigma_i), alpha = 1 - sigma

  UniPCConfig config_;
  std::vector<int64_t> timesteps_;
  std::vector<float> sigmas_;
  int step_index_ = 0;
  int lower_order_nums_ = 0;            // steps taken, up to solver_order (the warm-up of the multistep orders)
  int last_order_ = 0;                  // order of the previous predictor step (the corrector's order)
  std::vector<torch::Tensor> history_;  // data predictions, oldest first, at most solver_order
  torch::Tensor last_sample_;           // the sample the previous predictor started from
};

}  // namespace pipeswap::pipeline
