// The pipeswap executable: the one place that catches errors. Library code throws typed errors;
// here they are logged once, as one line with the rank prefix (the source location only at
// --log-level debug), and the whole job is aborted (MPI_Abort, or the TCP transport's abort frames)
// so that peers fail fast instead of waiting on a dead rank.
#include <c10/util/Exception.h>
#include <mpi.h>

#include <cstdlib>
#include <iostream>

#include "cli.h"
#include "commands.h"
#include "pipeswap/core/error.h"
#include "pipeswap/core/identity.h"
#include "pipeswap/core/log.h"
#include "spawn.h"
#include "world.h"

using namespace pipeswap;

namespace {

bool g_mpi_initialised = false;

// One line per error: the log pattern gives the prefix; where it was thrown only for --log-level debug.
[[noreturn]] void fail(const std::string& msg, const std::string& location, int code, comm::Transport* transport) {
  if (!location.empty() && log().should_log(spdlog::level::debug)) {
    log().error("{} ({})", msg, location);
  } else {
    log().error("{}", msg);
  }
  // Under MPI, MPI_Abort ends every rank (with this exit status); TCP peers are told, then the sockets close.
  if (g_mpi_initialised) MPI_Abort(MPI_COMM_WORLD, code);
  if (transport) transport->abort(msg);
  std::exit(code);
}

// A command line every rank got alike fails alike on every rank: only the first says so. A --config
// file may differ between nodes: then each rank speaks for itself.
bool fails_alike_everywhere(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (std::string(argv[i]).rfind("--config", 0) == 0) return false;
  return true;
}

// An error of the command line met alike by every MPI rank: rank 0 prints it, and the others wait for
// it at a barrier before all exit 2 (a rank that left first would have mpirun kill rank 0 mid-message).
[[noreturn]] void fail_alike_under_mpi(const ConfigError& e, const launcher::World& world, int argc, char** argv) {
  if (world.rank == 0) {
    if (!e.location().empty() && log().should_log(spdlog::level::debug)) {
      log().error("{} ({})", e.what(), e.location());
    } else {
      log().error("{}", e.what());
    }
  }
  int provided = 0;
  if (MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided) == MPI_SUCCESS) {
    MPI_Barrier(MPI_COMM_WORLD);
    MPI_Finalize();
  }
  std::exit(2);
}

// --log-level as written on the command line, before it is parsed: an error of the command line itself
// names its source line at debug, as every other error does. Anything unknown is the parser's to name.
void early_log_level(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    std::string level;
    if (a == "--log-level" && i + 1 < argc) level = argv[i + 1];
    if (a.rfind("--log-level=", 0) == 0) level = a.substr(12);
    if (level.empty()) continue;
    try {
      set_log_level(level);
    } catch (const Error&) {
      // named by the parser
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  // Splits must give bit-identical results while ranks use different thread counts: Intel MKL's
  // strict reproducibility mode makes its GEMMs independent of the thread count (set before MKL
  // starts; a user's own MKL_CBWR wins; OpenBLAS builds ignore it).
  setenv("MKL_CBWR", "AUTO,STRICT", /*overwrite=*/0);
  std::unique_ptr<comm::Transport> transport;
  try {
    launcher::World world = launcher::discover_world();
    std::optional<launcher::Options> opts;
    early_log_level(argc, argv);
    try {
      opts = launcher::parse_command_line(argc, argv, /*print_help=*/world.rank == 0);
    } catch (const ConfigError& e) {
      if (world.size > 1 && fails_alike_everywhere(argc, argv)) {
        if (world.uses_mpi()) fail_alike_under_mpi(e, world, argc, argv);
        if (world.rank != 0) return 2;  // other launchers: rank 0 says it
      }
      throw;
    }
    if (!opts) return 0;
    set_log_level(opts->log_level);
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
    fail(e.what(), e.location(), 2, transport.get());
  } catch (const PeerAbortedError& e) {
    // Single-node mode: the worker that aborted printed why on this terminal already.
    if (std::getenv(launcher::kSingleNodeWorkerEnv) != nullptr) {
      log().debug("{}", e.what());
      std::exit(1);
    }
    fail(e.what(), e.location(), 1, transport.get());
  } catch (const Error& e) {
    fail(e.what(), e.location(), 1, transport.get());
  } catch (const c10::Error& e) {
    // LibTorch's message without its C++ backtrace (the backtrace at --log-level debug).
    fail(e.what_without_backtrace(), log().should_log(spdlog::level::debug) ? e.what() : "", 1, transport.get());
  } catch (const std::exception& e) {
    fail(e.what(), "", 1, transport.get());
  }
}
