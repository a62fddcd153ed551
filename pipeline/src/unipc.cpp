#include "pipeswap/pipeline/unipc.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "pipeswap/core/error.h"
#include "pipeswap/core/files.h"
#include "pipeswap/core/json.h"

namespace pipeswap::pipeline {
namespace {

constexpr const char* kFile = "scheduler_config.json";

bool present(const nlohmann::json& c, const char* key) { return c.contains(key) && !c.at(key).is_null(); }

// A setting that must have one value for pipeswap to run it; absent (or null) means diffusers' default,
// which is given as `fallback` and must itself be acceptable.
template <typename T>
T setting(const nlohmann::json& c, const char* key, T fallback) {
  if (!present(c, key)) return fallback;
  try {
    return c.at(key).get<T>();
  } catch (const nlohmann::json::exception&) {
    PS_THROW(CheckpointError, "{}: '{}' has the wrong type ({})", kFile, key, c.at(key).dump());
  }
}

void require(bool ok, const char* key, const nlohmann::json& c, const char* why) {
  PS_CHECK(ok, CheckpointError, "{}: '{}' = {} is not supported: {}", kFile, key,
           present(c, key) ? c.at(key).dump() : std::string("(default)"), why);
}

// Solves A x = b (n x n, n small) by Gaussian elimination with partial pivoting, as the corrector's and
// the order >= 3 predictor's coefficients need (diffusers: torch.linalg.solve).
std::vector<double> solve(std::vector<std::vector<double>> a, std::vector<double> b) {
  const size_t n = b.size();
  for (size_t col = 0; col < n; ++col) {
    size_t pivot = col;
    for (size_t r = col + 1; r < n; ++r)
      if (std::fabs(a[r][col]) > std::fabs(a[pivot][col])) pivot = r;
    PS_CHECK(a[pivot][col] != 0.0 && std::isfinite(a[pivot][col]), ConfigError,
             "UniPC: the order-{} coefficient system is singular (repeated sigmas?)", n);
    std::swap(a[col], a[pivot]);
    std::swap(b[col], b[pivot]);
    for (size_t r = col + 1; r < n; ++r) {
      const double f = a[r][col] / a[col][col];
      for (size_t k = col; k < n; ++k) a[r][k] -= f * a[col][k];
      b[r] -= f * b[col];
    }
  }
  std::vector<double> x(n);
  for (size_t i = n; i-- > 0;) {
    double s = b[i];
    for (size_t k = i + 1; k < n; ++k) s -= a[i][k] * x[k];
    x[i] = s / a[i][i];
  }
  return x;
}

// The B(h) coefficients shared by UniP and UniC (bh2, data prediction): hh = -h, the Vandermonde rows
// R[r][c] = rks[c]^r and b[r] = phi_{r+1}(hh) * (r+1)! / B(h), B(h) = e^hh - 1.
struct Coefficients {
  double h_phi_1 = 0;
  double b_h = 0;
  std::vector<std::vector<double>> r;
  std::vector<double> b;
};

Coefficients coefficients(double h, const std::vector<double>& rks, int order) {
  Coefficients c;
  const double hh = -h;
  c.h_phi_1 = std::expm1(hh);
  c.b_h = std::expm1(hh);
  double h_phi_k = c.h_phi_1 / hh - 1;
  double factorial = 1;
  for (int i = 1; i <= order; ++i) {
    std::vector<double> row;
    for (double rk : rks) row.push_back(std::pow(rk, i - 1));
    c.r.push_back(row);
    c.b.push_back(h_phi_k * factorial / c.b_h);
    factorial *= i + 1;
    h_phi_k = h_phi_k / hh - 1 / factorial;
  }
  return c;
}

}  // namespace

UniPCConfig UniPCConfig::wan(double flow_shift) {
  UniPCConfig c;
  c.flow_shift = flow_shift;
  return c;
}

UniPCConfig UniPCConfig::from_json(const nlohmann::json& c) {
  PS_CHECK(c.is_object(), CheckpointError, "{}: expected a JSON object", kFile);
  const std::string cls = setting<std::string>(c, "_class_name", "UniPCMultistepScheduler");
  PS_CHECK(cls == "UniPCMultistepScheduler", CheckpointError,
           "{}: '_class_name' is {}, not UniPCMultistepScheduler (pass the sampler another way, e.g. --sampler euler)",
           kFile, cls);
  require(setting<bool>(c, "use_flow_sigmas", false), "use_flow_sigmas", c,
          "pipeswap's UniPC is the flow-matching one (Wan's scheduler_config.json sets use_flow_sigmas true)");
  require(setting<std::string>(c, "prediction_type", "epsilon") == "flow_prediction", "prediction_type", c,
          "the DiT predicts a flow (velocity): flow_prediction");
  require(setting<bool>(c, "predict_x0", true), "predict_x0", c, "flow prediction needs the data-prediction form");
  const std::string solver = setting<std::string>(c, "solver_type", "bh2");
  require(solver == "bh2" || solver == "midpoint" || solver == "heun" || solver == "logrho", "solver_type", c,
          "bh1 with flow sigmas ends in NaN in diffusers (B(h) = h is infinite at the final sigma 0); use bh2");
  require(setting<std::string>(c, "final_sigmas_type", "zero") == "zero", "final_sigmas_type", c,
          "sigma_min repeats the last flow sigma: a zero-length step that diffusers turns into NaN");
  require(!setting<bool>(c, "thresholding", false), "thresholding", c, "not implemented");
  require(!setting<bool>(c, "use_dynamic_shifting", false), "use_dynamic_shifting", c,
          "not implemented (Wan uses a fixed flow_shift)");
  require(!present(c, "shift_terminal"), "shift_terminal", c, "not implemented");
  require(!present(c, "solver_p"), "solver_p", c, "not implemented");
  for (const char* key : {"use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"})
    require(!setting<bool>(c, key, false), key, c, "flow sigmas only");

  UniPCConfig out;
  out.num_train_timesteps = setting<int>(c, "num_train_timesteps", 1000);
  require(out.num_train_timesteps >= 1, "num_train_timesteps", c, "must be positive");
  out.solver_order = setting<int>(c, "solver_order", 2);
  require(out.solver_order >= 1 && out.solver_order <= 8, "solver_order", c, "must be 1..8");
  require(setting<bool>(c, "lower_order_final", true) || out.solver_order == 1, "lower_order_final", c,
          "a last step of order > 1 toward sigma 0 is infinite or singular in diffusers");
  out.flow_shift = setting<double>(c, "flow_shift", 1.0);
  require(out.flow_shift > 0 && std::isfinite(out.flow_shift), "flow_shift", c, "must be positive");
  out.disable_corrector = setting<std::vector<int>>(c, "disable_corrector", {});
  return out;
}

UniPCConfig UniPCConfig::from_file(const std::string& path) {
  namespace fs = std::filesystem;
  const fs::path file = fs::is_directory(path) ? fs::path(path) / kFile : fs::path(path);
  PS_CHECK(fs::exists(file), CheckpointError, "cannot read '{}': a diffusers Wan repo has scheduler/{}",
           file.string(), kFile);
  nlohmann::json j;
  try {
    j = parse_json(read_regular_file(file.string(), "scheduler config"));
  } catch (const JsonError& e) {
    PS_THROW(CheckpointError, "'{}' is not valid JSON: {}", file.string(), e.what());
  }
  return from_json(j);
}

UniPCSampler::UniPCSampler(int steps, const UniPCConfig& config) : config_(config) {
  PS_CHECK(steps >= 1, ConfigError, "--steps must be at least 1 (got {})", steps);
  PS_CHECK(config.flow_shift > 0 && std::isfinite(config.flow_shift), ConfigError,
           "--flow-shift must be positive (got {})", config.flow_shift);
  PS_CHECK(config.solver_order >= 1, ConfigError, "UniPC solver_order must be at least 1 (got {})",
           config.solver_order);
  PS_CHECK(config.num_train_timesteps >= 1, ConfigError, "UniPC num_train_timesteps must be positive (got {})",
           config.num_train_timesteps);
  // s_i = linspace(1, 1/N, steps + 1)[:steps], numpy's way: start + i * (stop - start) / steps.
  const double n = config.num_train_timesteps;
  const double delta = (1.0 / n - 1.0) / steps;
  const double shift = config.flow_shift;
  std::vector<double> sigma(steps);
  for (int i = 0; i < steps; ++i) {
    const double s = i * delta + 1.0;
    sigma[i] = shift * s / (1 + (shift - 1) * s);
  }
  if (std::fabs(sigma[0] - 1) < 1e-6) sigma[0] -= 1e-6;  // keeps log(1 - sigma) finite
  for (double s : sigma) {
    timesteps_.push_back(static_cast<int64_t>(s * n));  // truncation, as torch's float64 -> int64
    sigmas_.push_back(static_cast<float>(s));
  }
  sigmas_.push_back(0.0f);
}

double UniPCSampler::lambda(int i) const {
  const double sigma = sigmas_.at(i);
  return std::log(1.0 - sigma) - std::log(sigma);
}

torch::Tensor UniPCSampler::predict(const torch::Tensor& x, int order) const {
  const int k = step_index_;
  const double sigma_t = sigmas_[k + 1], sigma_s0 = sigmas_[k];
  const double alpha_t = 1.0 - sigma_t;
  const double lambda_s0 = lambda(k);
  const double h = lambda(k + 1) - lambda_s0;  // +inf on the last step (sigma_t = 0): e^-h = 0 below
  const torch::Tensor& m0 = history_.back();
  std::vector<double> rks;
  std::vector<torch::Tensor> d1s;
  for (int i = 1; i < order; ++i) {
    const double rk = (lambda(k - i) - lambda_s0) / h;
    rks.push_back(rk);
    d1s.push_back((history_[history_.size() - 1 - i] - m0) / rk);
  }
  rks.push_back(1.0);
  const Coefficients c = coefficients(h, rks, order);
  torch::Tensor x_t = x * (sigma_t / sigma_s0) - m0 * (alpha_t * c.h_phi_1);
  if (!d1s.empty()) {
    std::vector<double> rhos;
    if (order == 2) {
      rhos = {0.5};  // diffusers' simplification for order 2
    } else {
      std::vector<std::vector<double>> r(order - 1);
      for (int i = 0; i < order - 1; ++i) r[i].assign(c.r[i].begin(), c.r[i].end() - 1);
      rhos = solve(r, std::vector<double>(c.b.begin(), c.b.end() - 1));
    }
    torch::Tensor pred_res = d1s[0] * rhos[0];
    for (size_t i = 1; i < d1s.size(); ++i) pred_res = pred_res + d1s[i] * rhos[i];
    x_t = x_t - pred_res * (alpha_t * c.b_h);
  }
  return x_t;
}

torch::Tensor UniPCSampler::correct(const torch::Tensor& x0, int order) const {
  const int k = step_index_;
  const double sigma_t = sigmas_[k], sigma_s0 = sigmas_[k - 1];
  const double alpha_t = 1.0 - sigma_t;
  const double lambda_s0 = lambda(k - 1);
  const double h = lambda(k) - lambda_s0;
  const torch::Tensor& m0 = history_.back();
  std::vector<double> rks;
  std::vector<torch::Tensor> d1s;
  for (int i = 1; i < order; ++i) {
    const double rk = (lambda(k - (i + 1)) - lambda_s0) / h;
    rks.push_back(rk);
    d1s.push_back((history_[history_.size() - 1 - i] - m0) / rk);
  }
  rks.push_back(1.0);
  const Coefficients c = coefficients(h, rks, order);
  const std::vector<double> rhos = order == 1 ? std::vector<double>{0.5} : solve(c.r, c.b);
  torch::Tensor x_t = last_sample_ * (sigma_t / sigma_s0) - m0 * (alpha_t * c.h_phi_1);
  torch::Tensor corr = (x0 - m0) * rhos.back();
  if (!d1s.empty()) {
    torch::Tensor res = d1s[0] * rhos[0];
    for (size_t i = 1; i < d1s.size(); ++i) res = res + d1s[i] * rhos[i];
    corr = res + corr;
  }
  return x_t - corr * (alpha_t * c.b_h);
}

torch::Tensor UniPCSampler::step(const torch::Tensor& model_output, const torch::Tensor& sample) {
  PS_CHECK(!done(), ConfigError, "UniPC: step {} past the last of {} steps", step_index_ + 1, steps());
  PS_CHECK(model_output.sizes() == sample.sizes(), ConfigError, "UniPC: model output {} and sample {} differ in shape",
           c10::str(model_output.sizes()), c10::str(sample.sizes()));
  const int k = step_index_;
  const torch::Tensor v = model_output.to(sample.options());
  const torch::Tensor x0 = sample - v * static_cast<double>(sigmas_[k]);  // the data prediction

  torch::Tensor x = sample;
  const bool corrector = k > 0 && last_sample_.defined() &&
                         std::find(config_.disable_corrector.begin(), config_.disable_corrector.end(), k - 1) ==
                             config_.disable_corrector.end();
  if (corrector) x = correct(x0, last_order_);

  if (static_cast<int>(history_.size()) == config_.solver_order) history_.erase(history_.begin());
  history_.push_back(x0);
  // Lower orders while the history fills up, and toward the end (lower_order_final).
  const int order = std::min({config_.solver_order, steps() - k, lower_order_nums_ + 1});
  last_sample_ = corrector ? x : sample.clone();  // our own copy: the caller may update `sample` in place
  torch::Tensor next = predict(x, order);
  lower_order_nums_ = std::min(lower_order_nums_ + 1, config_.solver_order);
  last_order_ = order;
  ++step_index_;
  return next;
}

}  // namespace pipeswap::pipeline
