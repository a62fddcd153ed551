// Files for every folder: inputs opened as regular files only, and output files (safetensors results,
// traces, plans) checked before a job starts and written atomically when it ends.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <string>

#include "pipeswap/core/unique_fd.h"

namespace pipeswap {

// What a file of this st_mode is, in words: "a regular file", "a directory", "a FIFO", "a socket",
// "a character device", "a block device".
std::string file_kind(mode_t mode);

// Opens `path` for reading, never blocking (a FIFO would wait in open() for a writer), and checks
// with fstat that it is a regular file. Throws IoError naming `what` ("--input file", "model config")
// and the path: missing, unreadable, or "is a directory, not a regular file" (FIFO, socket, device).
UniqueFd open_regular_file(const std::string& path, const std::string& what);
// The whole of such a file.
std::string read_regular_file(const std::string& path, const std::string& what);

// Throws IoError when `path` cannot be written: its directory is missing or not writable, or the
// path is a directory or another file that is not a regular one (a device, a FIFO, a socket: refused,
// not replaced). `what` names the file in messages ("trace " gives "cannot write trace <path>: ...";
// "" gives "cannot write <path>: ..."). Checked before any work, so a bad path fails in a second,
// not after the whole run.
void check_writable_path(const std::string& path, const std::string& what = "");

// Writes `path` atomically: to temporary_path(path), fsync, then rename, so a reader never sees a
// partial file and an old file stays whole until the new one is. A target that is there and is not a
// regular file is refused, not replaced. While the temporary file exists, SIGINT, SIGTERM and SIGHUP
// remove it before the process ends as the signal says. `write` fills the open descriptor and returns
// 0 or an errno. On any failure the temporary file is removed and IoError says
// "cannot write <what> '<path>': <step> failed: <errno text>: <hint>".
void write_file_atomically(const std::string& path, const std::string& what, const std::string& hint,
                           const std::function<int(int fd)>& write);
// The temporary name write_file_atomically writes first: "<path>.tmp.<pid>", or, where that name
// would pass 255 bytes, the file name cut with a hash of the whole name in its place.
std::string temporary_path(const std::string& path);
// The same for a text file.
void write_text_atomically(const std::string& path, const std::string& what, const std::string& text);

// Writes all n bytes to fd, retrying on EINTR and partial writes. Returns 0 or an errno (ENOSPC for
// a write that makes no progress).
int write_full(int fd, const void* src, uint64_t n);

// The text of an errno value ("No such file or directory").
std::string errno_text(int err);

}  // namespace pipeswap
