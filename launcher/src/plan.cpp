// `pipeswap plan`: the plan printed (and written as JSON) before anything loads.
#include <iostream>

#include "components.h"
#include "demo_model.h"
#include "job.h"
#include "notices.h"
#include "outputs.h"
#include "pipeswap/core/files.h"

namespace pipeswap::launcher {

int cmd_plan(const Options& o, const World& world, comm::Transport& t) {
  if (world.rank == 0) check_job_files(o, o.model.empty() ? demo_model_dir() : o.model);
  if (!o.model.empty() && models::classify_model_folder(o.model) == models::ModelFolder::kWanDiffusersRepo)
    return cmd_plan_repo(o, world, t);
  Job job = prepare_forward(o, world, t, JobUse::kPlan);
  if (world.rank == 0) {
    warn_absent_gpus(job.plan);
    std::cout << job.plan.to_text() << std::flush;
    if (!o.json.empty()) write_text_atomically(o.json, "plan JSON", job.plan.to_json().dump(2) + "\n");
  }
  return 0;
}

}  // namespace pipeswap::launcher
