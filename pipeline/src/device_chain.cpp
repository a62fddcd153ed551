#include "pipeswap/pipeline/device_chain.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "pipeswap/core/error.h"

namespace pipeswap::pipeline {
namespace {

constexpr const char* kChainHelp =
    "give one entry per rank as device=weight, e.g. --device-chain cuda:0=60,cuda:1=40 or cpu=3,cpu=1, "
    "or --device-chain auto";

std::string trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t");
  size_t e = s.find_last_not_of(" \t");
  return b == std::string::npos ? "" : s.substr(b, e - b + 1);
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    size_t pos = s.find(sep, start);
    out.push_back(s.substr(start, pos - start));
    if (pos == std::string::npos) break;
    start = pos + 1;
  }
  return out;
}

double parse_weight(const std::string& text, const std::string& device) {
  size_t used = 0;
  double w = 0;
  try {
    w = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  PS_CHECK(used == text.size() && !text.empty(), ConfigError,
           "Invalid weight '{}' for {} in --device-chain: weights are non-negative numbers; {}", text, device,
           kChainHelp);
  PS_CHECK(!std::isnan(w) && !std::isinf(w), ConfigError,
           "Invalid weight '{}' for {} in --device-chain: weights must be finite numbers; {}", text, device,
           kChainHelp);
  PS_CHECK(w >= 0, ConfigError,
           "Invalid weight '{}' for {} in --device-chain: weights cannot be negative; {}", text, device, kChainHelp);
  return w;
}

}  // namespace

std::string DeviceSpec::str() const {
  if (kind == Kind::kCpu) return "cpu";
  return index < 0 ? "cuda" : fmt::format("cuda:{}", index);
}

DeviceSpec parse_device(const std::string& raw) {
  const std::string text = trim(raw);
  if (text == "cpu") return DeviceSpec{};
  if (text == "cuda") return DeviceSpec{DeviceSpec::Kind::kCuda, -1};
  // "gpu=1" reads like GPU 1 but would be any GPU with weight 1: no such name.
  PS_CHECK(text.rfind("gpu", 0) != 0, ConfigError,
           "Invalid device: {} (write cuda for each rank's own GPU, or cuda:N for GPU N; after = comes the weight, "
           "not a GPU index)",
           text);
  if (text.rfind("cuda:", 0) == 0 && text.size() > 5) {
    const std::string num = text.substr(5);
    if (std::all_of(num.begin(), num.end(), [](char c) { return c >= '0' && c <= '9'; }) && num.size() <= 4) {
      return DeviceSpec{DeviceSpec::Kind::kCuda, std::stoi(num)};
    }
  }
  PS_THROW(ConfigError, "Invalid device: {} (use cpu, cuda or cuda:N)", text.empty() ? "<empty>" : text);
}

std::string DeviceChain::str() const {
  if (automatic) return "auto";
  std::string s;
  for (const auto& e : entries) {
    if (!s.empty()) s += ",";
    s += fmt::format("{}={:g}", e.device.str(), e.weight);
  }
  return s;
}

DeviceChain parse_device_chain(const std::string& raw) {
  const std::string text = trim(raw);
  PS_CHECK(!text.empty(), ConfigError, "{}: {}", kNoModelOrChain, kChainHelp);
  DeviceChain chain;
  if (text == "auto") {
    chain.automatic = true;
    return chain;
  }
  for (const std::string& item_raw : split(text, ',')) {
    const std::string item = trim(item_raw);
    PS_CHECK(!item.empty(), ConfigError, "Invalid device: <empty> (an empty entry in --device-chain '{}'); {}", text,
             kChainHelp);
    ChainEntry entry;
    const size_t eq = item.find('=');
    entry.device = parse_device(item.substr(0, eq));
    if (eq != std::string::npos) entry.weight = parse_weight(trim(item.substr(eq + 1)), entry.device.str());
    chain.entries.push_back(entry);
  }
  double total = 0;
  for (const auto& e : chain.entries) total += e.weight;
  PS_CHECK(total > 0, ConfigError,
           "Total percentage is zero or negative (--device-chain {}): give at least one device a positive weight, "
           "e.g. cuda:0=60,cuda:1=40",
           text);
  return chain;
}

std::vector<int> partition_blocks(int num_blocks, const std::vector<double>& weights) {
  const int p = static_cast<int>(weights.size());
  PS_CHECK(p <= num_blocks, ConfigError,
           "the device chain has {} entries but the model has only {} blocks: every rank needs at least one block; "
           "run with at most {} ranks",
           p, num_blocks, num_blocks);
  const double total = std::accumulate(weights.begin(), weights.end(), 0.0);
  PS_CHECK(total > 0, ConfigError, "Total percentage is zero or negative: give at least one device a positive weight");

  // Largest remainder: floors first, then the leftover blocks to the largest fractional parts
  // (ties to the earlier entry, so the result is the same on every rank).
  std::vector<double> share(p);
  std::vector<int> count(p);
  int given = 0;
  for (int i = 0; i < p; ++i) {
    share[i] = num_blocks * weights[i] / total;
    count[i] = static_cast<int>(std::floor(share[i]));
    given += count[i];
  }
  std::vector<int> order(p);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int a, int b) { return share[a] - count[a] > share[b] - count[b]; });
  for (int k = 0; given < num_blocks; k = (k + 1) % p, ++given) count[order[k]] += 1;

  // Every rank at least one block: take from the rank that holds most above its share.
  for (int i = 0; i < p; ++i) {
    if (count[i] > 0) continue;
    int donor = -1;
    for (int j = 0; j < p; ++j) {
      if (count[j] < 2) continue;
      if (donor < 0 || count[j] - share[j] > count[donor] - share[donor]) donor = j;
    }
    count[donor] -= 1;  // exists: p <= num_blocks and some rank has no block
    count[i] = 1;
  }
  return count;
}

}  // namespace pipeswap::pipeline
