#include "pipeswap/core/files.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <system_error>

#include "pipeswap/core/error.h"
#include "pipeswap/core/hash.h"

namespace pipeswap {
namespace {

// One write call moves at most this much: Linux caps a single call near 2 GiB anyway.
constexpr size_t kMaxWriteChunk = size_t{1} << 30;
// Longest file name (one path component) of the file systems we write to.
constexpr size_t kMaxFileName = 255;

// ----- temporary files removed on SIGINT, SIGTERM and SIGHUP
//
// The handler may only touch what is async-signal-safe: fixed slots of path bytes (written before
// `used` is set), unlink, sigaction and raise. Handlers are installed while at least one temporary
// file exists, and only for signals the process does not ignore (nohup keeps working).
constexpr int kCleanupSignals[] = {SIGINT, SIGTERM, SIGHUP};
constexpr int kTempSlots = 8;
struct TempSlot {
  std::atomic<bool> used{false};
  char path[PATH_MAX] = {};
};
TempSlot g_temps[kTempSlots];
struct sigaction g_previous[std::size(kCleanupSignals)];
bool g_installed[std::size(kCleanupSignals)] = {};
std::mutex g_temps_mutex;  // registration only, never in the handler
int g_registered = 0;

void remove_temps_on_signal(int sig) {
  for (auto& slot : g_temps) {
    if (slot.used.load(std::memory_order_acquire)) ::unlink(slot.path);
  }
  // The previous disposition (usually the default: end the process) takes the signal again once
  // this handler returns.
  for (size_t i = 0; i < std::size(kCleanupSignals); ++i) {
    if (kCleanupSignals[i] == sig && g_installed[i]) {
      ::sigaction(sig, &g_previous[i], nullptr);
      g_installed[i] = false;
    }
  }
  ::raise(sig);
}

// The temporary file of one atomic write, removed by the signal handler while registered.
class TempRegistration {
 public:
  explicit TempRegistration(const std::string& path) {
    if (path.size() >= PATH_MAX) return;  // open() fails on it anyway
    std::lock_guard<std::mutex> lock(g_temps_mutex);
    for (int i = 0; i < kTempSlots; ++i) {
      if (g_temps[i].used.load(std::memory_order_relaxed)) continue;
      std::memcpy(g_temps[i].path, path.c_str(), path.size() + 1);
      g_temps[i].used.store(true, std::memory_order_release);
      slot_ = i;
      break;
    }
    if (slot_ < 0 || g_registered++ > 0) return;
    for (size_t i = 0; i < std::size(kCleanupSignals); ++i) {
      struct sigaction now {};
      if (::sigaction(kCleanupSignals[i], nullptr, &now) != 0 || now.sa_handler == SIG_IGN) continue;
      struct sigaction sa {};
      sa.sa_handler = remove_temps_on_signal;
      sigemptyset(&sa.sa_mask);
      g_installed[i] = ::sigaction(kCleanupSignals[i], &sa, &g_previous[i]) == 0;
    }
  }
  ~TempRegistration() {
    if (slot_ < 0) return;
    std::lock_guard<std::mutex> lock(g_temps_mutex);
    g_temps[slot_].used.store(false, std::memory_order_release);
    if (--g_registered > 0) return;
    for (size_t i = 0; i < std::size(kCleanupSignals); ++i) {
      if (g_installed[i]) ::sigaction(kCleanupSignals[i], &g_previous[i], nullptr);
      g_installed[i] = false;
    }
  }
  TempRegistration(const TempRegistration&) = delete;
  TempRegistration& operator=(const TempRegistration&) = delete;

 private:
  int slot_ = -1;
};

// Refuses a target that exists and is not a regular file: rename() would replace a device node
// (as root, /dev/null), a FIFO or a socket with a regular file.
void check_target_kind(const std::string& path, const std::string& what) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return;  // not there (or a dangling link): created by rename
  PS_CHECK(!S_ISDIR(st.st_mode), IoError, "cannot write {}{}: it is a directory; name a file", what, path);
  PS_CHECK(S_ISREG(st.st_mode), IoError,
           "cannot write {}{}: it is {}, not a regular file; pipeswap replaces its output files, so name a regular "
           "file (or a new one)",
           what, path, file_kind(st.st_mode));
}

}  // namespace

std::string errno_text(int err) { return std::generic_category().message(err); }

std::string file_kind(mode_t mode) {
  if (S_ISREG(mode)) return "a regular file";
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISLNK(mode)) return "a symbolic link";
  return "a special file";
}

UniqueFd open_regular_file(const std::string& path, const std::string& what) {
  // stat first, so that a device is not even opened (opening some has side effects); then the
  // opened file is checked again, in case the path changed in between.
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    const int err = errno;
    PS_THROW(IoError, "cannot read {} '{}': {}", what, path, errno_text(err));
  }
  PS_CHECK(S_ISREG(st.st_mode), IoError, "{} '{}' is {}, not a regular file: name a file", what, path,
           file_kind(st.st_mode));
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC));
  if (!fd) {
    const int err = errno;
    PS_THROW(IoError, "cannot read {} '{}': {}", what, path, errno_text(err));
  }
  PS_CHECK(::fstat(fd.get(), &st) == 0 && S_ISREG(st.st_mode), IoError,
           "{} '{}' is {}, not a regular file: name a file", what, path, file_kind(st.st_mode));
  const int flags = ::fcntl(fd.get(), F_GETFL);
  if (flags >= 0) ::fcntl(fd.get(), F_SETFL, flags & ~O_NONBLOCK);
  return fd;
}

std::string read_regular_file(const std::string& path, const std::string& what) {
  UniqueFd fd = open_regular_file(path, what);
  std::string text;
  char buf[1 << 16];
  while (true) {
    const ssize_t got = ::read(fd.get(), buf, sizeof(buf));
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) {
      const int err = errno;
      PS_THROW(IoError, "cannot read {} '{}': {}", what, path, errno_text(err));
    }
    if (got == 0) break;
    text.append(buf, static_cast<size_t>(got));
  }
  return text;
}

void check_writable_path(const std::string& path, const std::string& what) {
  namespace fs = std::filesystem;
  const fs::path p(path);
  const fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
  PS_CHECK(fs::is_directory(dir), IoError, "cannot write {}{}: directory {} does not exist (create it first)", what,
           path, dir.string());
  PS_CHECK(::access(dir.c_str(), W_OK) == 0, IoError, "cannot write {}{}: directory {} is not writable", what, path,
           dir.string());
  check_target_kind(path, what);
  const std::string name = p.filename().string();
  PS_CHECK(name.size() <= kMaxFileName, IoError,
           "cannot write {}{}: its file name is {} bytes, longer than the {} a file system takes; name a shorter "
           "file",
           what, path, name.size(), kMaxFileName);
}

std::string temporary_path(const std::string& path) {
  const std::string suffix = fmt::format(".tmp.{}", ::getpid());
  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "" : path.substr(0, slash + 1);
  const std::string name = path.substr(dir.size());
  if (name.size() + suffix.size() <= kMaxFileName) return path + suffix;
  // Cut the name and put a hash of the whole name in place of the rest: still unique per target.
  const std::string tag = fmt::format("~{:016x}", stable_hash(name));
  return dir + name.substr(0, kMaxFileName - suffix.size() - tag.size()) + tag + suffix;
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
  check_target_kind(path, what + " ");
  const std::string tmp = temporary_path(path);
  const TempRegistration cleanup_on_signal(tmp);
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
