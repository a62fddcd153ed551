#include "pipeswap/pipeline/job_trace.h"

#include "pipeswap/core/files.h"
#include "pipeswap/core/log.h"
#include "pipeswap/core/trace.h"
#include "pipeswap/pipeline/collective.h"

namespace pipeswap::pipeline {

JobTrace::JobTrace(std::string path, c10::Device device, int rank) : path_(std::move(path)), rank_(rank) {
  if (path_.empty()) return;
  if (rank_ == 0) check_writable_path(path_, "trace ");
  trace::start(device, rank);
}

JobTrace::~JobTrace() {
  if (!on()) return;
  trace::stop();  // without finish() (the job failed) the events are dropped with the process
}

void JobTrace::finish(comm::Transport& t) {
  if (!on() || finished_) return;
  finished_ = true;
  trace::stop();
  t.barrier();  // every rank's work is done; collect() reads each rank's clock right after this
  std::vector<std::string> all = gather_strings(t, trace::collect());
  if (rank_ != 0) return;
  write_text_atomically(path_, "trace", trace::merge(all) + "\n");
  log().info("trace of {} rank(s) written to {} (open in https://ui.perfetto.dev or chrome://tracing)", all.size(),
             path_);
}

}  // namespace pipeswap::pipeline
