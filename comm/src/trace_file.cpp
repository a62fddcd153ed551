#include "pipeswap/comm/trace_file.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "pipeswap/core/error.h"
#include "pipeswap/core/log.h"
#include "pipeswap/core/trace.h"

namespace pipeswap::comm {
namespace {

void check_writable(const std::string& path) {
  namespace fs = std::filesystem;
  const fs::path p(path);
  const fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
  PS_CHECK(fs::is_directory(dir), IoError, "cannot write trace {}: directory {} does not exist (create it first)", path,
           dir.string());
  PS_CHECK(::access(dir.c_str(), W_OK) == 0, IoError, "cannot write trace {}: directory {} is not writable", path,
           dir.string());
  PS_CHECK(!fs::is_directory(p), IoError, "cannot write trace {}: it is a directory; name a file", path);
}

void write_atomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary);
    out << text << '\n';
    out.flush();
    if (!out.good()) {
      std::remove(tmp.c_str());
      PS_THROW(IoError, "cannot write trace {} (is the disk full?)", path);
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    PS_THROW(IoError, "cannot rename {} to {}", tmp, path);
  }
}

}  // namespace

JobTrace::JobTrace(std::string path, c10::Device device, int rank) : path_(std::move(path)), rank_(rank) {
  if (path_.empty()) return;
  if (rank_ == 0) check_writable(path_);
  trace::start(device, rank);
}

JobTrace::~JobTrace() {
  if (!on()) return;
  trace::stop();  // without finish() (the job failed) the events are dropped with the process
}

void JobTrace::finish(Transport& t) {
  if (!on() || finished_) return;
  finished_ = true;
  trace::stop();
  t.barrier();  // every rank's work is done; collect() reads each rank's clock right after this
  std::vector<std::string> all = gather_strings(t, trace::collect());
  if (rank_ != 0) return;
  write_atomically(path_, trace::merge(all));
  log().info("trace of {} rank(s) written to {} (open in https://ui.perfetto.dev or chrome://tracing)", all.size(),
             path_);
}

}  // namespace pipeswap::comm
