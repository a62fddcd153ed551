// --trace FILE for a job: recording starts when the object is made (before the weights load, so
// start-up disk reads show) and finish() gathers every rank's events to rank 0, which writes one
// Chrome / Perfetto JSON file (pid = rank, tid = compute / copy / disk / comm), to a temporary name
// first and renamed when complete. See pipeswap/core/trace.h for what is recorded.
//
//   pipeline::JobTrace trace(o.trace, device, world.rank);  // nothing happens when o.trace is empty
//   ... run the job ...
//   trace.finish(transport);                            // collective: every rank calls it
#pragma once

#include <c10/core/Device.h>

#include <string>

#include "pipeswap/comm/transport.h"

namespace pipeswap::pipeline {

class JobTrace {
 public:
  // Rank 0 checks that `path` can be written (IoError naming it) before anything is recorded.
  JobTrace(std::string path, c10::Device device, int rank);
  ~JobTrace();  // stops recording; no file unless finish() ran
  JobTrace(const JobTrace&) = delete;
  JobTrace& operator=(const JobTrace&) = delete;

  bool on() const { return !path_.empty(); }
  // Every rank: a barrier (which also aligns the clocks of ranks on other hosts), then the gather;
  // rank 0 writes the file. A no-op when tracing is off.
  void finish(comm::Transport& t);

 private:
  std::string path_;
  int rank_;
  bool finished_ = false;
};

}  // namespace pipeswap::pipeline
