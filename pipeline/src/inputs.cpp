#include "pipeswap/pipeline/inputs.h"

#include <filesystem>
#include <nlohmann/json.hpp>

#include "pipeswap/core/error.h"
#include "pipeswap/core/files.h"
#include "pipeswap/core/json.h"
#include "pipeswap/core/printable.h"
#include "pipeswap/core/safetensors.h"

namespace pipeswap::pipeline {
namespace fs = std::filesystem;
namespace {

bool looks_like_safetensors(const std::string& path) {
  return path.size() > 12 && path.compare(path.size() - 12, 12, ".safetensors") == 0;
}

torch::Tensor from_json(const std::string& path) {
  nlohmann::json j;
  try {
    j = parse_json(read_regular_file(path, "input file (--input)"));
  } catch (const JsonError& e) {
    PS_THROW(ConfigError, "input file {} is not valid JSON ({}): give [[token ids...], ...] or {{\"input_ids\": ...}}",
             path, e.what());
  }
  if (j.is_object()) {
    PS_CHECK(j.contains("input_ids"), ConfigError, "input file {} has no \"input_ids\" key", path);
    j = j["input_ids"];
  }
  PS_CHECK(j.is_array() && !j.empty(), ConfigError,
           "input file {} holds no sequences: give [[token ids...], ...] with at least one token", path);
  if (!j.front().is_array()) j = nlohmann::json::array({j});  // one sequence
  const size_t batch = j.size();
  const size_t seq = j.front().size();
  PS_CHECK(seq > 0, ConfigError, "input file {}: sequence 0 is empty", path);
  torch::Tensor ids = torch::empty({static_cast<int64_t>(batch), static_cast<int64_t>(seq)}, torch::kInt64);
  int64_t* p = ids.data_ptr<int64_t>();
  for (size_t b = 0; b < batch; ++b) {
    PS_CHECK(j[b].is_array(), ConfigError, "input file {}: sequence {} is not a list of token ids", path, b);
    PS_CHECK(j[b].size() == seq, ConfigError,
             "input file {}: sequence {} has {} tokens but sequence 0 has {}: pad them to one length or run them "
             "separately",
             path, b, j[b].size(), seq);
    for (size_t t = 0; t < seq; ++t) {
      const auto& v = j[b][t];
      PS_CHECK(v.is_number_integer() && v.get<int64_t>() >= 0, ConfigError,
               "input file {}: sequence {} token {} is {}: token ids are non-negative integers", path, b, t,
               printable(v.dump()));
      p[b * seq + t] = v.get<int64_t>();
    }
  }
  return ids;
}

torch::Tensor from_safetensors(const std::string& path) {
  auto file = SafetensorsFile::open(path);
  const TensorInfo* info = file->find("input_ids");
  PS_CHECK(info != nullptr, ConfigError, "input file {} has no tensor named \"input_ids\"", path);
  PS_CHECK(info->dtype == DType::I64 || info->dtype == DType::I32, ConfigError,
           "input file {}: input_ids is {}, expected I64 or I32 token ids", path, dtype_name(info->dtype));
  PS_CHECK(info->shape.size() == 1 || info->shape.size() == 2, ConfigError,
           "input file {}: input_ids has {} dimensions, expected [T] or [B, T]", path, info->shape.size());
  torch::Tensor ids = file->read("input_ids").to(torch::kInt64);
  if (ids.dim() == 1) ids = ids.unsqueeze(0);
  PS_CHECK(ids.numel() > 0, ConfigError, "input file {}: input_ids is empty", path);
  PS_CHECK(ids.min().item<int64_t>() >= 0, ConfigError, "input file {}: input_ids holds negative token ids", path);
  return ids.contiguous();
}

}  // namespace

torch::Tensor read_token_input(const std::string& path) {
  PS_CHECK(fs::exists(path), IoError, "input file {} does not exist (--input)", path);
  open_regular_file(path, "input file (--input)");  // a directory, FIFO or device: named, never waited on
  return looks_like_safetensors(path) ? from_safetensors(path) : from_json(path);
}

torch::Tensor read_tensor_input(const std::string& path, const std::string& flag, const std::string& name,
                                int batched_dim) {
  PS_CHECK(fs::exists(path), IoError, "{} file {} does not exist", flag, path);
  open_regular_file(path, flag + " file");
  PS_CHECK(looks_like_safetensors(path), ConfigError, "{} file {} must be a .safetensors file", flag, path);
  auto file = SafetensorsFile::open(path);
  const TensorInfo* info = file->find(name);
  if (info == nullptr && file->tensors().size() == 1) info = &file->tensors().front();
  if (info == nullptr) {
    std::string names;
    for (const auto& t : file->tensors()) names += (names.empty() ? "" : ", ") + t.name;
    PS_THROW(ConfigError, "{} file {} has no tensor \"{}\" (it holds {}): name the tensor \"{}\" or keep one tensor "
             "in the file",
             flag, path, name, names.empty() ? "none" : names, name);
  }
  PS_CHECK(info->dtype == DType::F32 || info->dtype == DType::F16 || info->dtype == DType::BF16 ||
               info->dtype == DType::F64,
           ConfigError, "{} file {}: tensor \"{}\" is {}, expected a floating-point tensor", flag, path, info->name,
           dtype_name(info->dtype));
  const int dims = static_cast<int>(info->shape.size());
  PS_CHECK(dims == batched_dim || dims == batched_dim - 1, ConfigError,
           "{} file {}: tensor \"{}\" has {} dimensions, expected {} (batch first) or {} (one sample)", flag, path,
           info->name, dims, batched_dim, batched_dim - 1);
  torch::Tensor t = file->read(info->name).to(torch::kFloat32);
  if (dims == batched_dim - 1) t = t.unsqueeze(0);
  PS_CHECK(t.numel() > 0, ConfigError, "{} file {}: tensor \"{}\" is empty", flag, path, info->name);
  PS_CHECK(torch::isfinite(t).all().item<bool>(), ConfigError, "{} file {}: tensor \"{}\" holds NaN or infinity",
           flag, path, info->name);
  return t.contiguous();
}

void check_output_path(const std::string& path) {
  PS_CHECK(!path.empty(), ConfigError, "--output is empty: name the safetensors file to write");
  check_writable_path(path);
}

}  // namespace pipeswap::pipeline
