#include "pipeswap/core/error.h"
#include "pipeswap/core/trace.h"
#include "pipeswap/pipeline/forward_job.h"

namespace pipeswap::pipeline {

void run_blocks(const models::Architecture& arch, offload::BlockWeights& weights, int first, int end,
                models::Activation& act) {
  const std::vector<std::string> phases = arch.phase_names();
  const int nphases = static_cast<int>(phases.size());
  for (int b = first; b < end; ++b) {
    for (int p = 0; p < nphases; ++p) {
      const models::WeightView& w = weights.acquire(b, p);
      {
        trace::Args what;
        what.block = b;
        what.phase = p;
        trace::DeviceRange traced(trace::Kind::kCompute, phases[static_cast<size_t>(p)], what);
        arch.phase_forward(b, p, w, act);
      }
      weights.release(b, p);
    }
  }
}

std::vector<int64_t> micro_batch_sizes(int64_t batch, int m) {
  PS_CHECK(m >= 1, ConfigError, "--micro-batches must be at least 1 (got {})", m);
  PS_CHECK(m <= batch, ConfigError,
           "--micro-batches {} is more than the {} sequence(s) in the input: use at most {} micro-batches", m, batch,
           batch);
  std::vector<int64_t> sizes(m, batch / m);
  for (int64_t i = 0; i < batch % m; ++i) sizes[i] += 1;
  return sizes;
}

}  // namespace pipeswap::pipeline
