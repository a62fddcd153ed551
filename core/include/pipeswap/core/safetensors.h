// Our own safetensors reader and writer (https://github.com/huggingface/safetensors format):
//   8 bytes little-endian header length N | N bytes JSON header | data.
// The header is validated before any tensor is trusted: N bounded (and within the file) before
// allocating, every dtype known, every shape's byte size equal to its offset range, offsets in
// bounds and non-overlapping. Tensor bytes are read with pread, only when asked for.
#pragma once

#include <torch/types.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "pipeswap/core/dtype.h"

namespace pipeswap {

// Largest JSON header we accept (the reference implementation uses the same bound).
constexpr uint64_t kMaxSafetensorsHeader = 100ull << 20;

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets relative to the start of the data section
  uint64_t end = 0;
  uint64_t nbytes() const { return end - begin; }
  int64_t numel() const;
};

class SafetensorsFile {
 public:
  // Opens the file and validates its header; reads no tensor data. Throws CheckpointError whose
  // message names the file and what is wrong with it.
  static std::shared_ptr<const SafetensorsFile> open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  uint64_t file_size() const { return file_size_; }
  uint64_t data_offset() const { return data_offset_; }  // 8 + header length
  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // sorted by offset
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const TensorInfo* find(const std::string& name) const;
  // Throws CheckpointError naming the file and the tensor when it is absent.
  const TensorInfo& at(const std::string& name) const;

  // Copies one tensor's bytes into dst (at least info.nbytes() bytes). Checks the file is still as
  // long as the header says; a short read (file truncated or gone) throws CheckpointError naming the
  // file and the tensor. Thread-safe (pread).
  void read_into(const TensorInfo& info, void* dst) const;
  // Convenience: a new CPU tensor holding the named tensor.
  torch::Tensor read(const std::string& name) const;
  // Bytes of tensor data read through this object so far (tests check who read what).
  uint64_t bytes_read() const;

 private:
  SafetensorsFile() = default;
  std::string path_;
  int fd_ = -1;
  uint64_t file_size_ = 0;
  uint64_t data_offset_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> by_name_;
  std::map<std::string, std::string> metadata_;
  mutable std::atomic<uint64_t> bytes_read_{0};
};

// Writes a safetensors file atomically: to "<path>.tmp.<pid>", fsync, then rename. Tensors are
// written contiguous, in the order given, with the header padded to 8 bytes. Throws IoError naming
// the path when it cannot write (unwritable directory, full disk).
void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace pipeswap
