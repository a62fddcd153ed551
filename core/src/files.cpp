#include "pipeswap/core/files.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <system_error>

#include "pipeswap/core/error.h"
#include "pipeswap/core/unique_fd.h"

namespace pipeswap {
namespace {

// One write call moves at most this much: Linux caps a single call near 2 GiB anyway.
constexpr size_t kMaxWriteChunk = size_t{1} << 30;

}  // namespace

std::string errno_text(int err) { return std::generic_category().message(err); }

void check_writable_path(const std::string& path, const std::string& what) {
  namespace fs = std::filesystem;
  const fs::path p(path);
  const fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
  PS_CHECK(fs::is_directory(dir), IoError, "cannot write {}{}: directory {} does not exist (create it first)", what,
           path, dir.string());
  PS_CHECK(::access(dir.c_str(), W_OK) == 0, IoError, "cannot write {}{}: directory {} is not writable", what, path,
           dir.string());
  PS_CHECK(!fs::is_directory(p), IoError, "cannot write {}{}: it is a directory; name a file", what, path);
}

int write_full(int fd, const void* src, uint64_t n) {
  const auto* in = static_cast<const char*>(src);
  uint64_t done = 0;
  while (done < n) {
    const size_t want = static_cast<size_t>(std::min<uint64_t>(n - done, kMaxWriteChunk));
    const ssize_t put = ::write(fd, in + done, want);
    if (put < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    // write() returning 0 for a non-zero request means no progress is possible: treat as a full disk.
    if (put == 0) return ENOSPC;
    done += static_cast<uint64_t>(put);
  }
  return 0;
}

void write_file_atomically(const std::string& path, const std::string& what, const std::string& hint,
                           const std::function<int(int fd)>& write) {
  const std::string tmp = fmt::format("{}.tmp.{}", path, ::getpid());
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!fd) {
    const int err = errno;
    PS_THROW(IoError, "cannot write {} '{}': creating '{}' failed: {}: {}", what, path, tmp, errno_text(err), hint);
  }
  // From here on a failure must not leave the partial temp file behind.
  auto fail = [&](const std::string& step, int err) {
    fd.reset();
    ::unlink(tmp.c_str());
    PS_THROW(IoError, "cannot write {} '{}': {} failed: {}: {}", what, path, step, errno_text(err), hint);
  };
  int err = write(fd.get());
  if (err != 0) fail(fmt::format("writing '{}'", tmp), err);
  // errno is read right after the call: building the message allocates and may clobber it.
  if (::fsync(fd.get()) != 0) err = errno;
  if (err != 0) fail(fmt::format("fsync of '{}'", tmp), err);
  // close() can report a deferred write error (e.g. on network file systems), so check it.
  if (::close(fd.release()) != 0) err = errno;
  if (err != 0) fail(fmt::format("closing '{}'", tmp), err);
  if (::rename(tmp.c_str(), path.c_str()) != 0) err = errno;
  if (err != 0) fail(fmt::format("renaming '{}' to it", tmp), err);
}

void write_text_atomically(const std::string& path, const std::string& what, const std::string& text) {
  write_file_atomically(path, what, "check that the directory is writable and has free space",
                        [&](int fd) { return write_full(fd, text.data(), text.size()); });
}

}  // namespace pipeswap
