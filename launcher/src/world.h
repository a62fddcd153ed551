// World discovery: who launched us and where the other ranks are.
//   mpirun (Open MPI env)            -> MPI transport
//   srun --mpi=pmix (PMIx env)       -> MPI transport
//   torchrun-style RANK/WORLD_SIZE   -> TCP transport at MASTER_ADDR:MASTER_PORT
//   srun without MPI (SLURM_PROCID)  -> TCP transport (MASTER_ADDR from the job script, or this node
//                                       when the step has one node)
//   nothing                          -> one rank alone
#pragma once

#include <string>

namespace pipeswap::launcher {

struct World {
  enum class Launcher { kAlone, kMpi, kTorchrun, kSlurm };
  Launcher launcher = Launcher::kAlone;
  int rank = 0;
  int size = 1;
  int local_rank = 0;
  int local_size = 1;
  std::string master_addr;
  int master_port = 0;
  const char* launcher_name() const;
  bool uses_mpi() const { return launcher == Launcher::kMpi; }
};

// Reads the environment only (no MPI calls). Throws ConfigError for inconsistent values.
World discover_world();

}  // namespace pipeswap::launcher
