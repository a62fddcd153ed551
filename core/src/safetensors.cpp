#include "pipeswap/core/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <functional>
#include <set>
#include <system_error>
#include <thread>

#include "direct_read.h"
#include "pipeswap/core/error.h"
#include "pipeswap/core/files.h"
#include "pipeswap/core/log.h"

namespace pipeswap {
namespace {

// One pread call moves at most this much: Linux caps a single call near 2 GiB anyway, and smaller
// calls keep partial-transfer handling exercised the same way for every size.
constexpr size_t kMaxIoChunk = size_t{1} << 30;

constexpr const char* kCheckpointFix = "re-download or re-save the checkpoint";

// Reads up to n bytes at offset, retrying on EINTR and partial reads. Returns the bytes read (less
// than n only at end of file), or -errno.
int64_t pread_full(int fd, void* dst, uint64_t n, uint64_t offset) {
  auto* out = static_cast<char*>(dst);
  uint64_t done = 0;
  while (done < n) {
    const size_t want = static_cast<size_t>(std::min<uint64_t>(n - done, kMaxIoChunk));
    const ssize_t got = ::pread(fd, out + done, want, static_cast<off_t>(offset + done));
    if (got < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (got == 0) break;
    done += static_cast<uint64_t>(got);
  }
  return static_cast<int64_t>(done);
}

// The format fixes the length prefix as little-endian, whatever the host is.
void encode_le64(uint64_t v, unsigned char* b) {
  for (int i = 0; i < 8; ++i) b[i] = static_cast<unsigned char>(v >> (8 * i));
}

[[noreturn]] void throw_read_failed(const std::string& path, const TensorInfo& info, int err) {
  PS_THROW(CheckpointError,
           "reading tensor '{}' from safetensors file '{}' failed: {}: was the file removed or "
           "is the disk failing? {}",
           info.name, path, errno_text(err), kCheckpointFix);
}

// A short read means the file shrank since open: say how long it is now.
[[noreturn]] void throw_truncated(const std::string& path, int fd, const TensorInfo& info, uint64_t data_offset,
                                  uint64_t size_at_open) {
  struct stat st {};
  const std::string now = ::fstat(fd, &st) == 0 ? fmt::format("{} bytes", st.st_size) : std::string("unknown size");
  PS_THROW(CheckpointError,
           "safetensors file '{}' was truncated after it was opened: tensor '{}' needs file bytes [{}, {}), but the "
           "file is now {} (was {}): do not modify checkpoints while a job runs; {}",
           path, info.name, data_offset + info.begin, data_offset + info.end, now, size_at_open, kCheckpointFix);
}

}  // namespace

std::shared_ptr<const SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  // The constructor is private, so make_shared cannot reach it; the pointer is owned at once. The fd
  // lives in the object from the start so that every failed check below closes it.
  std::shared_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  // Never blocks (a FIFO in a shard's place), and only a regular file passes.
  f->fd_ = open_regular_file(path, "safetensors file");
  struct stat st {};
  if (::fstat(f->fd_.get(), &st) != 0) {
    const int err = errno;
    PS_THROW(CheckpointError, "cannot stat safetensors file '{}': {}", path, errno_text(err));
  }
  f->file_size_ = static_cast<uint64_t>(st.st_size);

  PS_CHECK(f->file_size_ >= 8, CheckpointError,
           "safetensors file '{}' is {} bytes, shorter than the 8-byte header length: {}", path, f->file_size_,
           kCheckpointFix);
  unsigned char len_bytes[8];
  const int64_t got = pread_full(f->fd_.get(), len_bytes, 8, 0);
  PS_CHECK(got == 8, CheckpointError, "cannot read the header length of safetensors file '{}': {}", path,
           got < 0 ? errno_text(static_cast<int>(-got)) : std::string("short read"));
  // Bounded (and within the file) before anything is allocated: a corrupt prefix may claim terabytes.
  const uint64_t header_len = safetensors_header_length(path, len_bytes, f->file_size_);
  f->data_offset_ = 8 + header_len;

  std::string text(static_cast<size_t>(header_len), '\0');
  const int64_t hgot = pread_full(f->fd_.get(), text.data(), header_len, 8);
  PS_CHECK(hgot == static_cast<int64_t>(header_len), CheckpointError,
           "cannot read the {}-byte header of safetensors file '{}': {}", header_len, path,
           hgot < 0 ? errno_text(static_cast<int>(-hgot)) : std::string("short read"));
  SafetensorsHeader header = parse_safetensors_header(path, text, f->file_size_ - f->data_offset_);
  f->tensors_ = std::move(header.tensors);
  f->metadata_ = std::move(header.metadata);
  for (size_t i = 0; i < f->tensors_.size(); ++i) f->by_name_[f->tensors_[i].name] = i;

  log().debug("opened safetensors '{}': {} tensors, {} header bytes, {} bytes", path, f->tensors_.size(), header_len,
              f->file_size_);
  return f;
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

const TensorInfo& SafetensorsFile::at(const std::string& name) const {
  const TensorInfo* info = find(name);
  PS_CHECK(info != nullptr, CheckpointError, "tensor '{}' is not in safetensors file '{}' ({} tensors)", name, path_,
           tensors_.size());
  return *info;
}

void SafetensorsFile::read_into(const TensorInfo& info, void* dst) const {
  const uint64_t n = info.nbytes();
  if (n == 0) return;
  const int64_t got = pread_full(fd_.get(), dst, n, data_offset_ + info.begin);
  if (got == static_cast<int64_t>(n)) {
    bytes_read_.fetch_add(n, std::memory_order_relaxed);
    return;
  }
  if (got < 0) throw_read_failed(path_, info, static_cast<int>(-got));
  throw_truncated(path_, fd_.get(), info, data_offset_, file_size_);
}

int SafetensorsFile::direct_fd() const {
  std::call_once(direct_once_, [this] {
    if (detail::direct_io_disabled_by_env()) {
      log().debug("PIPESWAP_NO_DIRECT_IO is set: reading safetensors '{}' with buffered pread", path_);
      return;
    }
    const int rc = detail::open_direct(path_);
    if (rc < 0) {
      // tmpfs before Linux 6.6, some FUSE and network filesystems: nothing wrong, just no O_DIRECT.
      log().debug("O_DIRECT open of safetensors '{}' refused ({}): reading it with buffered pread", path_,
                  errno_text(-rc));
      return;
    }
    UniqueFd fd(rc);
    // The path is opened again, so it may now name another file (a checkpoint re-saved by rename):
    // only use the descriptor when it is the inode that open() validated.
    struct stat a {};
    struct stat b {};
    if (::fstat(fd_.get(), &a) != 0 || ::fstat(fd.get(), &b) != 0 || a.st_dev != b.st_dev || a.st_ino != b.st_ino) {
      log().debug("safetensors '{}' was replaced since it was opened: reading the opened file with buffered pread",
                  path_);
      return;
    }
    direct_fd_ = std::move(fd);
    direct_ok_.store(true, std::memory_order_relaxed);
  });
  return direct_ok_.load(std::memory_order_relaxed) ? direct_fd_.get() : -1;
}

void SafetensorsFile::give_up_direct(const char* why) const {
  if (direct_ok_.exchange(false, std::memory_order_relaxed)) {
    log().debug("O_DIRECT read of safetensors '{}' refused ({}): reading it with buffered pread from now on", path_,
                why);
  }
}

void SafetensorsFile::read_many(std::vector<ReadRequest> requests) const {
  // Empty tensors need no bytes; dropping them keeps every extent's range non-empty.
  requests.erase(std::remove_if(requests.begin(), requests.end(),
                                [](const ReadRequest& r) { return r.info != nullptr && r.info->nbytes() == 0; }),
                 requests.end());
  if (requests.empty()) return;
  // Offsets are trusted only because open() validated them: an entry from another file's header
  // would read the wrong bytes, so refuse it (a programming error, not a bad checkpoint).
  const std::less<const TensorInfo*> before;
  for (const ReadRequest& r : requests) {
    PS_CHECK(r.info != nullptr && !before(r.info, tensors_.data()) && before(r.info, tensors_.data() + tensors_.size()),
             Error, "read_many on safetensors file '{}' got tensor '{}', which is not from this file's header", path_,
             r.info == nullptr ? std::string("(null)") : r.info->name);
  }
  std::sort(requests.begin(), requests.end(), [](const ReadRequest& a, const ReadRequest& b) {
    return a.info->begin != b.info->begin ? a.info->begin < b.info->begin : a.info->end < b.info->end;
  });

  const int dfd = direct_fd();
  size_t first = 0;
  while (first < requests.size()) {
    size_t last = first + 1;
    uint64_t end = requests[first].info->end;
    while (last < requests.size() && requests[last].info->begin <= end + detail::kMergeGapBytes) {
      end = std::max(end, requests[last].info->end);
      ++last;
    }
    // Another thread may have given up on O_DIRECT since dfd was looked up; its descriptor stays
    // open until the object dies, so reading it once more is harmless.
    const bool direct = dfd >= 0 && direct_ok_.load(std::memory_order_relaxed);
    if (!direct || !read_extent_direct(dfd, requests, first, last)) {
      // Buffered: straight into each dst, one copy from the page cache and no bounce buffer.
      for (size_t k = first; k < last; ++k) read_into(*requests[k].info, requests[k].dst);
    }
    first = last;
  }
}

bool SafetensorsFile::read_extent_direct(int dfd, const std::vector<ReadRequest>& sorted, size_t first,
                                         size_t last) const {
  auto file_begin = [&](size_t k) { return data_offset_ + sorted[k].info->begin; };
  auto file_end = [&](size_t k) { return data_offset_ + sorted[k].info->end; };
  uint64_t extent_end = 0;
  for (size_t k = first; k < last; ++k) extent_end = std::max(extent_end, file_end(k));
  const uint64_t start = detail::align_down(file_begin(first));
  const uint64_t stop = detail::align_up(extent_end);
  constexpr uint64_t kRequest = detail::kDirectRequestBytes;
  const uint64_t count = (stop - start + kRequest - 1) / kRequest;  // requests of this extent

  // Copies file bytes [pos, avail), read into buf, into every tensor they overlap. Streams copy
  // disjoint byte ranges, so they never write the same destination byte.
  auto copy_out = [&](const char* buf, uint64_t pos, uint64_t avail) {
    for (size_t k = first; k < last && file_begin(k) < avail; ++k) {
      const uint64_t b = std::max(file_begin(k), pos);
      const uint64_t e = std::min(file_end(k), avail);
      if (b < e) std::memcpy(static_cast<char*>(sorted[k].dst) + (b - file_begin(k)), buf + (b - pos), e - b);
    }
  };
  // The first request of a stream that came back short (end of file) or failed, with its result;
  // `count` when all of the stream's requests were read whole.
  struct StreamEnd {
    uint64_t request;
    int64_t got;
  };
  // Lowest such request over the streams: nobody reads past it, those bytes would not count.
  std::atomic<uint64_t> first_bad{count};
  // Stream s reads and copies out requests s, s + streams, ... in order, until its first bad one.
  auto run_stream = [&](uint64_t s, uint64_t streams, char* buf) {
    for (uint64_t i = s; i < count && i < first_bad.load(std::memory_order_relaxed); i += streams) {
      const uint64_t pos = start + i * kRequest;
      const uint64_t want = std::min(kRequest, stop - pos);
      const int64_t got = detail::pread_direct(dfd, buf, want, pos);
      if (got >= 0) {
        direct_used_.store(true, std::memory_order_relaxed);
        copy_out(buf, pos, pos + static_cast<uint64_t>(got));
      }
      if (got != static_cast<int64_t>(want)) {
        uint64_t seen = first_bad.load(std::memory_order_relaxed);
        while (i < seen && !first_bad.compare_exchange_weak(seen, i, std::memory_order_relaxed)) {
        }
        return StreamEnd{i, got};
      }
    }
    return StreamEnd{count, 0};
  };

  // Stream 0 on this thread, the others on helper threads for this extent only (a thread start is
  // tens of microseconds against milliseconds per request). Every bounce buffer is this thread's.
  // Buffers first: nothing below throws once a helper runs.
  const uint64_t streams = std::min<uint64_t>(count, detail::kDirectStreams);
  std::vector<char*> bufs;
  for (uint64_t s = 0; s < streams; ++s) bufs.push_back(detail::direct_bounce_buffer(static_cast<int>(s)));
  constexpr uint64_t kNotRun = ~uint64_t{0};
  std::vector<StreamEnd> ends(streams, StreamEnd{kNotRun, 0});
  std::vector<std::thread> helpers;
  helpers.reserve(streams);
  for (uint64_t s = 1; s < streams; ++s) {
    try {
      helpers.emplace_back([&, s] { ends[s] = run_stream(s, streams, bufs[s]); });
    } catch (const std::system_error&) {
      break;  // out of threads: this thread reads the streams that did not start, after its own
    }
  }
  ends[0] = run_stream(0, streams, bufs[0]);
  for (auto& t : helpers) t.join();
  for (uint64_t s = 1 + helpers.size(); s < streams; ++s) ends[s] = run_stream(s, streams, bufs[s]);

  // Every request before the first bad one was read and copied whole; of the bad one, `got` bytes.
  StreamEnd bad{count, 0};
  for (const StreamEnd& e : ends)
    if (e.request < bad.request) bad = e;
  uint64_t avail = stop;
  if (bad.request < count) {
    if (bad.got == -EINVAL) {
      // The filesystem opened the file with O_DIRECT but refuses the read (alignment rules we do
      // not meet): nothing of this extent is counted yet, the caller re-reads it buffered.
      give_up_direct("EINVAL");
      return false;
    }
    avail = start + bad.request * kRequest + static_cast<uint64_t>(std::max<int64_t>(bad.got, 0));
  }
  // Tensors in one file do not overlap (open() checks), so sorted by begin they are sorted by end
  // too: those ending by `avail` are complete and counted; the first one after is the error's.
  size_t next = first;
  uint64_t delivered = 0;
  while (next < last && file_end(next) <= avail) delivered += sorted[next++].info->nbytes();
  bytes_read_.fetch_add(delivered, std::memory_order_relaxed);
  if (next < last) {
    if (bad.got < 0) throw_read_failed(path_, *sorted[next].info, static_cast<int>(-bad.got));
    // End of file before a tensor's last byte: the file shrank since open. (A short read that
    // only missed the alignment tail past the last tensor is the normal end of file.)
    throw_truncated(path_, fd_.get(), *sorted[next].info, data_offset_, file_size_);
  }
  return true;
}

torch::Tensor SafetensorsFile::read(const std::string& name) const {
  const TensorInfo& info = at(name);
  torch::Tensor t = torch::empty(info.shape, torch::TensorOptions().dtype(to_scalar_type(info.dtype)));
  read_into(info, t.data_ptr());
  return t;
}

uint64_t SafetensorsFile::bytes_read() const { return bytes_read_.load(std::memory_order_relaxed); }

void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  // Gather contiguous CPU copies first, so nothing touches the disk when an argument is bad.
  std::vector<torch::Tensor> data;
  data.reserve(tensors.size());
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::set<std::string> seen;
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    PS_CHECK(name != "__metadata__" && seen.insert(name).second, IoError,
             "cannot write safetensors file '{}': tensor name '{}' is reserved or given twice", path, name);
    PS_CHECK(tensor.defined(), IoError, "cannot write safetensors file '{}': tensor '{}' is undefined", path, name);
    torch::Tensor t = tensor.to(torch::kCPU).contiguous();
    const DType dtype = from_scalar_type(t.scalar_type());
    const uint64_t nbytes = static_cast<uint64_t>(t.numel()) * dtype_size(dtype);
    header[name] = {
        {"dtype", dtype_name(dtype)}, {"shape", t.sizes().vec()}, {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
    data.push_back(std::move(t));
  }

  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {
    PS_THROW(IoError, "cannot write safetensors file '{}': tensor names and metadata must be valid UTF-8 ({})", path,
             e.what());
  }
  // Padding keeps the data section 8-byte aligned (the length prefix is 8 bytes), as the format suggests.
  text.append((8 - text.size() % 8) % 8, ' ');
  unsigned char len_bytes[8];
  encode_le64(text.size(), len_bytes);

  write_file_atomically(
      path, "safetensors file", "check that the directory exists, is writable and has free space", [&](int fd) {
        int err = write_full(fd, len_bytes, sizeof(len_bytes));
        if (err == 0) err = write_full(fd, text.data(), text.size());
        for (size_t i = 0; err == 0 && i < data.size(); ++i) {
          err = write_full(fd, data[i].data_ptr(), static_cast<uint64_t>(data[i].numel()) * data[i].element_size());
        }
        return err;
      });
  log().debug("wrote safetensors '{}': {} tensors, {} data bytes", path, tensors.size(), offset);
}

}  // namespace pipeswap
