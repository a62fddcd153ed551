#include "direct_read.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <memory>
#include <new>

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
  thread_local std::unique_ptr<void, FreeDeleter> buffers[kDirectStreams];
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

}  // namespace pipeswap::detail
