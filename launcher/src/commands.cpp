// The subcommands' dispatch and the transport a rank starts with (MPI, TCP, or alone); each command
// lives in a file of its own (run.cpp, plan.cpp, denoise.cpp).
#include "commands.h"

#include "job.h"
#include "pipeswap/core/log.h"

namespace pipeswap::launcher {

std::unique_ptr<comm::Transport> make_transport(const World& world, const Options& opts) {
  comm::TransportOptions to;
  to.timeout = std::chrono::milliseconds(static_cast<int64_t>(opts.comm_timeout * 1000));
  switch (world.launcher) {
    case World::Launcher::kMpi: return comm::make_mpi_transport(to);
    case World::Launcher::kTorchrun:
    case World::Launcher::kSlurm:
      return comm::make_tcp_transport(world.rank, world.size, world.master_addr, world.master_port, to);
    default: return comm::make_self_transport();
  }
}

int run_command(const Options& opts, const World& world, std::unique_ptr<comm::Transport>& transport) {
  log().debug("{} rank {} of {} via {}", opts.command, world.rank, world.size, world.launcher_name());
  if (opts.command == "plan") return cmd_plan(opts, world, *transport);
  if (opts.command == "denoise") return cmd_denoise(opts, world, transport);
  // `generate` picks text or video by the checkpoint's architecture (generate.cpp).
  if (opts.command == "generate") return cmd_generate(opts, world, transport);
  return cmd_run(opts, world, transport);
}

}  // namespace pipeswap::launcher
