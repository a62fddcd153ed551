#include "world.h"

#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "pipeswap/core/error.h"

namespace pipeswap::launcher {
namespace {

const char* env(const char* name) {
  const char* v = std::getenv(name);
  return (v && *v) ? v : nullptr;
}

int env_int(const char* name, int fallback) {
  const char* v = env(name);
  if (!v) return fallback;
  char* end = nullptr;
  long x = std::strtol(v, &end, 10);
  PS_CHECK(end && *end == '\0' && x >= 0 && x < (1 << 24), ConfigError,
           "environment variable {}='{}' is not a non-negative integer", name, v);
  return static_cast<int>(x);
}

// Whether an MPI runtime started this process: Open MPI's mpirun (ORTE) or a PMIx server (Open MPI
// 5, srun --mpi=pmix) leaves its address in the environment. OMPI_COMM_WORLD_* without one (copied
// from another job's environment, or set by hand) would make MPI_Init fail or crash.
bool mpi_runtime_present() {
  if (env("OMPI_MCA_orte_hnp_uri") || env("PMIX_NAMESPACE")) return true;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    if (std::strncmp(*e, "PMIX_SERVER_URI", 15) == 0) return true;
  }
  return false;
}

}  // namespace

const char* World::launcher_name() const {
  switch (launcher) {
    case Launcher::kMpi: return "mpi";
    case Launcher::kTorchrun: return "torchrun-env";
    case Launcher::kSlurm: return "slurm";
    default: return "alone";
  }
}

World discover_world() {
  World w;
  if (env("OMPI_COMM_WORLD_SIZE")) {
    PS_CHECK(mpi_runtime_present(), ConfigError,
             "OMPI_COMM_WORLD_SIZE={} is set, but no MPI runtime started this process (mpirun leaves "
             "OMPI_MCA_orte_hnp_uri or PMIX_SERVER_URI* behind, and neither is here): start it with mpirun -np N, or "
             "unset the OMPI_COMM_WORLD_* variables to run without MPI",
             env("OMPI_COMM_WORLD_SIZE"));
    w.launcher = World::Launcher::kMpi;
    w.rank = env_int("OMPI_COMM_WORLD_RANK", 0);
    w.size = env_int("OMPI_COMM_WORLD_SIZE", 1);
    w.local_rank = env_int("OMPI_COMM_WORLD_LOCAL_RANK", 0);
    w.local_size = env_int("OMPI_COMM_WORLD_LOCAL_SIZE", 1);
  } else if (env("PMIX_RANK") && env("SLURM_PROCID")) {
    w.launcher = World::Launcher::kMpi;  // srun --mpi=pmix: MPI_Init finds its peers through PMIx
    w.rank = env_int("SLURM_PROCID", 0);
    w.size = env_int("SLURM_NTASKS", 1);
    w.local_rank = env_int("SLURM_LOCALID", 0);
    w.local_size = env_int("SLURM_NTASKS_PER_NODE", env_int("SLURM_TASKS_PER_NODE", 1));
  } else if (env("RANK") && env("WORLD_SIZE")) {
    w.launcher = World::Launcher::kTorchrun;
    w.rank = env_int("RANK", 0);
    w.size = env_int("WORLD_SIZE", 1);
    w.local_rank = env_int("LOCAL_RANK", w.rank);
    w.local_size = env_int("LOCAL_WORLD_SIZE", w.size);
    w.master_addr = env("MASTER_ADDR") ? env("MASTER_ADDR") : "127.0.0.1";
    w.master_port = env_int("MASTER_PORT", 29500);
  } else if (env("SLURM_PROCID") && env("SLURM_STEP_ID") && env("SLURM_NTASKS")) {
    // A task of an srun step without MPI support: rendezvous over TCP like torchrun.
    w.launcher = World::Launcher::kSlurm;
    w.rank = env_int("SLURM_PROCID", 0);
    w.size = env_int("SLURM_NTASKS", 1);
    w.local_rank = env_int("SLURM_LOCALID", 0);
    w.local_size = env_int("SLURM_STEP_NUM_TASKS", w.size) / std::max(1, env_int("SLURM_STEP_NUM_NODES", 1));
    if (env("MASTER_ADDR")) {
      w.master_addr = env("MASTER_ADDR");
    } else {
      PS_CHECK(env_int("SLURM_STEP_NUM_NODES", env_int("SLURM_NNODES", 1)) == 1, ConfigError,
               "srun started pipeswap on several nodes without MPI: export MASTER_ADDR=$(scontrol show hostnames "
               "\"$SLURM_JOB_NODELIST\" | head -n1) in the job script, or launch with srun --mpi=pmix");
      w.master_addr = "127.0.0.1";
    }
    // One port per job so that two jobs on one node do not meet each other.
    w.master_port = env_int("MASTER_PORT", 20000 + env_int("SLURM_JOB_ID", 0) % 20000);
  }
  PS_CHECK(w.size >= 1 && w.rank < w.size, ConfigError, "launcher gave rank {} of a world of {}", w.rank, w.size);
  if (w.local_size < 1) w.local_size = 1;
  return w;
}

}  // namespace pipeswap::launcher
