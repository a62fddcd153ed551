#include "direct_read.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <memory>
#include <new>
#include <system_error>

namespace pipeswap::detail {
namespace {

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

}  // namespace

bool direct_io_disabled_by_env() {
  const char* v = std::getenv("PIPESWAP_NO_DIRECT_IO");
  return v != nullptr && v[0] != '\0' && std::string(v) != "0";
}

int open_direct(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
  return fd >= 0 ? fd : -errno;
}

char* direct_bounce_buffer(int which) {
  thread_local std::unique_ptr<void, FreeDeleter> buffers[2];
  auto& buffer = buffers[which];
  if (!buffer) {
    void* p = nullptr;
    if (::posix_memalign(&p, kDirectAlignment, kDirectRequestBytes) != 0) throw std::bad_alloc();
    buffer.reset(p);
  }
  return static_cast<char*>(buffer.get());
}

int64_t pread_direct(int fd, void* dst, uint64_t n, uint64_t offset) {
  auto* out = static_cast<char*>(dst);
  uint64_t done = 0;
  while (done < n) {
    const ssize_t got = ::pread(fd, out + done, static_cast<size_t>(n - done), static_cast<off_t>(offset + done));
    if (got < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    done += static_cast<uint64_t>(got);
    // A direct read stops short only at end of file; an unaligned count also means the next offset
    // would be refused, so stop rather than retry.
    if (got == 0 || done % kDirectAlignment != 0) break;
  }
  return static_cast<int64_t>(done);
}

DirectReadAhead::DirectReadAhead(int fd, uint64_t begin, uint64_t stop)
    : fd_(fd),
      begin_(begin),
      stop_(stop),
      count_((stop - begin + kDirectRequestBytes - 1) / kDirectRequestBytes),
      buf_{direct_bounce_buffer(0), count_ > 1 ? direct_bounce_buffer(1) : nullptr} {
  if (count_ < 2) return;  // nothing to overlap
  try {
    thread_ = std::thread([this] { helper(); });
  } catch (const std::system_error&) {
    // Out of threads: read on the caller's thread, one request after the other, as before.
  }
}

DirectReadAhead::~DirectReadAhead() {
  if (!thread_.joinable()) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    cancel_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

uint64_t DirectReadAhead::request_len(uint64_t i) const {
  return std::min(kDirectRequestBytes, stop_ - request_pos(i));
}

void DirectReadAhead::helper() {
  for (uint64_t i = 0; i < count_; ++i) {
    {
      // Request i goes into the buffer of request i - 2: wait until the caller is done with it.
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return cancel_ || i < released_ + 2; });
      if (cancel_) return;
    }
    const uint64_t want = request_len(i);
    const int64_t got = pread_direct(fd_, buf_[i % 2], want, request_pos(i));
    {
      std::lock_guard<std::mutex> lock(mu_);
      got_[i % 2] = got;
      produced_ = i + 1;
    }
    cv_.notify_all();
    if (got != static_cast<int64_t>(want)) return;  // end of file or an error: the caller stops here
  }
}

bool DirectReadAhead::next(Chunk& out) {
  if (ended_ || taken_ == count_) return false;
  const uint64_t i = taken_;
  const uint64_t want = request_len(i);
  char* buf = buf_[0];
  int64_t got = 0;
  if (thread_.joinable()) {
    buf = buf_[i % 2];
    std::unique_lock<std::mutex> lock(mu_);
    released_ = i;  // asking for request i means the caller is done with every earlier one
    cv_.notify_all();
    // The helper stops early only after a short or failed request, which ends the caller's reading
    // before it asks again: the request asked for is always produced.
    cv_.wait(lock, [&] { return produced_ > i; });
    got = got_[i % 2];
  } else {
    got = pread_direct(fd_, buf, want, request_pos(i));
  }
  out = Chunk{buf, request_pos(i), want, got};
  ++taken_;
  if (got != static_cast<int64_t>(want)) ended_ = true;
  return true;
}

}  // namespace pipeswap::detail
