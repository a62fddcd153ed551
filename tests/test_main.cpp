// Shared gtest main: silences library logging unless PIPESWAP_TEST_LOG is set, and initialises MPI
// when the binary runs under a launcher, so one binary runs alone or under `mpirun -np N`.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdlib>

#include "pipeswap/core/log.h"

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  const char* lvl = std::getenv("PIPESWAP_TEST_LOG");
  pipeswap::set_log_level(lvl ? lvl : "off");
  const bool under_mpi = std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr || std::getenv("PMIX_RANK") != nullptr;
  if (under_mpi) MPI_Init(&argc, &argv);
  int rc = RUN_ALL_TESTS();
  if (under_mpi) {
    // A failure on one rank must fail the whole mpirun: agree on the worst result.
    int worst = rc;
    MPI_Allreduce(&rc, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    MPI_Finalize();
    rc = worst;
  }
  return rc;
}
