// A Hugging Face checkpoint directory: config.json plus model.safetensors, or shards listed in
// model.safetensors.index.json. Shard headers are opened lazily, so a rank that owns a few blocks
// opens only the files that hold them, and reads only their tensors.
#pragma once

#include <nlohmann/json.hpp>

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "pipeswap/core/safetensors.h"

namespace pipeswap {

struct TensorLocation {
  std::shared_ptr<const SafetensorsFile> file;
  const TensorInfo* info = nullptr;
};

class Checkpoint {
 public:
  // Reads config.json and the index (if any). Throws CheckpointError naming the missing or
  // malformed file and how to fix it.
  static std::shared_ptr<Checkpoint> open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  const nlohmann::json& config() const { return config_; }
  bool has(const std::string& tensor) const;
  // Whether the checkpoint carries fp8 weight scales (fp8.h): a "scaled_fp8" marker or any
  // "*.scale_weight" / "*.weight_scale" key. A names lookup, no file is opened.
  bool has_fp8_scales() const;
  // Opens the shard holding the tensor if needed. Throws CheckpointError naming the tensor (and the
  // shard the index points to) when it is absent.
  TensorLocation locate(const std::string& tensor) const;
  // Every tensor name the checkpoint holds (from the index, or from the single file's header).
  std::vector<std::string> tensor_names() const;
  // Shard files opened so far (tests check that a rank opens only what it owns).
  std::vector<std::string> opened_files() const;
  // Tensor bytes read so far through this checkpoint, over all shards.
  uint64_t bytes_read() const;

 private:
  Checkpoint() = default;
  std::shared_ptr<const SafetensorsFile> shard(const std::string& file) const;
  std::string dir_;
  nlohmann::json config_;
  std::map<std::string, std::string> weight_map_;  // tensor -> shard file name
  mutable std::mutex mutex_;
  mutable std::map<std::string, std::shared_ptr<const SafetensorsFile>> shards_;
};

}  // namespace pipeswap
