// Fuzz target: a command line -> parse_command_line (launcher/src/cli.cpp and its numeric bounds in
// flags.cpp). Whatever the arguments, the outcome is a pipeswap::Error (a message naming the flag)
// or Options whose every number is inside its documented range (docs/reliability.md): nothing that
// could wrap, allocate without bound or hang later in the run.
//
// The input is a list of records separated by NUL bytes. A record's first byte picks a flag of
// kFlags (or, past its end, makes the record a raw argument); the rest is the flag's value, as raw
// bytes. The first record's first byte picks the subcommand. libFuzzer builds it with clang
// (tests/fuzz/run-fuzz.sh); flags_fuzz_driver.cpp runs it on seeded random inputs in CI.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "cli.h"
#include "flags.h"
#include "flags_fuzz.h"
#include "pipeswap/core/bytes.h"
#include "pipeswap/core/error.h"

namespace {

const char* const kCommands[] = {"run", "plan", "denoise", "generate"};
constexpr unsigned kNumCommands = sizeof(kCommands) / sizeof(kCommands[0]);
// Every flag of the four commands (a flag a command lacks is an error, which is fine).
const char* const kFlags[] = {
    "--model", "--device-chain", "--workload-split", "--auto-vram-balance", "--dtype", "--micro-batches", "--input",
    "--comm-timeout", "--threads", "--log-level", "--transport", "--force", "--blocks-to-swap", "--offload-ratio",
    "--resident-policy", "--offload-granularity", "--prefetch-depth", "--use-non-blocking", "--lazy-load",
    "--num-disk-workers", "--max-memory", "--vram-budget", "--offload-txt-emb", "--offload-img-emb",
    "--offload-components", "--on-demand-components", "--config", "--output", "--trace", "--repeat", "--json",
    "--latents", "--context", "--context-null", "--image-cond", "--clip-fea", "--steps", "--guidance", "--shift",
    // Appended, so that the kept corpus keeps its meaning (a record names a flag by its index).
    "--swap-order",
    // generate's and fp8's flags (plan takes the video size for a Wan repo).
    "--weight-dtype", "--fp8-gemm", "--prompt", "--negative-prompt", "--prompts", "--prompt-ids",
    "--frames", "--height", "--width", "--seed", "--sampler", "--flow-shift", "--text-encoder", "--text-encoder-device",
    "--vae-device", "--vae-tiling", "--fps",
    // the text encoder's placement and CFG-parallel ranks
    "--text-encoder-blocks-to-swap", "--cfg-parallel",
    // generate's text flags
    "--max-new-tokens", "--max-seq-len", "--max-batch", "--prefill-chunk", "--top-k",
    // generate's final latents beside a decoded output; where fp8 weights are dequantised
    "--save-latents", "--fp8-dequantise"};
constexpr size_t kNumFlags = sizeof(kFlags) / sizeof(kFlags[0]);
static_assert(kNumFlags == kFuzzFlagCount, "flags_fuzz.h's count");

[[noreturn]] void broken(const char* what, double value) {
  std::fprintf(stderr, "flags_fuzz: parsed options break a bound: %s = %g\n", what, value);
  std::abort();
}

void check_in(const char* what, double v, double lo, double hi) {
  if (!(v >= lo && v <= hi)) broken(what, v);
}

// Above lo (excluded) and at most hi: the flags whose range is open at 0 (any positive value).
void check_above(const char* what, double v, double lo, double hi) {
  if (!(v > lo && v <= hi)) broken(what, v);
}

// Every number of a successful parse is inside its range.
void check_bounds(const pipeswap::launcher::Options& o) {
  namespace f = pipeswap::launcher::flags;
  check_in("micro_batches", o.micro_batches, 1, f::kMaxCount);
  check_in("repeat", o.repeat, 1, f::kMaxCount);
  check_in("steps", o.steps, 1, f::kMaxCount);
  check_in("threads", o.threads, 0, static_cast<double>(f::max_threads()));
  check_in("comm_timeout", o.comm_timeout, f::kMinTimeout, f::kMaxTimeout);
  check_in("prefetch_depth", o.prefetch_depth, 1, f::kMaxPrefetchDepth);
  check_in("num_disk_workers", o.num_disk_workers, 1, f::kMaxDiskWorkers);
  check_in("guidance", o.guidance, 0, f::kMaxGuidance);
  check_above("shift", o.shift, 0, f::kMaxShift);
  if (o.blocks_to_swap != -1) check_in("blocks_to_swap", o.blocks_to_swap, 0, f::kMaxCount);
  check_in("max_new_tokens", static_cast<double>(o.max_new_tokens), 1, f::kMaxCount);
  check_in("max_seq_len", static_cast<double>(o.max_seq_len), 0, f::kMaxCount);
  check_in("max_batch", static_cast<double>(o.max_batch), 0, f::kMaxCount);
  check_in("prefill_chunk", static_cast<double>(o.prefill_chunk), 0, f::kMaxCount);
  check_in("top_k", static_cast<double>(o.top_k), 0, f::kMaxCount);
  if (o.text_encoder_blocks_to_swap)
    check_in("text_encoder_blocks_to_swap", *o.text_encoder_blocks_to_swap, 0, f::kMaxCount);
  if (o.offload_ratio != -1) check_in("offload_ratio", o.offload_ratio, 0, 1);
  check_in("max_memory", static_cast<double>(o.max_memory), 0, static_cast<double>(pipeswap::kMaxBytes));
  if (o.vram_budget != f::kAutoBudget)
    check_in("vram_budget", static_cast<double>(o.vram_budget), 0, static_cast<double>(pipeswap::kMaxBytes));
  check_in("frames", static_cast<double>(o.frames), 1, static_cast<double>(f::kMaxFrames));
  check_in("height", static_cast<double>(o.height), 1, static_cast<double>(f::kMaxPixels));
  check_in("width", static_cast<double>(o.width), 1, static_cast<double>(f::kMaxPixels));
  if (o.seed < 0) broken("seed", static_cast<double>(o.seed));
  check_above("fps", o.fps, 0, f::kMaxFps);
  if (o.flow_shift != -1) check_above("flow_shift", o.flow_shift, 0, f::kMaxShift);
  if (o.device_chain) {
    double total = 0;
    for (const auto& e : o.device_chain->entries) {
      check_in("device chain weight", e.weight, 0, 1.7e308);
      total += e.weight;
    }
    if (!o.device_chain->automatic && !(std::isfinite(total) && total > 0)) broken("device chain total", total);
  }
}

}  // namespace

std::vector<std::string> flags_fuzz_args(const uint8_t* data, size_t size) {
  std::vector<std::string> args{"pipeswap"};
  size_t i = 0;
  bool first = true;
  while (i < size) {
    size_t end = i;
    while (end < size && data[end] != 0) ++end;
    const std::string record(reinterpret_cast<const char*>(data) + i, end - i);
    i = end + 1;
    if (first) {
      args.push_back(kCommands[record.empty() ? 0 : static_cast<unsigned char>(record[0]) % kNumCommands]);
      first = false;
      continue;
    }
    if (record.empty()) continue;
    const auto pick = static_cast<unsigned char>(record[0]);
    if (pick < kNumFlags) {
      args.push_back(kFlags[pick]);
      args.push_back(record.substr(1));
    } else if (pick < 2 * kNumFlags) {
      args.push_back(std::string(kFlags[pick - kNumFlags]) + "=" + record.substr(1));
    } else {
      args.push_back(record.substr(1));
    }
  }
  return args;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<std::string> args = flags_fuzz_args(data, size);
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  try {
    auto o = pipeswap::launcher::parse_command_line(static_cast<int>(args.size()), argv.data(), /*print_help=*/false);
    if (o) check_bounds(*o);
  } catch (const pipeswap::Error&) {
    // a message naming what is wrong: the expected outcome for most inputs
  }
  return 0;
}
