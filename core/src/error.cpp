#include "pipeswap/core/error.h"

#include <mpi.h>


namespace pipeswap::detail {

std::string source_location(const char* file, int line) {
  // Strip the directories: "offload/src/host_cache.cpp:42" is enough to find it.
  std::string f(file);
  for (const char* top : {"/core/", "/comm/", "/models/", "/offload/", "/pipeline/", "/launcher/", "/tests/"}) {
    auto pos = f.rfind(top);
    if (pos != std::string::npos) {
      f = f.substr(pos + 1);
      break;
    }
  }
  return fmt::format("{}:{}", f, line);
}

std::string mpi_error_string(int rc) {
  char buf[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, buf, &len) != MPI_SUCCESS) return fmt::format("MPI error {}", rc);
  return std::string(buf, static_cast<size_t>(len));
}

}  // namespace pipeswap::detail
