// The subcommands (run, plan, denoise) and the transport a rank starts with.
#pragma once

#include <memory>

#include "options.h"
#include "pipeswap/comm/transport.h"
#include "world.h"

namespace pipeswap::launcher {

std::unique_ptr<comm::Transport> make_transport(const World& world, const Options& opts);

// Returns the process exit code; throws on error.
// `transport` may be replaced (wrapped by NCCL once every rank's device is known to be a GPU).
int run_command(const Options& opts, const World& world, std::unique_ptr<comm::Transport>& transport);

}  // namespace pipeswap::launcher
