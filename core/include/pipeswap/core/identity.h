// Who this process is: the values every log line and error message is prefixed with.
#pragma once

#include <string>

namespace pipeswap {

struct RankIdentity {
  std::string host = "localhost";
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_size = 1;
  std::string device = "cpu";  // set once the plan has assigned one
};

// Process-wide identity used by logging and error messages. Set by the launcher after world
// discovery and again when the device is known.
void set_rank_identity(const RankIdentity& id);
const RankIdentity& rank_identity();

std::string local_hostname();

}  // namespace pipeswap
