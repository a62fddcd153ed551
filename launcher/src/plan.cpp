// `pipeswap plan`: the plan printed (and written as JSON) before anything loads.
#include <iostream>

#include "job.h"
#include "pipeswap/core/files.h"

namespace pipeswap::launcher {

int cmd_plan(const Options& o, const World& world, comm::Transport& t) {
  if (world.rank == 0 && !o.json.empty()) check_writable_path(o.json, "plan JSON ");
  Job job = prepare_forward(o, world, t, JobUse::kPlan);
  if (world.rank == 0) {
    std::cout << job.plan.to_text() << std::flush;
    if (!o.json.empty()) write_text_atomically(o.json, "plan JSON", job.plan.to_json().dump(2) + "\n");
  }
  return 0;
}

}  // namespace pipeswap::launcher
