// Output files, for every folder that writes one (safetensors results, traces, plans): the path
// checked before a job starts, and the file written atomically when it ends.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace pipeswap {

// Throws IoError when `path` cannot be written: its directory is missing or not writable, or the path
// is a directory. `what` names the file in messages ("trace " gives "cannot write trace <path>: ...";
// "" gives "cannot write <path>: ..."). Checked before any work, so a bad path fails in a second,
// not after the whole run.
void check_writable_path(const std::string& path, const std::string& what = "");

// Writes `path` atomically: to "<path>.tmp.<pid>", fsync, then rename, so a reader never sees a
// partial file and an old file stays whole until the new one is. `write` fills the open descriptor
// and returns 0 or an errno. On any failure the temporary file is removed and IoError says
// "cannot write <what> '<path>': <step> failed: <errno text>: <hint>".
void write_file_atomically(const std::string& path, const std::string& what, const std::string& hint,
                           const std::function<int(int fd)>& write);
// The same for a text file.
void write_text_atomically(const std::string& path, const std::string& what, const std::string& text);

// Writes all n bytes to fd, retrying on EINTR and partial writes. Returns 0 or an errno (ENOSPC for
// a write that makes no progress).
int write_full(int fd, const void* src, uint64_t n);

// The text of an errno value ("No such file or directory").
std::string errno_text(int err);

}  // namespace pipeswap
