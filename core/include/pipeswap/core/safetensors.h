// Our own safetensors reader and writer (https://github.com/huggingface/safetensors format):
//   8 bytes little-endian header length N | N bytes JSON header | data.
// The header is validated before any tensor is trusted (safetensors_header.h: N bounded and within
// the file before allocating, every dtype known, every shape's byte size equal to its offset range,
// offsets in bounds and non-overlapping). Tensor bytes are read with pread, only when asked for.
//
// Two ways to read tensor bytes: read_into (one tensor, buffered pread straight into dst) and
// read_many (many tensors at once, merged into large aligned O_DIRECT requests, see below). Both
// are thread-safe and count into bytes_read().
//
// PIPESWAP_NO_DIRECT_IO=1 in the environment makes read_many use buffered pread only (for
// filesystems where O_DIRECT misbehaves, or to compare). It is read when a file first serves a
// read_many call, so setting it after that changes nothing for that file.
#pragma once

#include <torch/types.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "pipeswap/core/dtype.h"
#include "pipeswap/core/safetensors_header.h"
#include "pipeswap/core/unique_fd.h"

namespace pipeswap {

// One tensor for SafetensorsFile::read_many: info points into that file's tensors(), dst holds at
// least info->nbytes() bytes (any alignment).
struct ReadRequest {
  const TensorInfo* info;
  void* dst;
};

class SafetensorsFile {
 public:
  // Opens the file and validates its header; reads no tensor data. Throws CheckpointError whose
  // message names the file and what is wrong with it.
  static std::shared_ptr<const SafetensorsFile> open(const std::string& path);
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
  // Copies many tensors' bytes, each into its dst, in as few large disk requests as it can: requests
  // are sorted by offset, neighbours at most 1 MiB apart merge into one extent (the gap is read and
  // dropped: cheaper than another request), and each extent is read 4096-aligned with O_DIRECT in
  // requests of at most 16 MiB, in two streams: the calling thread reads and copies out requests 0,
  // 2, 4, ... and a helper thread (for that extent only) requests 1, 3, 5, ..., each through a
  // bounce buffer of 16 MiB (both the calling thread's, kept for its life; 16 MiB where no extent
  // needs more than one request), so one stream's read keeps the disk busy while the other copies.
  // O_DIRECT skips the page cache: weights streamed every sweep would only evict the host cache's
  // memory, and the disk reaches its bandwidth only with large requests. Where the
  // filesystem refuses O_DIRECT (the open fails, or a read fails with EINVAL) or
  // PIPESWAP_NO_DIRECT_IO=1, the file falls back for good to buffered pread per tensor, straight into
  // dst (logged once at debug level). Errors are those of read_into: a short read names the file and
  // the first tensor whose bytes are missing. Tensors delivered whole before an error are counted in
  // bytes_read(); padding and gap bytes never are. Thread-safe: disk worker threads call it
  // concurrently.
  void read_many(std::vector<ReadRequest> requests) const;
  // True once read_many has read some bytes of this file with O_DIRECT (false before, or when the
  // file fell back to buffered reads before its first direct read).
  bool direct_io_used() const { return direct_used_.load(std::memory_order_relaxed); }
  // Convenience: a new CPU tensor holding the named tensor.
  torch::Tensor read(const std::string& name) const;
  // Bytes of tensor data read through this object so far (tests check who read what).
  uint64_t bytes_read() const;

 private:
  SafetensorsFile() = default;
  // The O_DIRECT descriptor, opened on the first read_many; -1 when refused or disabled.
  int direct_fd() const;
  // Turns O_DIRECT off for this file after a read refused it; logs the first time only.
  void give_up_direct(const char* why) const;
  // Reads sorted[first, last) as one extent through O_DIRECT. Returns false, having read nothing
  // that counts, when a read refused O_DIRECT: the caller then reads the extent buffered.
  bool read_extent_direct(int dfd, const std::vector<ReadRequest>& sorted, size_t first, size_t last) const;

  std::string path_;
  UniqueFd fd_;
  uint64_t file_size_ = 0;
  uint64_t data_offset_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> by_name_;
  std::map<std::string, std::string> metadata_;
  mutable std::atomic<uint64_t> bytes_read_{0};
  mutable std::once_flag direct_once_;
  mutable UniqueFd direct_fd_;                  // set once, under direct_once_
  mutable std::atomic<bool> direct_ok_{false};  // O_DIRECT open and reads work so far
  mutable std::atomic<bool> direct_used_{false};
};

// Writes a safetensors file atomically: to "<path>.tmp.<pid>", fsync, then rename. Tensors are
// written contiguous, in the order given, with the header padded to 8 bytes. Throws IoError naming
// the path when it cannot write (unwritable directory, full disk).
void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace pipeswap
