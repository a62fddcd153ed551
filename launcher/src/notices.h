// Settings that change nothing in this job say so: one warning each, from rank 0, once the plan is
// made (--max-memory without --lazy-load, --lazy-load with nothing swapped, a host cache that holds
// none of the swapped blocks, --auto-vram-balance on CPU ranks, swapping on CPU ranks without the disk
// tier), generate's flags of the other architecture, and a plan of GPUs on a host without any.
#pragma once

#include "options.h"
#include "pipeswap/pipeline/plan.h"

namespace pipeswap::launcher {

void warn_idle_settings(const Options& o, const pipeline::Plan& plan);

// `pipeswap generate`: the flags of the other architecture's --help group do nothing for this checkpoint (video
// flags on a text model, text flags on a Wan repo); one warning names them all. `architecture` in the user's words.
void warn_idle_generate_flags(const Options& o, bool text, const std::string& architecture);

// `pipeswap plan` shows the chain as written: says when it names GPUs this host does not have.
void warn_absent_gpus(const pipeline::Plan& plan);

// --auto-vram-balance weighs GPUs; a chain of CPUs keeps its own weights.
bool balances_anything(const std::vector<pipeline::ChainEntry>& chain);

}  // namespace pipeswap::launcher
