// The pipeswap executable: the one place that catches errors. Library code throws typed errors;
// here they are logged once with the rank prefix and the whole job is aborted (MPI_Abort, or the TCP
// transport's abort frames) so that peers fail fast instead of waiting on a dead rank.
#include <mpi.h>

#include <cstdlib>
#include <iostream>

#include "cli.h"
#include "commands.h"
#include "pipeswap/core/error.h"
#include "pipeswap/core/identity.h"
#include "pipeswap/core/log.h"
#include "pipeswap/core/printable.h"
#include "spawn.h"
#include "world.h"

using namespace pipeswap;

namespace {

bool g_mpi_initialised = false;

[[noreturn]] void fail(const std::string& raw, int code, comm::Transport* transport) {
  // Messages quote file contents (names, JSON): no control byte reaches the terminal raw.
  const std::string msg = printable_message(raw);
  log().error("{}", msg);
  if (transport) transport->abort(msg);  // MPI: MPI_Abort; TCP: tell every peer, then close
  if (g_mpi_initialised) MPI_Abort(MPI_COMM_WORLD, code);
  std::exit(code);
}

}  // namespace

int main(int argc, char** argv) {
  // Splits must give bit-identical results while ranks use different thread counts: Intel MKL's
  // strict reproducibility mode makes its GEMMs independent of the thread count (set before MKL
  // starts; a user's own MKL_CBWR wins; OpenBLAS builds ignore it).
  setenv("MKL_CBWR", "AUTO,STRICT", /*overwrite=*/0);
  std::unique_ptr<comm::Transport> transport;
  try {
    std::optional<launcher::Options> opts = launcher::parse_command_line(argc, argv);
    if (!opts) return 0;
    set_log_level(opts->log_level);
    launcher::World world = launcher::discover_world();
    if (world.launcher == launcher::World::Launcher::kAlone && opts->command != "plan" && opts->device_chain &&
        !opts->device_chain->automatic && opts->device_chain->entries.size() > 1) {
      // No launcher and several chain entries: single-node mode, one worker process per entry.
      return launcher::run_workers(argc, argv, static_cast<int>(opts->device_chain->entries.size()));
    }
    RankIdentity id;
    id.host = local_hostname();
    id.rank = world.rank;
    id.world_size = world.size;
    id.local_rank = world.local_rank;
    id.local_size = world.local_size;
    set_rank_identity(id);
    refresh_log_prefix();
    if (world.uses_mpi()) {
      int provided = 0;
      PS_CHECK_MPI(MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided));
      g_mpi_initialised = true;
    }
    transport = launcher::make_transport(world, *opts);
    const int rc = launcher::run_command(*opts, world, transport);
    transport.reset();  // joins sender threads, closes sockets
    if (g_mpi_initialised) MPI_Finalize();
    return rc;
  } catch (const ConfigError& e) {
    fail(e.what(), 2, transport.get());
  } catch (const std::exception& e) {
    // Error subclasses already carry the rank prefix and file:line; LibTorch's c10::Error does not.
    fail(e.what(), 1, transport.get());
  }
}
