#include "pipeswap/core/identity.h"

#include <unistd.h>

#include <mutex>

namespace pipeswap {
namespace {
std::mutex g_mutex;
RankIdentity& storage() {
  static RankIdentity id{local_hostname()};
  return id;
}
}  // namespace

void set_rank_identity(const RankIdentity& id) {
  std::lock_guard<std::mutex> lock(g_mutex);
  storage() = id;
}

const RankIdentity& rank_identity() { return storage(); }

std::string local_hostname() {
  char buf[256] = {0};
  if (gethostname(buf, sizeof(buf) - 1) != 0) return "localhost";
  return buf;
}

}  // namespace pipeswap
